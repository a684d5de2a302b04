"""Turning scores into a circuit: which edges (or nodes) to keep, as dense ``[n_senders, n_receivers]`` masks.

Every rule ranks by a *key*: the raw score (``absolute=False``, MIB's CPR runs: keep the edges that help most)
or ``|score|`` (``absolute=True``, MIB's CMD runs: keep the edges that matter either way). A NaN score means
"not scored": it ranks below every scored edge and never passes a threshold.

Ties are broken deterministically by MIB's edge order (``GraphStructure.edge_order``): of two edges with the
same key, the one listed first in a MIB file wins. MIB's own ``apply_topn`` uses an unstable argsort here, so
on exact ties (e.g. many zero scores) the two can differ; on distinct scores they agree.

Position-aware graphs (``[S, R, L]`` scores) rank *edge-positions*: :func:`top_k_edge_positions` and
:func:`threshold_edges` return ``[S, R, L]`` masks, ties broken by MIB edge order, then position. The other rules
(greedy, sign-consistent, ratio, node and neuron level) are defined on edges only.

These functions only select; pruning to input -> logits paths is :mod:`circuits.graph.pruning`.
"""

from __future__ import annotations

import heapq
import warnings
from typing import TYPE_CHECKING

import torch

from circuits.errors import CircuitsError
from circuits.graph.structure import GraphStructure
from circuits.session.normalization import FaithfulnessWarning

if TYPE_CHECKING:  # pragma: no cover
    from circuits.graph.graph import Graph


class SelectionError(CircuitsError, ValueError):
    """A circuit cannot be cut from the scores as asked: k, fraction, threshold or level out of range."""


def rank_key(scores: torch.Tensor, absolute: bool) -> torch.Tensor:
    """The value selection ranks by: ``score`` or ``|score|``, with NaN (unscored) mapped to ``-inf``."""
    key = scores.abs() if absolute else scores
    return torch.nan_to_num(key.float() if key.dtype in (torch.float16, torch.bfloat16) else key,
                            nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf)


def top_k_edges(structure: GraphStructure, scores: torch.Tensor, k: int, absolute: bool = False) -> torch.Tensor:
    """``[S, R]`` bool: the ``k`` edges with the highest key (ties: first in MIB order)."""
    n = structure.n_edges
    if not 0 <= k <= n:
        raise SelectionError(f"k={k} edges requested, but the graph has {n:,} edges ({structure.describe()})")
    order = structure.on(scores.device).edge_order  # [E, 2]
    key = rank_key(scores[order[:, 0], order[:, 1]], absolute)  # [E] in MIB order
    keep = torch.sort(key, descending=True, stable=True).indices[:k]  # stable: ties stay in MIB order
    out = torch.zeros(structure.n_senders, structure.n_receivers, dtype=torch.bool, device=scores.device)
    out[order[keep, 0], order[keep, 1]] = True
    return out


def top_k_edge_positions(structure: GraphStructure, scores: torch.Tensor, k: int,
                         absolute: bool = False) -> torch.Tensor:
    """``[S, R, L]`` bool: the ``k`` edge-positions of ``scores [S, R, L]`` with the highest key (ties: first in MIB
    edge order, then the lower position)."""
    L = int(scores.shape[2])
    n = structure.n_edges * L
    if not 0 <= k <= n:
        raise SelectionError(f"k={k} edge-positions requested, but the graph has {n:,} ({structure.n_edges:,} edges "
                             f"x {L} positions; {structure.describe()})")
    order = structure.on(scores.device).edge_order  # [E, 2]
    key = rank_key(scores[order[:, 0], order[:, 1]], absolute).reshape(-1)  # [E * L]: edge-major, then position
    keep = torch.sort(key, descending=True, stable=True).indices[:k]
    edge, pos = keep // L, keep % L
    out = torch.zeros(structure.n_senders, structure.n_receivers, L, dtype=torch.bool, device=scores.device)
    out[order[edge, 0], order[edge, 1], pos] = True
    return out


def threshold_edges(structure: GraphStructure, scores: torch.Tensor, threshold: float,
                    absolute: bool = False) -> torch.Tensor:
    """``[S, R]`` bool: every edge whose key is ``>= threshold`` (inclusive, as EAP-IG's ``apply_threshold``).
    ``[S, R, L]`` scores give the ``[S, R, L]`` edge-positions passing it."""
    key = rank_key(scores, absolute)
    mask = structure.on(scores.device).edge_mask
    if scores.dim() == 3:
        mask = mask[..., None]
    return (key >= float(threshold)) & ~torch.isnan(scores) & mask


def fraction_to_k(structure: GraphStructure, fraction: float, n_positions: int | None = None) -> int:
    """MIB's count for an edge fraction: ``int(fraction * n_edges)`` (floor, float product as MIB computes it).
    With ``n_positions`` (a position-aware graph) it counts edge-positions: ``int(fraction * n_edges * L)``."""
    if not 0.0 <= fraction <= 1.0:
        raise SelectionError(f"fraction must lie in [0, 1], got {fraction}")
    return int(fraction * (structure.n_edges * (1 if n_positions is None else int(n_positions))))


# ---- beyond top-k: sign-consistent and positive/negative-ratio selection (Nikankin et al. 2025) -----------------
#: Selection rules by name, with the one parameter each takes after a colon (``"ratio:0.8"``) and its default.
SELECTIONS: dict[str, tuple[str, float] | None] = {
    "top_k": None, "greedy": None, "sign_consistent": ("min_agreement", 0.9), "ratio": ("positive_fraction", 0.5)}


def parse_selection(text: str) -> tuple[str, dict[str, float]]:
    """``"top_k"``, ``"greedy"``, ``"sign_consistent[:MIN_AGREEMENT]"`` or ``"ratio[:POSITIVE_FRACTION]"`` ->
    ``(rule, {parameter: value})``."""
    name, _, value = str(text).strip().partition(":")
    if name not in SELECTIONS:
        raise SelectionError(f"selection must be one of {', '.join(SELECTIONS)} (sign_consistent and ratio take a "
                         f"value after a colon, e.g. 'ratio:0.8'), got {text!r}")
    param = SELECTIONS[name]
    if param is None:
        if value:
            raise SelectionError(f"selection {name!r} takes no value, got {text!r}")
        return name, {}
    try:
        number = float(value) if value else param[1]
    except ValueError:
        raise SelectionError(f"selection {text!r}: {param[0]} must be a number, e.g. '{name}:{param[1]}'") from None
    if not 0.0 <= number <= 1.0:
        raise SelectionError(f"selection {text!r}: {param[0]} must lie in [0, 1]")
    return name, {param[0]: number}


def _ranked(structure: GraphStructure, keys: list[torch.Tensor], k: int) -> torch.Tensor:
    """``[S, R]`` bool: the first ``k`` edges in the lexicographic order of ``keys`` (each ``[E]`` in MIB order,
    higher first; the first key decides, later keys break its ties, MIB order breaks the rest)."""
    n = structure.n_edges
    if not 0 <= k <= n:
        raise SelectionError(f"k={k} edges requested, but the graph has {n:,} edges ({structure.describe()})")
    device = keys[0].device
    order = structure.on(device).edge_order
    perm = torch.arange(n, device=device)
    for key in reversed(keys):  # stable sorts from the last key to the first: lexicographic
        perm = perm[torch.sort(key[perm], descending=True, stable=True).indices]
    out = torch.zeros(structure.n_senders, structure.n_receivers, dtype=torch.bool, device=device)
    keep = perm[:k]
    out[order[keep, 0], order[keep, 1]] = True
    return out


def sign_consistent_edges(structure: GraphStructure, scores: torch.Tensor, agreement: torch.Tensor, k: int,
                          min_agreement: float = 0.9, absolute: bool = False) -> torch.Tensor:
    """``[S, R]`` bool: ``k`` edges, those whose sign agreed in at least ``min_agreement`` of the bootstrap
    resamples first (by key, as :func:`top_k_edges`), then the others (by key). ``agreement [E]`` in MIB order.

    Unstable edges are ranked last rather than dropped, so every k is defined and k = every edge is the full
    model (a faithfulness curve ends at f = 1)."""
    order = structure.on(scores.device).edge_order
    key = rank_key(scores[order[:, 0], order[:, 1]], absolute)  # [E]
    stable = (agreement.to(scores.device) >= min_agreement).float()
    return _ranked(structure, [stable, key], k)


def ratio_edges(structure: GraphStructure, scores: torch.Tensor, k: int, positive_fraction: float = 0.5
                ) -> torch.Tensor:
    """``[S, R]`` bool: ``round(positive_fraction * k)`` edges of the largest positive scores and the rest of the
    most negative ones (Nikankin et al.'s positive/negative ratio). When one side runs out, the largest
    ``|score|`` of what is left fills the count."""
    order = structure.on(scores.device).edge_order
    values = scores[order[:, 0], order[:, 1]].double()  # [E]
    values = torch.nan_to_num(values, nan=0.0)
    n_pos = int(round(positive_fraction * k))
    positive, negative = values > 0, values < 0
    take_pos = min(n_pos, int(positive.sum()))
    take_neg = min(k - take_pos, int(negative.sum()))
    chosen = torch.zeros_like(positive)
    if take_pos:
        chosen |= _ranked_flat(torch.where(positive, values, -torch.inf), take_pos)
    if take_neg:
        chosen |= _ranked_flat(torch.where(negative, -values, -torch.inf), take_neg)
    rest = k - take_pos - take_neg
    if rest:
        chosen |= _ranked_flat(torch.where(chosen, -torch.inf, values.abs()), rest)
    out = torch.zeros(structure.n_senders, structure.n_receivers, dtype=torch.bool, device=scores.device)
    out[order[chosen, 0], order[chosen, 1]] = True
    return out


def _ranked_flat(key: torch.Tensor, k: int) -> torch.Tensor:  # [E] -> [E] bool, the k highest (MIB order ties)
    out = torch.zeros(key.shape, dtype=torch.bool, device=key.device)
    out[torch.sort(key, descending=True, stable=True).indices[:k]] = True
    return out


def select(graph: Graph, selection: str, k: int, absolute: bool = False, *, prune: bool = True) -> Graph:
    """``graph`` cut to ``k`` edges by the rule named in ``selection`` (:func:`parse_selection`): what
    faithfulness curves, minimal circuits and sweeps call. ``ratio`` is signed by construction (``absolute`` is
    ignored there)."""
    name, options = parse_selection(selection)
    if name == "greedy":
        return graph.greedy(k, absolute, prune=prune)
    if name == "sign_consistent":
        return graph.sign_consistent(k, options["min_agreement"], absolute=absolute, prune=prune)
    if name == "ratio":
        return graph.ratio(k, options["positive_fraction"], prune=prune)
    return graph.top_k(k, absolute, prune=prune)


# ---- node level ----------------------------------------------------------------------------------------------
def edges_between(structure: GraphStructure, nodes: torch.Tensor) -> torch.Tensor:
    """``[S, R]`` bool: every edge whose sender and receiver's node are both in ``nodes`` ([n_nodes] bool)."""
    dev = nodes.device
    senders = nodes[: structure.n_senders]
    receivers = (structure.on(dev).receiver_nodes & nodes[None, :]).any(1)  # feeds a node in; logits is nodes[-1]
    return structure.on(dev).edge_mask & senders[:, None] & receivers[None, :]


def top_k_nodes(structure: GraphStructure, node_scores: torch.Tensor, k: int, absolute: bool = False) -> torch.Tensor:
    """``[n_nodes]`` bool: the ``k`` scored nodes with the highest key, plus every unscored node and ``logits``.

    As in MIB, a node without a score (NaN) is always kept, so node-level methods may score a subset.
    """
    scored = ~torch.isnan(node_scores)
    scored[-1] = False  # logits is never ranked
    n = int(scored.sum())
    if not 0 <= k <= n:
        raise SelectionError(f"k={k} nodes requested, but only {n} nodes have a score")
    key = rank_key(node_scores, absolute).masked_fill(~scored, -torch.inf)
    out = ~scored
    out[-1] = True
    out[torch.sort(key, descending=True, stable=True).indices[:k]] = True
    return out


def threshold_nodes(structure: GraphStructure, node_scores: torch.Tensor, threshold: float,
                    absolute: bool = False) -> torch.Tensor:
    """``[n_nodes]`` bool: scored nodes with key ``>= threshold``, plus unscored nodes and ``logits``."""
    unscored = torch.isnan(node_scores)
    out = unscored | (rank_key(node_scores, absolute) >= float(threshold))
    out[-1] = True
    return out


# ---- neuron level: heads and MLP neurons as units ----------------------------------------------------------------
def head_nodes(structure: GraphStructure) -> torch.Tensor:
    """``[H_total]`` long: the node index of every head, in node order (layer by layer)."""
    return torch.tensor([structure.head_sender(layer, h) for layer in range(structure.n_layers)
                         for h in range(structure.n_heads)], dtype=torch.long)


def unit_scores(structure: GraphStructure, node_scores: torch.Tensor | None, neuron_scores: torch.Tensor
                ) -> torch.Tensor:
    """``[H_total + L * m]``: the units of a neuron-level circuit, heads (their node scores; NaN: unscored, kept)
    then neurons layer by layer, the order ties are broken in."""
    heads = (torch.full((structure.n_layers * structure.n_heads,), float("nan"), device=neuron_scores.device)
             if node_scores is None else node_scores[head_nodes(structure).to(node_scores.device)])
    return torch.cat([heads.to(neuron_scores.device, torch.float64), neuron_scores.flatten().double()])


def units_to_circuit(structure: GraphStructure, keep: torch.Tensor, neuron_shape: tuple[int, int]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(nodes [n_nodes], neurons [L, m])`` bool of the units ``keep [H_total + L * m]``: the kept heads, every MLP
    with a kept neuron, ``input`` and ``logits``."""
    n_heads = structure.n_layers * structure.n_heads
    neurons = keep[n_heads:].view(neuron_shape)
    nodes = torch.zeros(structure.n_nodes, dtype=torch.bool, device=keep.device)
    nodes[0] = nodes[-1] = True
    nodes[head_nodes(structure).to(keep.device)] = keep[:n_heads]
    if structure.has_mlp:
        mlps = torch.tensor([structure.mlp_sender(layer) for layer in range(structure.n_layers)], device=keep.device)
        nodes[mlps] = neurons.any(1)
    return nodes, neurons


def top_k_units(structure: GraphStructure, node_scores: torch.Tensor | None, neuron_scores: torch.Tensor, k: int,
                absolute: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(nodes [n_nodes], neurons [L, m])`` bool: the ``k`` scored units (heads and neurons, :func:`unit_scores`)
    with the highest key, plus every unscored one; see :func:`units_to_circuit`."""
    scores = unit_scores(structure, node_scores, neuron_scores)
    scored = ~torch.isnan(scores)
    n = int(scored.sum())
    if not 0 <= k <= n:
        raise SelectionError(f"k={k} units requested, but only {n} heads and neurons have a score")
    key = rank_key(scores, absolute).masked_fill(~scored, -torch.inf)
    keep = ~scored
    keep[torch.sort(key, descending=True, stable=True).indices[:k]] = True
    return units_to_circuit(structure, keep, tuple(neuron_scores.shape))  # type: ignore[arg-type]


# ---- greedy from the logits ----------------------------------------------------------------------------------
def greedy_edges(structure: GraphStructure, scores: torch.Tensor, k: int, absolute: bool = False) -> torch.Tensor:
    """``[S, R]`` bool: EAP-IG's greedy construction, grown backwards from ``logits``.

    Start with ``logits`` in the circuit; repeatedly add the highest-key edge whose receiver's node is already
    in the circuit, and add that edge's sender to the circuit. Every chosen edge therefore leads to ``logits``
    (its sender may still lack a path from ``input``; :func:`~circuits.graph.pruning.prune` removes those).

    Candidates are merged lazily, one sorted column per receiver, so the heap holds at most ``n_receivers``
    entries: O(k log R) after one dense sort.
    """
    n = structure.n_edges
    if not 0 <= k <= n:
        raise SelectionError(f"k={k} edges requested, but the graph has {n:,} edges ({structure.describe()})")
    S, R = structure.n_senders, structure.n_receivers
    mask = structure.edge_mask
    key = rank_key(scores.detach().cpu(), absolute).masked_fill(~mask, -torch.inf)  # [S, R]
    # Per receiver, its senders by key (descending); stable, so ties go to the lower sender index, which is
    # also the earlier MIB position within one receiver. Non-edges sort last and are cut by n_upstream.
    col_key, col_sender = torch.sort(key, dim=0, descending=True, stable=True)  # [S, R] each
    position = torch.zeros(S, R, dtype=torch.long)  # MIB position of each edge, for tie-breaks across receivers
    order = structure.edge_order
    position[order[:, 0], order[:, 1]] = torch.arange(n)
    n_up = structure.n_upstream.tolist()

    node_receivers = structure.node_receivers()

    columns: dict[int, tuple[list[float], list[int], list[int]]] = {}
    heap: list[tuple[float, int, int, int]] = []  # (-key, MIB position, receiver, rank within receiver)

    def open_receiver(r: int) -> None:
        if r in columns:  # a grouped k/v receiver, opened by another head of its group
            return
        senders = col_sender[: n_up[r], r]
        columns[r] = (col_key[: n_up[r], r].tolist(), senders.tolist(), position[senders, r].tolist())
        keys, _, pos = columns[r]
        heapq.heappush(heap, (-keys[0], pos[0], r, 0))

    chosen_s: list[int] = []
    chosen_r: list[int] = []
    in_circuit = [False] * (S + 1)
    in_circuit[S] = True
    for r in node_receivers[S]:
        open_receiver(r)
    while len(chosen_s) < k:
        _, _, r, i = heapq.heappop(heap)
        keys, senders, pos = columns[r]
        s = senders[i]
        chosen_s.append(s)
        chosen_r.append(r)
        if i + 1 < len(senders):
            heapq.heappush(heap, (-keys[i + 1], pos[i + 1], r, i + 1))
        if not in_circuit[s]:
            in_circuit[s] = True
            for r2 in node_receivers[s]:
                open_receiver(r2)
    out = torch.zeros(S, R, dtype=torch.bool)
    out[torch.tensor(chosen_s, dtype=torch.long), torch.tensor(chosen_r, dtype=torch.long)] = True
    return out.to(scores.device)


def warn_if_uninformative(scored: Graph, level: str) -> None:
    """Warn when a selection from ``scored`` would follow file order, not importance (no informative scores)."""
    if level == "node":
        values = scored.node_scores[:-1] if scored.node_scores is not None else None
    elif level == "neuron":
        values = scored.neuron_scores.flatten() if scored.neuron_scores is not None else None
    else:
        values = scored.scores[scored.structure.edge_mask.to(scored.device)]
    if values is None:
        return
    values = values[~torch.isnan(values)]
    if values.numel() == 0 or bool((values == values[0]).all()):
        warnings.warn(f"the scored graph's {level} scores are all NaN or all equal, so top-k selection follows the "
                      "file order, not importance; pass a graph with scores (circuits.discover, or Graph.load of a "
                      "scored file)", FaithfulnessWarning, stacklevel=4)
