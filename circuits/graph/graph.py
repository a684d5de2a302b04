"""``circuits.Graph``: a model's computational graph with edge scores and the circuit chosen from them.

Storage follows EAP-IG: two dense ``[n_senders, n_receivers]`` tensors (``scores``, ``in_graph``) indexed by
:class:`~circuits.graph.structure.GraphStructure`; edge names, pandas frames and networkx graphs are views.
Selection (``top_k``, ``top_fraction``, ``threshold``, ``greedy``) and ``prune`` return new graphs, so a
scored graph can be cut at many sizes (MIB's faithfulness curves) without being modified.

Position-aware graphs carry ``[n_senders, n_receivers, n_positions]`` tensors instead (``graph.n_positions``):
an edge-position is one edge at one token position. ``n_edges`` / ``edges`` count and name edge-positions
(``"S->R@p"``); ``top_k`` / ``top_fraction`` / ``threshold`` rank them; ``prune`` keeps an edge-position when its
edge survives pruning of the any-position view; ``summed()`` gives the position-free graph. Greedy, sign-consistent,
ratio, node- and neuron-level selection need the position-free graph (``graph.summed()``).

>>> import circuits, torch
>>> s = circuits.GraphStructure(n_layers=2, n_heads=2)
>>> g = circuits.Graph.full(s)
>>> g.n_edges, g.n_nodes
(46, 8)
>>> g.set_scores({"input->a0.h0<q>": 1.0, "a0.h0->logits": 2.0, "input->m1": -3.0})
>>> g.top_k(2).edges
('input->a0.h0<q>', 'a0.h0->logits')
>>> g.top_k(3, absolute=True).edges   # |-3| ranks input->m1 first, but m1 reaches no logits: pruned
('input->a0.h0<q>', 'a0.h0->logits')
>>> g.score("input->m1")
-3.0
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from circuits.graph import io, selection
from circuits.graph.io import GraphFormatError, GraphMismatchError, HasStructure
from circuits.graph.pruning import node_mask, prune as prune_mask
from circuits.graph.selection import SelectionError
from circuits.graph.structure import GraphStructure

if TYPE_CHECKING:  # pragma: no cover
    import networkx as nx
    import pandas as pd

__all__ = ["Graph", "GraphFormatError", "GraphMismatchError"]

Level = Literal["edge", "node", "neuron"]


class Graph:
    """Edge scores and a circuit over one model's computational graph (MIB / EAP-IG naming).

    Parameters
    ----------
    structure : GraphStructure
        The node and edge layout (``model.structure``).
    scores : Tensor, optional
        ``[n_senders, n_receivers]`` floating edge scores, positive = the edge helps the task (MIB's sign).
        Entries that are not edges are stored as 0 and never read; NaN on an edge means "not scored" (it ranks
        last and never passes a threshold). The dtype is kept (files load as float64, so they round-trip
        exactly). Default: zeros (float32). ``[n_senders, n_receivers, n_positions]`` makes a position-aware graph
        (one score per edge and token position; see the module docstring).
    in_graph : Tensor, optional
        ``[n_senders, n_receivers]`` bool, the edges of the circuit. Default: every edge (the full graph).
        ``[n_senders, n_receivers, n_positions]`` for a position-aware graph (the same L as ``scores``).
    node_scores : Tensor, optional
        ``[n_nodes]`` floating scores of nodes (MIB node order, ``logits`` last), for node-level methods.
    node_in_graph : Tensor, optional
        ``[n_nodes]`` bool. Default: derived from ``in_graph`` (a node is in when it has an incoming and an
        outgoing circuit edge, ``input`` needs only an outgoing one, ``logits`` is always in, as in MIB).
        Given explicitly (e.g. loaded from a file), it is stored as is.
    neuron_scores : Tensor, optional
        ``[n_layers, d_mlp]`` floating scores of MLP hidden neurons, for neuron-level methods
        (:mod:`circuits.discovery.neurons`).
    neuron_in_graph : Tensor, optional
        ``[n_layers, d_mlp]`` bool, the neurons of a neuron-level circuit (``top_k(k, level="neuron")``). Default
        with neuron scores: every neuron. Evaluate such a circuit with ``level="neuron"``.
    metadata : dict, optional
        Free-form, JSON-serializable provenance (method, params, task, ablation, n examples, wall time,
        package version, model name); saved with the graph.

    All tensors live on one device (the device of ``scores``, else of ``in_graph``, else CPU).
    """

    structure: GraphStructure
    scores: torch.Tensor  # [S, R] float
    in_graph: torch.Tensor  # [S, R] bool, False outside structure.edge_mask
    node_scores: torch.Tensor | None  # [n_nodes] float
    metadata: dict[str, Any]
    _node_in_graph: torch.Tensor | None  # [n_nodes] bool, only when given explicitly
    neuron_scores: torch.Tensor | None  # [L, m] float
    _neuron_in_graph: torch.Tensor | None  # [L, m] bool, only when given

    def __init__(self, structure: GraphStructure, scores: torch.Tensor | None = None,
                 in_graph: torch.Tensor | None = None, node_scores: torch.Tensor | None = None,
                 node_in_graph: torch.Tensor | None = None, metadata: Mapping[str, Any] | None = None, *,
                 neuron_scores: torch.Tensor | None = None, neuron_in_graph: torch.Tensor | None = None) -> None:
        if not isinstance(structure, GraphStructure):
            raise TypeError(f"structure must be a GraphStructure, got {type(structure).__name__}")
        self.structure = structure
        n_positions = self._positions_of(structure, scores, in_graph)
        shape: tuple[int, ...] = (structure.n_senders, structure.n_receivers)
        device = (scores.device if isinstance(scores, torch.Tensor) else in_graph.device
                  if isinstance(in_graph, torch.Tensor) else torch.device("cpu"))
        mask = structure.on(device).edge_mask
        if n_positions is not None:
            shape = (*shape, n_positions)
            mask = mask[..., None].expand(shape)
        if scores is None:
            scores = torch.zeros(shape, dtype=torch.float32, device=device)
        else:
            scores = self._check(scores, shape, "scores", floating=True).to(device)
            scores = scores.masked_fill(~mask, 0.0)  # also copies: the graph never aliases its inputs
        if in_graph is None:
            in_graph = mask.clone()
        else:
            in_graph = self._check(in_graph, shape, "in_graph", floating=False).to(device) & mask
        self.scores = scores
        self.in_graph = in_graph
        nodes = (structure.n_nodes,)
        self.node_scores = (None if node_scores is None
                            else self._check(node_scores, nodes, "node_scores", floating=True).to(device).clone())
        self._node_in_graph = (
            None if node_in_graph is None
            else self._check(node_in_graph, nodes, "node_in_graph", floating=False).to(device).clone())
        self.metadata = copy.deepcopy(dict(metadata or {}))
        self._set_neurons(neuron_scores, neuron_in_graph, device)

    def _set_neurons(self, scores: torch.Tensor | None, in_graph: torch.Tensor | None, device: torch.device) -> None:
        shape = None
        for t, name in ((scores, "neuron_scores"), (in_graph, "neuron_in_graph")):
            if t is None:
                continue
            if t.dim() != 2 or t.shape[0] != self.structure.n_layers or (shape is not None and tuple(t.shape) != shape):
                raise ValueError(f"{name} must have shape (n_layers={self.structure.n_layers}, d_mlp)"
                                 + (f" = {shape}" if shape else "") + f", got {tuple(t.shape)}")
            shape = tuple(t.shape)
        if shape is None:
            self.neuron_scores = self._neuron_in_graph = None
            return
        self.neuron_scores = None if scores is None else self._check(scores, shape, "neuron_scores",
                                                                     floating=True).to(device).clone()
        self._neuron_in_graph = None if in_graph is None else self._check(in_graph, shape, "neuron_in_graph",
                                                                          floating=False).to(device).clone()

    def _neurons(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor | None]:
        """The neuron fields as keyword arguments for a derived graph (on ``device``)."""
        return {"neuron_scores": None if self.neuron_scores is None else self.neuron_scores.to(device or self.device),
                "neuron_in_graph": None if self._neuron_in_graph is None
                else self._neuron_in_graph.to(device or self.device)}

    @property
    def neuron_in_graph(self) -> torch.Tensor | None:
        """``[L, m]`` bool: the neurons of a neuron-level circuit (every neuron when only scores are given); None
        for a graph without neurons."""
        if self._neuron_in_graph is not None:
            return self._neuron_in_graph
        if self.neuron_scores is not None:
            return torch.ones(self.neuron_scores.shape, dtype=torch.bool, device=self.device)
        return None

    @property
    def n_neurons(self) -> int | None:
        """Neurons in a neuron-level circuit (None without neurons)."""
        kept = self.neuron_in_graph
        return None if kept is None else int(kept.sum())

    @staticmethod
    def _positions_of(structure: GraphStructure, scores: Any, in_graph: Any) -> int | None:
        """The position axis's length L of ``[S, R, L]`` scores / in_graph, None for ``[S, R]`` ones; a clear
        ValueError for any other shape, or when the two disagree."""
        S, R = structure.n_senders, structure.n_receivers
        found: dict[str, int | None] = {}
        for t, name in ((scores, "scores"), (in_graph, "in_graph")):
            if t is None:
                continue
            shape = tuple(t.shape) if hasattr(t, "shape") else tuple(torch.as_tensor(t).shape)
            if len(shape) == 3 and shape[:2] == (S, R):
                if shape[2] < 1:
                    raise ValueError(f"{name} has a position axis of length 0 {shape}; a position-aware graph "
                                     "needs at least one position")
                found[name] = shape[2]
            elif shape == (S, R):
                found[name] = None
            else:
                raise ValueError(f"{name} must have shape ({S}, {R}) (n_senders, n_receivers of this structure) or "
                                 f"({S}, {R}, n_positions) for a position-aware graph, got {shape}")
        if len(set(found.values())) > 1:
            raise ValueError("scores and in_graph must have the same position axis: got "
                             + ", ".join(f"{k} {'[S, R]' if v is None else f'[S, R, {v}]'}" for k, v in found.items()))
        return next(iter(found.values()), None)

    @staticmethod
    def _check(t: Any, shape: tuple[int, ...], name: str, floating: bool) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t)
        if tuple(t.shape) != shape:
            axes = "n_senders, n_receivers, n_positions" if len(shape) == 3 else "n_senders, n_receivers / n_nodes"
            raise ValueError(f"{name} must have shape {shape} ({axes} of this structure), got {tuple(t.shape)}")
        if floating and not t.is_floating_point():
            t = t.float()
        if not floating and t.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor, got {t.dtype}")
        return t

    # ---- constructors ----------------------------------------------------------------------------------------
    @classmethod
    def full(cls, structure: GraphStructure, scores: torch.Tensor | None = None,
             metadata: Mapping[str, Any] | None = None) -> Graph:
        """Every edge in the circuit (the whole model); scores default to 0."""
        return cls(structure, scores=scores, metadata=metadata)

    @classmethod
    def empty(cls, structure: GraphStructure, scores: torch.Tensor | None = None,
              metadata: Mapping[str, Any] | None = None) -> Graph:
        """No edge in the circuit (everything ablated)."""
        device = scores.device if scores is not None else None
        extra = tuple(scores.shape[2:]) if scores is not None and scores.dim() == 3 else ()
        return cls(structure, scores=scores, metadata=metadata,
                   in_graph=torch.zeros(structure.n_senders, structure.n_receivers, *extra, dtype=torch.bool,
                                        device=device))

    @classmethod
    def from_edges(cls, structure: GraphStructure, edges: Iterable[str], scores: torch.Tensor | None = None,
                   metadata: Mapping[str, Any] | None = None) -> Graph:
        """A circuit given by edge names, e.g. a published circuit. Not pruned (call :meth:`prune`)."""
        in_graph = torch.zeros(structure.n_senders, structure.n_receivers, dtype=torch.bool)
        for name in edges:
            in_graph[structure.edge_index(name)] = True
        return cls(structure, scores=scores, in_graph=in_graph.to(scores.device) if scores is not None else in_graph,
                   metadata=metadata)

    def copy(self) -> Graph:
        return Graph(self.structure, self.scores, self.in_graph, self.node_scores, self._node_in_graph, self.metadata,
                     **self._neurons())

    def to(self, device: torch.device | str) -> Graph:
        """A copy on ``device``."""
        return Graph(self.structure, self.scores.to(device), self.in_graph.to(device),
                     None if self.node_scores is None else self.node_scores.to(device),
                     None if self._node_in_graph is None else self._node_in_graph.to(device), self.metadata,
                     **self._neurons(device))

    # ---- sizes and views -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.scores.device

    @property
    def n_positions(self) -> int | None:
        """L for a position-aware graph (``[S, R, L]`` scores / in_graph), None for a position-free one."""
        return int(self.scores.shape[2]) if self.scores.dim() == 3 else None

    @property
    def edge_in_graph(self) -> torch.Tensor:
        """``[S, R]`` bool: the edges in the circuit at any position (``in_graph`` itself when position-free)."""
        return self.in_graph.any(-1) if self.in_graph.dim() == 3 else self.in_graph

    def summed(self) -> Graph:
        """The position-free graph: scores summed over positions (NaN propagates), an edge in the circuit when it is
        at any position, node / neuron fields and metadata copied, plus ``metadata["summed_positions"] = L``.
        A position-free graph returns a copy of itself."""
        if self.n_positions is None:
            return self.copy()
        metadata = copy.deepcopy(self.metadata)
        metadata["summed_positions"] = self.n_positions
        return Graph(self.structure, self.scores.sum(-1), self.in_graph.any(-1), self.node_scores,
                     self._node_in_graph, metadata, **self._neurons())

    def _split_name(self, name: str) -> tuple[str, int | None]:
        """``"S->R@p"`` -> ``("S->R", p)``; ``"S->R"`` -> ``("S->R", None)``; checks p against n_positions."""
        if "@" not in name:
            return name, None
        edge, _, pos = name.rpartition("@")
        L = self.n_positions
        if L is None:
            raise KeyError(f"{name!r} names a position, but this graph is position-free; edges are 'S->R'")
        try:
            p = int(pos)
        except ValueError:
            raise KeyError(f"{name!r}: the position after '@' must be an integer in [0, {L})") from None
        if not 0 <= p < L:
            raise KeyError(f"{name!r}: position {p} out of range; this graph has {L} positions")
        return edge, p

    @property
    def n_edges(self) -> int:
        """Edges in the circuit (after pruning, for a pruned selection); for a position-aware graph, edge-positions."""
        return int(self.in_graph.sum())

    @property
    def node_in_graph(self) -> torch.Tensor:
        """``[n_nodes]`` bool: explicit if given, else derived from ``in_graph`` (see the class docstring; for a
        position-aware graph, from the edges in the circuit at any position)."""
        if self._node_in_graph is not None:
            return self._node_in_graph
        return node_mask(self.structure, self.edge_in_graph)

    @property
    def n_nodes(self) -> int:
        """Nodes in the circuit, ``logits`` included (the full GPT-2-small graph has 158)."""
        return int(self.node_in_graph.sum())

    @property
    def edges(self) -> tuple[str, ...]:
        """Names of the circuit's edges, in MIB order (position-aware: ``"S->R@p"``, MIB order then position)."""
        return tuple(self.to_frame(circuit_only=True)["name"])

    @property
    def nodes(self) -> tuple[str, ...]:
        """Names of the circuit's nodes, in MIB order."""
        flags = self.node_in_graph.cpu().tolist()
        return tuple(n.name for n, f in zip(self.structure.nodes, flags) if f)

    def __contains__(self, name: object) -> bool:
        """``"a0.h1->m0" in graph``: is this edge (or node) in the circuit?"""
        if not isinstance(name, str):
            return False
        if "->" in name:
            edge, p = self._split_name(name)
            flags = self.in_graph[self.structure.edge_index(edge)]
            return bool(flags.any() if p is None else flags[p])
        return bool(self.node_in_graph[self.structure.node_index(name)])

    def score(self, name: str) -> float:
        """Score of one edge by name (``"a0.h1->m0"``), or of a node when the graph has node scores.

        Position-aware graphs: ``"a0.h1->m0@3"`` is the score at position 3; a name without ``@p`` gives the sum
        over positions (as :meth:`summed`)."""
        if "->" in name:
            edge, p = self._split_name(name)
            value = self.scores[self.structure.edge_index(edge)]
            return float(value.sum() if value.dim() else value) if p is None else float(value[p])
        if self.node_scores is None:
            raise KeyError(f"{name!r} is a node name, and this graph has no node scores; edges are 'S->R'")
        return float(self.node_scores[self.structure.node_index(name)])

    def edge_scores(self, circuit_only: bool = False) -> dict[str, float]:
        """``{edge name: score}`` in MIB order (every edge, or only the circuit's)."""
        frame = self.to_frame(circuit_only=circuit_only)
        return dict(zip(frame["name"], frame["score"].tolist()))

    def to_frame(self, circuit_only: bool = False) -> pd.DataFrame:
        """A ``pandas.DataFrame``, one row per edge in MIB order: ``sender, receiver, name, score, in_graph``.

        Position-aware graphs: one row per edge-position (MIB order, then position), with a ``position`` column
        and names ``"S->R@p"``."""
        from circuits.graph.views import to_frame
        return to_frame(self, circuit_only)

    def to_networkx(self, circuit_only: bool = True) -> nx.DiGraph:
        """The graph as a ``networkx.DiGraph``.

        Nodes carry ``kind`` (input, head, qkv, mlp, logits), ``layer`` (-1 for input, n_layers for logits),
        ``head`` (-1 when not a head, so every networkx writer accepts it), ``in_circuit``, and ``score`` when
        the graph has node scores. Each head's q/k/v inputs are nodes of their own (``a3.h2<q>``, with ``qkv``)
        linked to the head by an edge with ``structural=True`` (structure, not counted as an edge). Real
        edges ``S -> R`` carry ``score``, ``in_circuit`` and ``structural=False``; ``graph.graph`` holds
        ``cfg`` and ``metadata``.

        ``circuit_only=True`` (default) keeps the circuit's edges and nodes, and only the q/k/v nodes that
        receive one of them: for a selected circuit that is what one draws or analyses. ``False`` gives all
        of them (32,491 edges for GPT-2 small; fine for networkx, slow for Llama-8B's 1.6M).

        A position-aware graph is shown through its :meth:`summed` view.
        """
        from circuits.graph.views import to_networkx
        return to_networkx(self, circuit_only)

    # ---- editing ---------------------------------------------------------------------------------------------
    def set_scores(self, scores: torch.Tensor | Mapping[str, float]) -> None:
        """Replace the edge scores in place.

        ``scores``: a dense ``[n_senders, n_receivers]`` tensor, a ``[n_edges]`` tensor in MIB edge order, or a
        ``{edge name: score}`` mapping (edges not named keep their score). Non-edges are stored as 0.
        Position-aware graphs take a dense ``[n_senders, n_receivers, n_positions]`` tensor or a mapping of
        ``"S->R@p"`` names (a name without ``@p`` sets every position).
        """
        st = self.structure
        if isinstance(scores, Mapping):
            new = self.scores.clone()
            for name, value in scores.items():
                edge, p = self._split_name(name)
                index = st.edge_index(edge)
                new[index if p is None else (*index, p)] = float(value)
            self.scores = new
            return
        if not isinstance(scores, torch.Tensor):
            raise TypeError(f"scores must be a tensor or a mapping of edge names, got {type(scores).__name__}")
        L = self.n_positions
        if L is not None:
            scores = self._check(scores, (st.n_senders, st.n_receivers, L), "scores", floating=True)
            self.scores = scores.to(self.device).masked_fill(~st.on(self.device).edge_mask[..., None], 0.0)
            return
        if scores.ndim == 1:
            if scores.shape[0] != st.n_edges:
                raise ValueError(f"a flat score vector must have one entry per edge ({st.n_edges:,}) in MIB "
                                 f"order, got {scores.shape[0]:,}")
            order = st.on(scores.device).edge_order
            dense = torch.zeros(st.n_senders, st.n_receivers, dtype=scores.dtype, device=scores.device)
            dense[order[:, 0], order[:, 1]] = scores
            scores = dense
        scores = self._check(scores, (st.n_senders, st.n_receivers), "scores", floating=True)
        self.scores = scores.to(self.device).masked_fill(~st.on(self.device).edge_mask, 0.0)

    # ---- selection -------------------------------------------------------------------------------------------
    def top_k(self, k: int, absolute: bool = False, *, prune: bool = True, level: Level = "edge") -> Graph:
        """The ``k`` highest-scoring edges (or nodes, ``level="node"``), pruned to input -> logits paths.

        ``k`` counts what is selected *before* pruning (MIB's convention); the result's :attr:`n_edges` is the
        size after pruning, so it can be smaller than ``k``. ``absolute=False`` ranks by the raw score (keep the
        edges that help: MIB's CPR), ``True`` by ``|score|`` (MIB's CMD). Ties go to the edge first in MIB
        order. Selection always ranks every edge of the structure, whatever ``in_graph`` currently holds (as
        MIB's ``apply_topn``), so ``g.top_k(100)`` means the same on a scored graph and on a cut of it.

        ``level="node"`` ranks ``node_scores`` instead (unscored nodes and ``logits`` are always kept) and keeps
        every edge between kept nodes.
        """
        return self._top_k(int(k), absolute, prune, level, {})

    def _no_positions(self, what: str) -> None:
        if self.n_positions is not None:
            raise SelectionError(f"{what} is not defined for position-aware graphs; use graph.summed()")

    def _top_k(self, k: int, absolute: bool, prune: bool, level: Level, extra: dict[str, Any]) -> Graph:
        neurons = None
        if level in ("node", "neuron"):
            self._no_positions(f"level={level!r} selection")
        if level == "neuron":
            nodes, neurons = selection.top_k_units(self.structure, self.node_scores, self._need_neuron_scores(), k,
                                                   absolute)
            mask = selection.edges_between(self.structure, nodes)
        elif level == "node":
            nodes = selection.top_k_nodes(self.structure, self._need_node_scores(), k, absolute)
            mask = selection.edges_between(self.structure, nodes)
        elif level == "edge":
            mask = (selection.top_k_edges(self.structure, self.scores, k, absolute) if self.n_positions is None
                    else selection.top_k_edge_positions(self.structure, self.scores, k, absolute))
        else:
            raise SelectionError(f"level must be 'edge', 'node' or 'neuron', got {level!r}")
        return self._selected(mask, prune, {"rule": "top_k", "k": k, **extra, "absolute": absolute,
                                            "level": level}, stacklevel=4, neurons=neurons)

    def top_fraction(self, fraction: float, absolute: bool = False, *, prune: bool = True,
                     level: Level = "edge") -> Graph:
        """:meth:`top_k` with ``k = int(fraction * n)``, n the number of edges (or scored nodes, or scored heads and
        neurons for ``level="neuron"``): MIB's rule. Position-aware graphs: n counts edge-positions
        (``structure.n_edges * n_positions``)."""
        if level in ("node", "neuron"):
            self._no_positions(f"level={level!r} selection")
        if level == "neuron":
            if not 0.0 <= fraction <= 1.0:
                raise SelectionError(f"fraction must lie in [0, 1], got {fraction}")
            units = selection.unit_scores(self.structure, self.node_scores, self._need_neuron_scores())
            k = int(fraction * int((~torch.isnan(units)).sum()))
        elif level == "node":
            scored = ~torch.isnan(self._need_node_scores()[:-1])
            if not 0.0 <= fraction <= 1.0:
                raise SelectionError(f"fraction must lie in [0, 1], got {fraction}")
            k = int(fraction * int(scored.sum()))
        else:
            k = selection.fraction_to_k(self.structure, fraction, self.n_positions)
        return self._top_k(k, absolute, prune, level, {"fraction": fraction})

    def threshold(self, threshold: float, absolute: bool = False, *, prune: bool = True,
                  level: Level = "edge") -> Graph:
        """Every edge (or node) whose score (``|score|`` if ``absolute``) is ``>= threshold``, then pruned
        (position-aware graphs: every edge-position)."""
        if math.isnan(threshold):
            raise SelectionError(f"threshold={threshold!r}: a NaN threshold selects nothing; give a number")
        if level == "node":
            self._no_positions("level='node' selection")
            nodes = selection.threshold_nodes(self.structure, self._need_node_scores(), threshold, absolute)
            mask = selection.edges_between(self.structure, nodes)
        elif level == "edge":
            mask = selection.threshold_edges(self.structure, self.scores, threshold, absolute)
        else:
            raise SelectionError(f"level must be 'edge' or 'node', got {level!r}")
        return self._selected(mask, prune, {"rule": "threshold", "threshold": float(threshold),
                                            "absolute": absolute, "level": level}, stacklevel=3)

    def greedy(self, k: int, absolute: bool = False, *, prune: bool = True) -> Graph:
        """EAP-IG's greedy circuit: grow from ``logits``, always adding the best edge into the circuit so far.

        Every edge chosen leads to ``logits`` (with ``prune=False`` the result is connected to the logits by
        construction); pruning then drops edges whose sender the input does not reach. ``k`` counts edges
        chosen before pruning.
        """
        self._no_positions("greedy selection")
        mask = selection.greedy_edges(self.structure, self.scores, int(k), absolute)
        return self._selected(mask, prune, {"rule": "greedy", "k": int(k), "absolute": absolute, "level": "edge"},
                              stacklevel=3)

    def sign_consistent(self, k: int, min_agreement: float = 0.9, *, absolute: bool = False,
                        prune: bool = True) -> Graph:
        """``k`` edges, those whose score kept its sign in at least ``min_agreement`` of bootstrap resamples of the
        examples first, ranked by score (``|score|`` if ``absolute``), then the unstable ones (Nikankin et al.
        2025). Needs the per-edge agreement that
        :func:`circuits.discovery.bootstrap.discover_with_sign_agreement` stores in ``metadata["sign_agreement"]``.
        """
        self._no_positions("sign_consistent selection")
        if not 0.0 <= min_agreement <= 1.0:
            raise ValueError(f"min_agreement must lie in [0, 1], got {min_agreement}")
        mask = selection.sign_consistent_edges(self.structure, self.scores, self.sign_agreement, int(k),
                                               float(min_agreement), absolute)
        return self._selected(mask, prune, {"rule": "sign_consistent", "k": int(k), "min_agreement": min_agreement,
                                            "absolute": absolute, "level": "edge"}, stacklevel=3)

    @property
    def sign_agreement(self) -> torch.Tensor:
        """``[n_edges]`` in MIB order: the fraction of bootstrap resamples in which each edge's score had the sign
        it has here (from ``metadata["sign_agreement"]``)."""
        record = self.metadata.get("sign_agreement")
        if not isinstance(record, Mapping) or "values" not in record:
            raise ValueError("this graph carries no sign agreement; score it with circuits.discovery.bootstrap."
                             "discover_with_sign_agreement(model, task, method, resamples=20)")
        values = torch.as_tensor(record["values"], dtype=torch.float32)
        if values.shape != (self.structure.n_edges,):
            raise ValueError(f"metadata['sign_agreement'] has {values.numel()} values for {self.structure.n_edges} "
                             "edges: it was made for another graph")
        return values

    def ratio(self, k: int, positive_fraction: float = 0.5, *, prune: bool = True) -> Graph:
        """``k`` edges: ``round(positive_fraction * k)`` with the largest positive scores, the rest with the most
        negative ones (Nikankin et al. 2025's positive/negative ratio; a side that runs out is filled by
        ``|score|``)."""
        self._no_positions("ratio selection")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must lie in [0, 1], got {positive_fraction}")
        mask = selection.ratio_edges(self.structure, self.scores, int(k), float(positive_fraction))
        return self._selected(mask, prune, {"rule": "ratio", "k": int(k), "positive_fraction": positive_fraction,
                                            "absolute": False, "level": "edge"}, stacklevel=3)

    def minimal(self, model, task, target: float = 0.9, *, absolute: bool = False, level: Level = "edge",
                **options) -> Graph:
        """The smallest top-k circuit whose faithfulness on ``task`` reaches ``target`` (bisection over k; runs
        patched forwards of ``model``). ``options``: ablation, split, batch_size, selection ("top_k" or
        "greedy"), see :func:`circuits.graph.minimal.minimal_circuit`. ``level="node"`` / ``"neuron"``: k counts
        scored nodes / heads and MLP neurons (:func:`circuits.graph.minimal_units.minimal_unit_circuit`).

        >>> circuit = scored.minimal(model, task, 0.9)          # doctest: +SKIP
        >>> circuit.metadata["minimal"]["k"], circuit.n_edges   # doctest: +SKIP
        """
        if level != "edge":
            from circuits.graph.minimal_units import minimal_unit_circuit

            return minimal_unit_circuit(model, task, self, target, level=level, absolute=absolute, **options)
        from circuits.graph.minimal import minimal_circuit

        return minimal_circuit(model, task, self, target, absolute=absolute, **options)

    def prune(self) -> Graph:
        """A copy without the edges that lie on no path input -> ... -> logits (see :mod:`~circuits.graph.pruning`).

        Node membership is re-derived from the surviving edges.

        Position-aware graphs: an edge-position is kept iff its edge survives pruning of the any-position view
        (``in_graph.any(-1)``). This is conservative: a path may be assembled from edges at different positions,
        so some kept edge-positions need not lie on one position-consistent path (no edge-position on a real
        input -> logits path is ever dropped).
        """
        edges = self._pruned(self.in_graph)
        return Graph(self.structure, self.scores, edges, self.node_scores, None, self.metadata, **self._neurons())

    def _pruned(self, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` ([S, R] or [S, R, L]) pruned to input -> logits paths (see :meth:`prune`)."""
        if mask.dim() == 3:
            edges, _ = prune_mask(self.structure, mask.any(-1))
            return mask & edges[..., None]
        edges, _ = prune_mask(self.structure, mask)
        return edges

    def _need_neuron_scores(self) -> torch.Tensor:
        if self.neuron_scores is None:
            raise SelectionError("level='neuron' needs neuron scores; this graph has none (score it with a "
                                 "neuron-level method: eap-neurons, eap-ig-neurons, neuron-patching)")
        return self.neuron_scores

    def _need_node_scores(self) -> torch.Tensor:
        if self.node_scores is None:
            raise SelectionError("level='node' needs node scores; this graph has only edge scores "
                             "(use level='edge', or a node-level discovery method)")
        return self.node_scores

    def _selected(self, mask: torch.Tensor, prune: bool, record: dict[str, Any], stacklevel: int,
                  neurons: torch.Tensor | None = None) -> Graph:
        n_selected = int(mask.sum())
        if prune:
            mask = self._pruned(mask)
        metadata = copy.deepcopy(self.metadata)
        metadata["selection"] = {**record, "pruned": prune, "n_selected": n_selected}
        out = Graph(self.structure, self.scores, mask, self.node_scores, None, metadata,
                    **{**self._neurons(), **({} if neurons is None else {"neuron_in_graph": neurons})})
        if prune and n_selected and not out.n_edges:
            warnings.warn(f"{record['rule']} selected {n_selected} edges but none lies on a path from input to "
                          "logits, so the pruned circuit is empty; select more edges, or check the scores' sign "
                          "(absolute=True ranks by |score|)", stacklevel=stacklevel)
        return out

    # ---- files -----------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``.json`` (MIB's circuit format), ``.graphml`` (networkx) or ``.pt`` (dense tensors)."""
        return io.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, model: HasStructure | None = None) -> Graph:
        """Read a graph file (MIB / EAP-IG JSON included).

        With ``model`` (anything with ``.structure`` and ``.name``), the file's cfg must match the model's
        shape, else :class:`GraphMismatchError`; the graph then uses ``model.structure``.
        """
        return io.load(path, model=model)

    # ---- comparison and display ------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        """Same shape, circuit, node membership, scores (NaN == NaN, any float dtype) and metadata."""
        if not isinstance(other, Graph):
            return NotImplemented
        a, b = self.structure, other.structure
        if not a.same_shape(b) or a.n_kv_heads != b.n_kv_heads or self.n_positions != other.n_positions:
            return False

        def same(x: torch.Tensor | None, y: torch.Tensor | None) -> bool:
            if x is None or y is None:
                return x is None and y is None
            x, y = x.detach().cpu(), y.detach().cpu()
            if x.shape != y.shape:
                return False
            if x.dtype == torch.bool or y.dtype == torch.bool:
                return torch.equal(x, y)
            x, y = x.double(), y.double()
            return bool(((x == y) | (torch.isnan(x) & torch.isnan(y))).all())

        return (same(self.in_graph, other.in_graph) and same(self.node_in_graph, other.node_in_graph)
                and same(self.scores, other.scores) and same(self.node_scores, other.node_scores)
                and same(self.neuron_scores, other.neuron_scores)
                and same(self.neuron_in_graph, other.neuron_in_graph) and self.metadata == other.metadata)

    __hash__ = None  # type: ignore[assignment]  # mutable container

    def __repr__(self) -> str:
        st = self.structure
        on_edges = self.scores[st.on(self.device).edge_mask]  # [n] or [n, L]
        on_edges = on_edges[~torch.isnan(on_edges)]
        rng = (f"scores in [{float(on_edges.min()):.3g}, {float(on_edges.max()):.3g}]" if on_edges.numel()
               else "no scores")
        keys = [f"{k}={self.metadata[k]!r}" for k in ("method", "task", "model") if k in self.metadata]
        L = self.n_positions
        if L is not None:
            return (f"Graph({st.describe()}, {L} positions: {self.n_edges:,} of {st.n_edges * L:,} edge-positions "
                    f"({int(self.edge_in_graph.sum()):,} of {st.n_edges:,} edges), {self.n_nodes} of {st.n_nodes} "
                    f"nodes in the circuit; {rng}" + "".join(", " + k for k in keys) + ")")
        return (f"Graph({st.describe()}: {self.n_edges:,} of {st.n_edges:,} edges, {self.n_nodes} of "
                f"{st.n_nodes} nodes in the circuit; {rng}" + "".join(", " + k for k in keys) + ")")
