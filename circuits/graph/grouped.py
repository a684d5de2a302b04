"""Grouped k/v receivers and MIB's per-head ones: a grouped graph written with MIB's names.

A graph with ``grouped_kv`` (:class:`~circuits.graph.structure.GraphStructure`) has one k and one v receiver per
key/value group, ``a{l}.g{g}<k>``; MIB's files name one per query head, ``a{l}.h{h}<k>``. :func:`expand_grouped`
writes each grouped k/v edge ``S -> a{l}.g{g}<k>`` as the edges ``S -> a{l}.h{h}<k>`` to every head ``h`` of group
``g``:

* scores are **divided by the group size** ``H/K``, so the per-head scores of a group sum back to the grouped
  score (an EAP score is linear in the receiver's input gradient, and the group's input gradient is the sum of its
  heads'), and a top-k over the expanded file ranks a group's edges where their share puts them;
* in-circuit flags are **copied** to every head of the group (the group's k/v input is every head's);
* q, MLP and logits edges, node flags and node scores are unchanged.

The expanded graph is a per-head graph of the same model (``grouped_kv=False``): MIB's loaders and checks read it
as any other. :func:`group_scores` is the inverse for scores (the sums over each group's heads).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

from circuits.graph.structure import QKV, GraphStructure

if TYPE_CHECKING:  # pragma: no cover
    from circuits.graph.graph import Graph


def per_head_columns(grouped: GraphStructure) -> tuple[torch.Tensor, torch.Tensor]:
    """``(column [R_mib] long, share [R_mib] float)``: for every receiver of the per-head structure, the grouped
    receiver it comes from and the fraction of that receiver's score it gets (1, or 1 / group size for k and v)."""
    mib = grouped.per_head()
    column = torch.empty(mib.n_receivers, dtype=torch.long)
    share = torch.ones(mib.n_receivers, dtype=torch.float64)
    for layer in range(grouped.n_layers):
        for h in range(grouped.n_heads):
            for q in QKV:
                column[mib.qkv_receiver(layer, h, q)] = grouped.qkv_receiver(layer, h, q)
                if q != "q" and grouped.grouped_kv:
                    share[mib.qkv_receiver(layer, h, q)] = 1.0 / grouped.group_size
        if grouped.has_mlp:
            column[mib.mlp_receiver(layer)] = grouped.mlp_receiver(layer)
    column[mib.logits_receiver] = grouped.logits_receiver
    return column, share


def expand_grouped(graph: Graph) -> Graph:
    """``graph`` with MIB's per-head k/v receivers (module docstring); a per-head graph is returned as it is."""
    from circuits.graph.graph import Graph

    st = graph.structure
    if not st.grouped_kv:
        return graph
    mib = st.per_head()
    column, share = per_head_columns(st)
    dev = graph.scores.device
    scores = graph.scores.index_select(1, column.to(dev)) * share.to(dev, graph.scores.dtype)  # [S, R_mib]
    in_graph = graph.in_graph.index_select(1, column.to(graph.in_graph.device))
    metadata = copy.deepcopy(graph.metadata)
    metadata["expanded_from_grouped_kv"] = {
        "group_size": st.group_size,
        "scores": "each grouped k/v edge's score divided by the group size over its heads' edges (sums over a "
                  "group's heads give the grouped score); in-circuit flags copied to every head of the group"}
    return Graph(mib, scores=scores, in_graph=in_graph & mib.on(in_graph.device).edge_mask,
                 node_in_graph=graph._node_in_graph,  # given explicitly, or derived from the same edges
                 node_scores=None if graph.node_scores is None else graph.node_scores.clone(), metadata=metadata)


def group_scores(per_head: torch.Tensor, grouped: GraphStructure) -> torch.Tensor:
    """``[S, R_grouped]``: per-head scores ``[S, R_mib]`` summed over each key/value group's heads (q, MLP and
    logits columns as they are): the inverse of :func:`expand_grouped` for scores."""
    column, _ = per_head_columns(grouped)
    out = torch.zeros(per_head.shape[0], grouped.n_receivers, dtype=per_head.dtype, device=per_head.device)
    return out.index_add_(1, column.to(per_head.device), per_head)
