"""Scores against a known circuit: AUROC, precision / recall at the known circuit's size, and node-level views.

The known circuit (``reference``) is a :class:`Graph`: a published circuit (:mod:`circuits.evaluation.published`),
the planted circuit of a zoo model, or any circuit file. The hypothesis is a *scored* graph (for AUROC and
precision / recall at size) or a circuit (for :func:`compare`).

* **AUROC** (``auroc``): the probability that an edge of the reference circuit scores higher than an edge
  outside it (ties count one half), over every edge of the graph: the Mann-Whitney statistic, i.e. the area
  under the ROC curve swept by a threshold on the scores. Unscored edges (NaN) rank below every scored edge.
  Selection does not prune here: AUROC judges the ranking itself (ACDC's ROC sweeps, by contrast, run the
  method once per threshold).
* **Precision / recall at size** (``precision_recall_at_size``): select a circuit of the reference's size (the
  smallest top-k that still has as many edges after pruning, :func:`select_at_size`; or the raw top-k with
  ``prune=False``) and compare edge sets.
* **Node level** (``level="node"``): InterpBench's and the induction circuit's ground truth is a set of heads.
  Nodes are heads and MLPs (``input`` and ``logits`` belong to every circuit and are left out). A scored graph's
  node scores are its own ``node_scores`` when it has them, else promoted from edges: a node's score is the
  largest score (``reduce="max"``, or their ``"sum"``) of the edges that leave it or enter its q/k/v/MLP inputs.
  A reference's nodes are its ``node_in_graph``.
"""

from __future__ import annotations

import math

import torch

from circuits.graph.graph import Graph
from circuits.graph.io import GraphMismatchError
from circuits.graph.selection import rank_key

LEVELS = ("edge", "node")
REDUCES = ("max", "sum")


def _same_shape(a: Graph, b: Graph) -> None:
    for g, what in ((a, "scored graph"), (b, "reference")):
        if not isinstance(g, Graph):
            raise TypeError(f"{what} must be a circuits.Graph, got {type(g).__name__}")
    if not a.structure.same_shape(b.structure) or a.structure.n_kv_heads != b.structure.n_kv_heads:
        raise GraphMismatchError(f"the graphs belong to different model shapes ({a.structure.describe()} vs "
                                 f"{b.structure.describe()}); compare circuits of the same model")


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be 'edge' or 'node', got {level!r}")


def node_scores_from_edges(scored: Graph, absolute: bool = False, reduce: str = "max") -> torch.Tensor:
    """``[n_nodes]``: each node's promoted score (see the module docstring); ``input`` and ``logits`` are NaN.

    With ``absolute`` the edges' ``|score|`` are reduced (a node matters if its edges matter either way).
    """
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {', '.join(REDUCES)}, got {reduce!r}")
    st = scored.structure
    mask = st.edge_mask
    key = rank_key(scored.scores.detach().cpu().double(), absolute)  # NaN -> -inf
    key = key.masked_fill(~mask, -math.inf)
    S = st.n_senders
    out = torch.full((S + 1,), -math.inf, dtype=torch.float64)
    owner, node = st.receiver_nodes.nonzero(as_tuple=True)  # (receiver, a node it feeds): grouped k/v feed several
    if reduce == "max":
        out[:S] = key.max(1).values  # outgoing
        incoming = key.max(0).values  # [R]
        out.scatter_reduce_(0, node, incoming[owner], reduce="amax")
    else:
        finite = torch.where(torch.isfinite(key), key, torch.zeros_like(key))
        out[:S] = finite.sum(1)
        out.index_add_(0, node, finite.sum(0)[owner])
    out = torch.where(torch.isinf(out) & (out < 0), torch.full_like(out, math.nan), out)
    out[0] = math.nan
    out[-1] = math.nan
    return out


def _node_universe(structure) -> torch.Tensor:
    """``[n_nodes]`` bool: heads and MLPs (what node-level ground truth is about)."""
    keep = torch.ones(structure.n_nodes, dtype=torch.bool)
    keep[0] = keep[-1] = False
    return keep


def _items(scored: Graph, reference: Graph, level: str, absolute: bool, reduce: str):
    """(scores [N] float64 with NaN = unscored, labels [N] bool) over the edges or nodes compared."""
    _same_shape(scored, reference)
    _check_level(level)
    if level == "edge":
        order = scored.structure.edge_order
        scores = scored.scores.detach().cpu().double()[order[:, 0], order[:, 1]]
        if absolute:
            scores = scores.abs()
        scores = _resolve(scores)
        labels = reference.in_graph.cpu()[order[:, 0], order[:, 1]]
        if not bool(labels.any()):
            raise ValueError("the reference circuit has no edges; for a ground truth given by its nodes (e.g. the "
                             "published induction heads) pass level='node'")
        return scores, labels
    universe = _node_universe(scored.structure)
    if scored.node_scores is not None:
        scores = scored.node_scores.detach().cpu().double()
        scores = scores.abs() if absolute else scores
    else:
        scores = node_scores_from_edges(scored, absolute, reduce)
    labels = reference.node_in_graph.cpu()
    return _resolve(scores[universe]), labels[universe]


# Scores smaller than this fraction of the largest |score| count as 0 in rankings. Floating-point rounding
# leaves ~1e-8 relative noise on edges with no effect (a saturated softmax, an unused path); ranking that noise
# would make an AUROC depend on summation order, not on what the method found.
SCORE_RESOLUTION = 1e-6


def _resolve(scores: torch.Tensor) -> torch.Tensor:
    finite = scores[torch.isfinite(scores)]
    if finite.numel() == 0:
        return scores
    floor = SCORE_RESOLUTION * float(finite.abs().max())
    return scores.masked_fill(scores.abs() <= floor, 0.0)


def _auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mann-Whitney AUROC with average ranks for ties; NaN scores rank lowest (tied with each other)."""
    n_pos = int(labels.sum())
    n_neg = int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs items both inside and outside the reference ({n_pos} inside, {n_neg} outside)")
    key = torch.nan_to_num(scores.double(), nan=-math.inf)
    sorted_key, order = torch.sort(key, stable=True)
    ranks = torch.empty_like(sorted_key)
    _, counts = torch.unique_consecutive(sorted_key, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # 1-based rank of each group's last item
    starts = ends - counts.double() + 1
    ranks_sorted = torch.repeat_interleave((starts + ends) / 2, counts)
    ranks[order] = ranks_sorted
    rank_sum = float(ranks[labels].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auroc(scored: Graph, reference: Graph, *, absolute: bool = False, level: str = "edge",
          reduce: str = "max") -> float:
    """Area under the ROC curve of ``scored``'s scores for membership in ``reference``.

    ``absolute`` ranks ``|score|`` (edges that matter either way); ``level="node"`` compares heads and MLPs
    (see the module docstring). 1.0 = every reference edge outranks every other edge, 0.5 = chance.
    """
    scores, labels = _items(scored, reference, level, absolute, reduce)
    return _auroc(scores, labels)


def roc_curve(scored: Graph, reference: Graph, *, absolute: bool = False, level: str = "edge",
              reduce: str = "max"):
    """The ROC curve behind :func:`auroc`: a DataFrame of ``threshold, fpr, tpr`` (one row per distinct score,
    from the highest threshold down, starting at (0, 0))."""
    import pandas as pd

    scores, labels = _items(scored, reference, level, absolute, reduce)
    key = torch.nan_to_num(scores, nan=-math.inf)
    order = torch.sort(key, descending=True, stable=True).indices
    key, lab = key[order], labels[order]
    tp = torch.cumsum(lab.double(), 0)
    fp = torch.cumsum((~lab).double(), 0)
    last = torch.ones_like(lab)
    last[:-1] = key[1:] != key[:-1]  # last item of each group of equal scores
    P, N = float(lab.sum()), float((~lab).sum())
    return pd.DataFrame({"threshold": [math.inf] + key[last].tolist(), "fpr": [0.0] + (fp[last] / N).tolist(),
                         "tpr": [0.0] + (tp[last] / P).tolist()})


def compare(hypothesis: Graph, reference: Graph, *, level: str = "edge") -> dict:
    """Confusion counts of two circuits' edge (or node) sets, with precision, recall, F1, TPR and FPR.

    Node level compares heads and MLPs (``input`` / ``logits`` left out), using each graph's ``node_in_graph``.
    """
    _same_shape(hypothesis, reference)
    _check_level(level)
    if level == "edge":
        mask = hypothesis.structure.edge_mask
        h, r = hypothesis.in_graph.cpu()[mask], reference.in_graph.cpu()[mask]
    else:
        universe = _node_universe(hypothesis.structure)
        h, r = hypothesis.node_in_graph.cpu()[universe], reference.node_in_graph.cpu()[universe]
    tp, fp = int((h & r).sum()), int((h & ~r).sum())
    fn, tn = int((~h & r).sum()), int((~h & ~r).sum())
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall, "f1": f1,
            "tpr": recall, "fpr": fp / (fp + tn) if fp + tn else math.nan, "n_hypothesis": tp + fp,
            "n_reference": tp + fn}


def select_at_size(scored: Graph, n_edges: int, absolute: bool = False) -> Graph:
    """The smallest top-k circuit of ``scored`` with at least ``n_edges`` edges *after pruning*.

    Top-k sets are nested and pruning is monotone (more edges never remove a path), so the pruned size grows with
    k and bisection finds that k exactly; ``metadata["selection"]["k"]`` records it. This is "a discovered circuit
    of the same size" as a reference with ``n_edges`` edges (a plain ``top_k(n_edges)`` can prune to far fewer).
    """
    n = scored.structure.n_edges
    if not 0 <= n_edges <= n:
        raise ValueError(f"n_edges must lie in [0, {n}], got {n_edges}")
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*none lies on a path from input to logits.*")
        lo, hi = n_edges - 1, n  # size(lo) < n_edges (size(k) <= k), size(hi) = n >= n_edges
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if scored.top_k(mid, absolute).n_edges >= n_edges:
                hi = mid
            else:
                lo = mid
        return scored.top_k(hi, absolute)


def precision_recall_at_size(scored: Graph, reference: Graph, *, absolute: bool = False, level: str = "edge",
                             prune: bool = True, reduce: str = "max") -> dict:
    """Select a circuit of the reference's size from ``scored``'s ranking and :func:`compare` them.

    Edges, ``prune=True`` (default): the smallest top-k whose *pruned* circuit has at least as many edges as the
    reference (:func:`select_at_size`), i.e. the circuit the method would report at that size. ``prune=False``:
    the raw ``top_k(n_reference)`` edges (then precision == recall). Nodes: the top ``n_reference`` heads / MLPs
    by (promoted) node score. The result adds ``k`` (edges or nodes selected before pruning).
    """
    _same_shape(scored, reference)
    _check_level(level)
    if level == "edge":
        k = reference.n_edges
        if k == 0:
            raise ValueError("the reference circuit has no edges; for a ground truth given by its nodes pass "
                             "level='node'")
        hypothesis = select_at_size(scored, k, absolute) if prune else scored.top_k(k, absolute, prune=False)
        return {**compare(hypothesis, reference), "k": int(hypothesis.metadata["selection"]["k"])}
    scores, labels = _items(scored, reference, "node", absolute, reduce)
    k = int(labels.sum())
    key = torch.nan_to_num(scores, nan=-math.inf)
    chosen = torch.zeros_like(labels)
    chosen[torch.sort(key, descending=True, stable=True).indices[:k]] = True
    tp, fp = int((chosen & labels).sum()), int((chosen & ~labels).sum())
    fn, tn = int((~chosen & labels).sum()), int((~chosen & ~labels).sum())
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if tp else 0.0, "tpr": recall,
            "fpr": fp / (fp + tn) if fp + tn else math.nan, "n_hypothesis": k, "n_reference": k, "k": k}


def node_auroc(scored: Graph, reference: Graph, *, absolute: bool = False, reduce: str = "max") -> float:
    """:func:`auroc` at node level (heads and MLPs)."""
    return auroc(scored, reference, absolute=absolute, level="node", reduce=reduce)


def node_precision_recall_at_size(scored: Graph, reference: Graph, *, absolute: bool = False,
                                  reduce: str = "max") -> dict:
    """:func:`precision_recall_at_size` at node level (heads and MLPs)."""
    return precision_recall_at_size(scored, reference, absolute=absolute, level="node", reduce=reduce)
