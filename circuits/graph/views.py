"""Read-only views of a :class:`~circuits.graph.graph.Graph` for people and other tools: networkx, pandas.

The graph itself lives in dense tensors; these views are built on demand and never written back.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    import networkx as nx
    import pandas as pd

    from circuits.graph.graph import Graph


def _edge_table(graph: Graph, circuit_only: bool) -> tuple[torch.Tensor, list[float], list[bool]]:
    """``(edges [n, 2] (sender, receiver), scores, in_graph)`` in MIB order, on CPU."""
    order = graph.structure.edge_order  # [E, 2]
    flags = graph.in_graph.detach().cpu()[order[:, 0], order[:, 1]]  # [E]
    if circuit_only:
        order = order[flags]
        flags = flags[flags]
    scores = graph.scores.detach().cpu()[order[:, 0], order[:, 1]]
    return order, scores.tolist(), flags.tolist()


def _position_frame(graph: Graph, circuit_only: bool) -> pd.DataFrame:
    """One row per edge-position (MIB order, then position): ``sender, receiver, position, name, score, in_graph``."""
    import numpy as np
    import pandas as pd

    st = graph.structure
    L = int(graph.scores.shape[2])
    order = st.edge_order  # [E, 2]
    flags = graph.in_graph.detach().cpu()[order[:, 0], order[:, 1]].reshape(-1)  # [E * L]
    scores = graph.scores.detach().cpu()[order[:, 0], order[:, 1]].reshape(-1)  # [E * L]
    edge = torch.arange(order.shape[0]).repeat_interleave(L)
    pos = torch.arange(L).repeat(order.shape[0])
    if circuit_only:
        edge, pos, scores, flags = edge[flags], pos[flags], scores[flags], flags[flags]
    rows = order[edge]
    senders = np.array([n.name for n in st.senders], dtype=object)[rows[:, 0].numpy()]
    receivers = np.array([r.name for r in st.receivers], dtype=object)[rows[:, 1].numpy()]
    positions = pos.numpy()
    names = (senders + "->" + receivers + "@" + positions.astype(str).astype(object) if len(senders)
             else np.array([], dtype=object))
    return pd.DataFrame({"sender": senders, "receiver": receivers, "position": positions.astype(np.int64),
                         "name": names, "score": scores.double().numpy(), "in_graph": flags.numpy().astype(bool)})


def to_frame(graph: Graph, circuit_only: bool = False) -> pd.DataFrame:
    """One row per edge in MIB order: ``sender, receiver, name, score, in_graph`` (position-aware graphs: one row
    per edge-position, with a ``position`` column)."""
    import numpy as np
    import pandas as pd

    if graph.n_positions is not None:
        return _position_frame(graph, circuit_only)
    st = graph.structure
    order, scores, flags = _edge_table(graph, circuit_only)
    senders = np.array([n.name for n in st.senders], dtype=object)[order[:, 0].numpy()]
    receivers = np.array([r.name for r in st.receivers], dtype=object)[order[:, 1].numpy()]
    names = senders + "->" + receivers if len(senders) else np.array([], dtype=object)
    return pd.DataFrame({"sender": senders, "receiver": receivers, "name": names,
                         "score": np.array(scores, dtype=np.float64), "in_graph": np.array(flags, dtype=bool)})


def to_networkx(graph: Graph, circuit_only: bool = True) -> nx.DiGraph:
    """The graph as a ``networkx.DiGraph`` (see :meth:`Graph.to_networkx`)."""
    import networkx as nx

    if graph.n_positions is not None:
        graph = graph.summed()
    st = graph.structure
    order, scores, flags = _edge_table(graph, circuit_only)
    node_in = graph.node_in_graph.detach().cpu()  # [n_nodes]
    node_scores = None if graph.node_scores is None else graph.node_scores.detach().cpu().tolist()

    # Which nodes to show: in the circuit, or an endpoint of a shown edge (so the view is never inconsistent).
    show = torch.ones(st.n_nodes, dtype=torch.bool) if not circuit_only else node_in.clone()
    show[order[:, 0]] = True
    recv_shown = torch.zeros(st.n_receivers, dtype=torch.bool)  # q/k/v inputs with a shown edge
    recv_shown[order[:, 1]] = True
    show |= st.nodes_fed(recv_shown)
    recv_in = graph.in_graph.detach().cpu().any(0)  # [R] receiver has a circuit edge

    g = nx.DiGraph(cfg=st.cfg(), metadata=copy.deepcopy(graph.metadata))
    for i, node in enumerate(st.nodes):
        if not show[i]:
            continue
        attrs = {"kind": node.kind, "layer": node.layer, "head": -1 if node.head is None else node.head,
                 "in_circuit": bool(node_in[i])}
        if node_scores is not None:
            attrs["score"] = node_scores[i]
        g.add_node(node.name, **attrs)
        if node.kind != "head" or node.head is None:  # every head node has its head index
            continue
        for q in "qkv":
            r = st.qkv_receiver(node.layer, node.head, q)
            if circuit_only and not recv_shown[r]:
                continue
            receiver = st.receivers[r]
            on = bool(recv_in[r] and node_in[i])
            if receiver.group is None:
                g.add_node(receiver.name, kind="qkv", layer=node.layer, head=node.head, qkv=q, in_circuit=on)
            else:  # a grouped k/v input: one node linked to every head of its group
                on = on or bool(g.nodes[receiver.name]["in_circuit"]) if receiver.name in g else on
                g.add_node(receiver.name, kind="qkv", layer=node.layer, head=-1, group=receiver.group, qkv=q,
                           in_circuit=on)
            g.add_edge(receiver.name, node.name, structural=True, in_circuit=bool(recv_in[r] and node_in[i]))

    snames = [n.name for n in st.senders]
    rnames = [r.name for r in st.receivers]
    g.add_edges_from(
        (snames[s], rnames[r], {"score": sc, "in_circuit": f, "structural": False})
        for (s, r), sc, f in zip(order.tolist(), scores, flags))
    return g
