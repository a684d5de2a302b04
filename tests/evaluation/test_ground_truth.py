"""AUROC, ROC, precision / recall at size and node promotion, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

import circuits
from circuits.evaluation import (auroc, compare, node_auroc, node_precision_recall_at_size, node_scores_from_edges,
                                 precision_recall_at_size, roc_curve)
from circuits.graph.io import GraphMismatchError

ST = circuits.GraphStructure(n_layers=2, n_heads=2)  # 46 edges


def pairwise_auroc(scores: list[float], labels: list[bool]) -> float:
    """The definition: P(score of a positive > score of a negative), ties one half, NaN lowest."""
    key = [-math.inf if math.isnan(s) else s for s in scores]
    pos = [s for s, y in zip(key, labels) if y]
    neg = [s for s, y in zip(key, labels) if not y]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def graphs(seed: int = 0, ties: bool = True, nan: bool = True):
    g = torch.Generator().manual_seed(seed)
    scored = circuits.Graph.full(ST)
    values = torch.randn(ST.n_edges, generator=g, dtype=torch.float64)
    if ties:
        values = (values * 2).round() / 2  # many ties
    if nan:
        values[:3] = math.nan
    scored.set_scores(values)
    ref_edges = [e for e, keep in zip(ST.edge_names(), torch.rand(ST.n_edges, generator=g) < 0.3) if keep]
    return scored, circuits.Graph.from_edges(ST, ref_edges), values.tolist(), ref_edges


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_pairwise_definition(seed):
    scored, reference, values, ref_edges = graphs(seed)
    names = list(ST.edge_names())
    labels = [n in set(ref_edges) for n in names]
    assert auroc(scored, reference) == pytest.approx(pairwise_auroc(values, labels), abs=1e-12)
    absolute = [abs(v) for v in values]
    assert auroc(scored, reference, absolute=True) == pytest.approx(pairwise_auroc(absolute, labels), abs=1e-12)
    # the ROC curve's trapezoid area is the same number
    roc = roc_curve(scored, reference)
    fpr, tpr = roc["fpr"].tolist(), roc["tpr"].tolist()
    area = sum((fpr[i + 1] - fpr[i]) * (tpr[i] + tpr[i + 1]) / 2 for i in range(len(fpr) - 1))
    assert area == pytest.approx(auroc(scored, reference), abs=1e-12)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)


def test_auroc_extremes_and_a_hand_example():
    st = circuits.GraphStructure(n_layers=1, n_heads=1)  # edges: input->a0.h0<q,k,v>, input/a0.h0->m0, 3 ->logits
    names = list(st.edge_names())
    assert len(names) == 8
    scored = circuits.Graph.full(st)
    scored.set_scores(torch.tensor([8, 7, 6, 5, 4, 3, 2, 1], dtype=torch.float64))
    top = circuits.Graph.from_edges(st, names[:3])
    bottom = circuits.Graph.from_edges(st, names[-3:])
    assert auroc(scored, top) == 1.0 and auroc(scored, bottom) == 0.0
    # positives at ranks 1st and 4th of 8 (scores 8 and 5): 6 + 4 wins out of 2 * 6 pairs
    assert auroc(scored, circuits.Graph.from_edges(st, [names[0], names[3]])) == pytest.approx(10 / 12)
    # a tie between a positive and a negative counts one half
    scored.set_scores(torch.tensor([8, 8, 6, 5, 4, 3, 2, 1], dtype=torch.float64))
    assert auroc(scored, circuits.Graph.from_edges(st, [names[0]])) == pytest.approx((6 + 0.5) / 7)


def test_precision_recall_at_size():
    scored, reference, values, ref_edges = graphs(3, ties=False, nan=False)
    pr = precision_recall_at_size(scored, reference, prune=False)
    k = len(ref_edges)
    names = list(ST.edge_names())
    chosen = {names[i] for i in sorted(range(len(values)), key=lambda i: -values[i])[:k]}
    tp = len(chosen & set(ref_edges))
    assert (pr["k"], pr["tp"], pr["fp"], pr["fn"]) == (k, tp, k - tp, k - tp)
    assert pr["precision"] == pr["recall"] == pytest.approx(tp / k)
    # a perfect ranking recovers the reference exactly
    perfect = circuits.Graph.full(ST)
    perfect.set_scores({e: 1.0 for e in ref_edges})
    assert precision_recall_at_size(perfect, reference, prune=False)["precision"] == 1.0
    c = compare(scored.top_k(k, prune=False), reference)
    assert (c["tp"], c["tp"] + c["fp"] + c["fn"] + c["tn"]) == (tp, ST.n_edges)


def test_node_promotion_and_node_auroc():
    st = circuits.GraphStructure(n_layers=1, n_heads=2)
    scored = circuits.Graph.full(st)
    scored.set_scores({"input->a0.h0<q>": 0.5, "a0.h0->logits": -2.0, "a0.h1->m0": 3.0, "input->m0": -4.0,
                       "m0->logits": 1.0})
    promoted = node_scores_from_edges(scored)
    names = [n.name for n in st.nodes]
    by = dict(zip(names, promoted.tolist()))
    assert math.isnan(by["input"]) and math.isnan(by["logits"])
    # a0.h0: in {0.5, 0 (k, v)}, out {-2, 0 (->m0)}: max 0.5; a0.h1: out 3.0; m0: in {3, -4, 0}, out {1}: max 3
    assert (by["a0.h0"], by["a0.h1"], by["m0"]) == (0.5, 3.0, 3.0)
    absolute = dict(zip(names, node_scores_from_edges(scored, absolute=True).tolist()))
    assert (absolute["a0.h0"], absolute["m0"]) == (2.0, 4.0)
    summed = dict(zip(names, node_scores_from_edges(scored, reduce="sum").tolist()))
    assert summed["m0"] == pytest.approx(3.0 - 4.0 + 1.0)
    # reference: heads only (like InterpBench / induction ground truth)
    nodes = torch.zeros(st.n_nodes, dtype=torch.bool)
    nodes[[st.node_index("input"), st.node_index("a0.h1"), st.node_index("logits")]] = True
    reference = circuits.Graph(st, in_graph=torch.zeros(st.n_senders, st.n_receivers, dtype=torch.bool),
                               node_in_graph=nodes)
    # items a0.h0 (0.5), a0.h1 (3.0, positive), m0 (3.0): one win, one tie of two pairs
    assert node_auroc(scored, reference) == pytest.approx((1 + 0.5) / 2)
    pr = node_precision_recall_at_size(scored, reference)
    assert pr["k"] == 1 and pr["tp"] == 1  # stable ties: a0.h1 comes before m0
    with pytest.raises(ValueError, match="level='node'"):
        auroc(scored, reference)


def test_mismatched_shapes_are_refused():
    scored, reference, _, _ = graphs()
    other = circuits.Graph.full(circuits.GraphStructure(n_layers=3, n_heads=2))
    with pytest.raises(GraphMismatchError):
        auroc(other, reference)
    with pytest.raises(ValueError, match="level"):
        auroc(scored, reference, level="neuron")


def test_select_at_size_matches_the_pruned_size():
    from circuits.evaluation import select_at_size

    scored, reference, _, _ = graphs(4, ties=False, nan=False)
    target = reference.n_edges
    chosen = select_at_size(scored, target)
    k = chosen.metadata["selection"]["k"]
    assert chosen.n_edges >= target > scored.top_k(k - 1).n_edges  # the smallest k reaching the size
    pr = precision_recall_at_size(scored, reference)
    assert pr["k"] == k and pr["n_hypothesis"] == chosen.n_edges
