"""Exact patching: each edge's (or node's) effect measured by ablating it alone.

The reference the approximations are judged by: score = objective(full) - objective(all but that edge),
averaged over pairs (for KL: D(all but that edge) - D(full)). Edges are patched ``circuits_per_pass`` at a time
as a batch of circuits (masks ``[C, S, R]``, one patched forward per batch of data), never one forward per edge
per example. Long runs checkpoint and resume to the same result.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuits.discovery.checkpoint import Checkpoint
from circuits.discovery.progress import progress
from circuits.discovery.registry import register
from circuits.graph.structure import GraphStructure
from circuits.session import CircuitSession


def single_cut_effects(session: CircuitSession, cuts: EdgeCuts | NodeCuts, *, circuits_per_pass: int = 32,
                       checkpoint: Checkpoint | None = None, description: str = "exact") -> Tensor:
    """``[n_cuts]``: mean objective drop when each cut alone is applied (every cut one circuit of a batched pass)."""
    n = cuts.shape[0]
    state = checkpoint.load() if checkpoint is not None else None
    effects = state["effects"] if state else torch.zeros(n, dtype=torch.float64)
    start = state["next"] if state else 0
    full = session.metric_full if session.metric.higher_is_better else -session.metric_full  # [n] objective
    starts = range(start, n, circuits_per_pass)
    for i in progress(starts, description, session, total=len(starts), unit="pass"):
        chunk = cuts[i:i + circuits_per_pass]
        cut = session.objective_of(~chunk, circuits_per_pass=circuits_per_pass)  # [c, n]
        effects[i:i + chunk.shape[0]] = (full[None] - cut).sum(1) / session.n_examples
        if checkpoint is not None:
            checkpoint.maybe_save({"effects": effects, "next": i + chunk.shape[0]})
    return effects


class EdgeCuts:
    """``[n_edges, S, R]`` one-hot cuts, built lazily per slice so no n_edges x S x R tensor is ever held.

    ``edges [E, 2]`` (sender, receiver) defaults to every edge in MIB order."""

    def __init__(self, structure: GraphStructure, edges: Tensor | None = None):
        self.order = structure.edge_order if edges is None else torch.as_tensor(edges)  # [E, 2]
        self.shape = (self.order.shape[0], structure.n_senders, structure.n_receivers)

    def __getitem__(self, idx: slice) -> Tensor:
        pairs = self.order[idx]
        out = torch.zeros(pairs.shape[0], *self.shape[1:], dtype=torch.bool)
        out[torch.arange(pairs.shape[0]), pairs[:, 0], pairs[:, 1]] = True
        return out


class NodeCuts:
    """Cut every outgoing edge of one sender node."""

    def __init__(self, structure: GraphStructure):
        self.edge_mask = structure.edge_mask
        self.shape = (structure.n_senders, *self.edge_mask.shape)

    def __getitem__(self, idx: slice) -> Tensor:
        nodes = torch.arange(self.shape[0])[idx]
        out = torch.zeros(len(nodes), *self.shape[1:], dtype=torch.bool)
        out[torch.arange(len(nodes)), nodes] = self.edge_mask[nodes]
        return out


@register("exact", "edge", "each edge's exact effect, patched alone (batched)", checkpoints=True,
          ranges={"circuits_per_pass": {"low": 1}})
def exact(session: CircuitSession, circuits_per_pass: int = 32, checkpoint: Checkpoint | None = None) -> Tensor:
    """``[S, R]`` exact single-edge effects."""
    s = session.structure
    effects = single_cut_effects(session, EdgeCuts(s), circuits_per_pass=circuits_per_pass, checkpoint=checkpoint,
                                 description="exact (edges)")
    scores = torch.zeros(s.n_senders, s.n_receivers, dtype=torch.float32)
    scores[s.edge_order[:, 0], s.edge_order[:, 1]] = effects.float()
    return scores


@register("node-patching", "node", "each head's / MLP's exact effect, ablated alone", checkpoints=True,
          ranges={"circuits_per_pass": {"low": 1}})
def node_patching(session: CircuitSession, circuits_per_pass: int = 32,
                  checkpoint: Checkpoint | None = None) -> Tensor:
    """``[n_nodes]`` exact single-node effects (``logits`` gets NaN: it cannot be ablated)."""
    s = session.structure
    effects = single_cut_effects(session, NodeCuts(s), circuits_per_pass=circuits_per_pass, checkpoint=checkpoint,
                                 description="node patching")
    nodes = torch.full((s.n_nodes,), float("nan"))
    nodes[:-1] = effects.float()
    return nodes
