"""top_k / top_fraction / threshold / greedy: signed vs absolute, ties, k before pruning."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from circuits.graph import Graph, GraphStructure

# One layer, two heads: 13 edges. Every score not listed is 0.
SCORES = {
    "a0.h1->logits": -4.0,
    "a0.h0->logits": 3.0,
    "input->a0.h0<q>": 2.0,
    "input->m0": 1.0,
    "input->a0.h1<v>": -1.0,   # |score| ties with input->m0; comes first in MIB order
    "input->logits": 0.5,
    "m0->logits": 0.2,
}


@pytest.fixture
def small() -> Graph:
    s = GraphStructure(n_layers=1, n_heads=2)
    g = Graph.full(s, metadata={"method": "hand"})
    g.set_scores(SCORES)
    assert s.n_edges == 13
    return g


def test_top_k_signed(small):
    raw = small.top_k(3, prune=False)
    assert set(raw.edges) == {"a0.h0->logits", "input->a0.h0<q>", "input->m0"}
    pruned = small.top_k(3)
    assert set(pruned.edges) == {"a0.h0->logits", "input->a0.h0<q>"}  # m0 reaches no logits
    assert pruned.n_edges == 2  # k counts before pruning; n_edges after
    assert pruned.metadata["selection"] == {"rule": "top_k", "k": 3, "absolute": False, "level": "edge",
                                            "pruned": True, "n_selected": 3}
    assert pruned.metadata["method"] == "hand"
    assert set(small.top_k(5).edges) == {"a0.h0->logits", "input->a0.h0<q>", "input->m0", "input->logits",
                                         "m0->logits"}


def test_top_k_absolute(small):
    assert set(small.top_k(3, absolute=True, prune=False).edges) == {"a0.h1->logits", "a0.h0->logits",
                                                                     "input->a0.h0<q>"}
    assert set(small.top_k(3, absolute=True).edges) == {"a0.h0->logits", "input->a0.h0<q>"}  # a0.h1 unfed
    # k=4: |-1| (input->a0.h1<v>) ties with input->m0's 1.0 and wins by MIB order, which feeds a0.h1
    assert set(small.top_k(4, absolute=True).edges) == {"a0.h1->logits", "a0.h0->logits", "input->a0.h0<q>",
                                                        "input->a0.h1<v>"}


def test_ties_follow_mib_order(small):
    # 5 positive scores, then zeros: the first two zero-score edges in MIB order are a0.h0's k and v inputs
    extra = set(small.top_k(7, prune=False).edges) - set(small.top_k(5, prune=False).edges)
    assert extra == {"input->a0.h0<k>", "input->a0.h0<v>"}
    s = GraphStructure(n_layers=12, n_heads=12)
    zeros = Graph.full(s).top_k(100, prune=False)
    assert zeros.edges == tuple(list(s.edge_names())[:100])


def test_k_bounds(small):
    assert small.top_k(0).n_edges == 0
    assert small.top_k(13).n_edges == 13
    with pytest.raises(ValueError, match="13 edges"):
        small.top_k(14)


@pytest.mark.filterwarnings("ignore:top_k selected")  # random scores: tiny cuts prune to nothing
def test_top_fraction(small, gpt2):
    assert small.top_fraction(0.5, prune=False).n_edges == int(0.5 * 13) == 6
    assert torch.equal(small.top_fraction(1.0).in_graph, small.top_k(13).in_graph)
    gen = torch.Generator().manual_seed(1)
    g = Graph.full(gpt2, scores=torch.randn(gpt2.n_senders, gpt2.n_receivers, generator=gen))
    for f in (0.001, 0.01, 0.1):
        assert g.top_fraction(f, prune=False).n_edges == int(f * 32_491)  # MIB: int(pct * n_edges)
        assert g.top_fraction(f).metadata["selection"]["fraction"] == f
    with pytest.raises(ValueError):
        g.top_fraction(1.5)


def test_threshold(small):
    assert set(small.threshold(1.0, prune=False).edges) == {"a0.h0->logits", "input->a0.h0<q>", "input->m0"}
    assert set(small.threshold(1.0).edges) == {"a0.h0->logits", "input->a0.h0<q>"}
    assert set(small.threshold(1.0, absolute=True).edges) == {"a0.h1->logits", "a0.h0->logits",
                                                              "input->a0.h0<q>", "input->a0.h1<v>"}
    assert small.threshold(10.0).n_edges == 0
    assert small.threshold(-10.0).n_edges == 13


def test_nan_scores_rank_last():
    s = GraphStructure(n_layers=1, n_heads=1)
    g = Graph.full(s)
    g.set_scores(torch.full((s.n_edges,), float("nan")))
    g.set_scores({"input->logits": -5.0})
    assert g.top_k(1, prune=False).edges == ("input->logits",)
    assert g.threshold(-100.0).edges == ("input->logits",)


def test_greedy_hand(small):
    # from logits: a0.h0->logits (3), then a0.h0's input q (2), input->logits (.5), m0->logits (.2)
    assert set(small.greedy(4, prune=False).edges) == {"a0.h0->logits", "input->a0.h0<q>", "input->logits",
                                                       "m0->logits"}
    assert set(small.top_k(4, prune=False).edges) != set(small.greedy(4, prune=False).edges)
    assert set(small.greedy(5).edges) == {"a0.h0->logits", "input->a0.h0<q>", "input->logits", "m0->logits",
                                          "input->m0"}
    # absolute: a0.h1->logits first, then a0.h0->logits, its q, then a0.h1's v
    assert set(small.greedy(4, absolute=True).edges) == {"a0.h1->logits", "a0.h0->logits", "input->a0.h0<q>",
                                                         "input->a0.h1<v>"}


@pytest.mark.filterwarnings("ignore:greedy selected")
@pytest.mark.parametrize("absolute", [False, True])
def test_greedy_always_reaches_logits(gpt2, absolute):
    gen = torch.Generator().manual_seed(2)
    g = Graph.full(gpt2, scores=torch.randn(gpt2.n_senders, gpt2.n_receivers, generator=gen))
    for k in (1, 10, 300, 3000):
        c = g.greedy(k, absolute=absolute, prune=False)
        assert c.n_edges == k
        nxg = c.to_networkx()
        reaches = nx.ancestors(nxg, "logits") | {"logits"}
        assert all(v in reaches for _, v in nxg.edges())
        pruned = g.greedy(k, absolute=absolute)
        assert pruned == pruned.prune()


def test_reproduces_mib_circuit(mib_graph):
    """MIB's ioi-eap-ig circuit (756 edges after pruning) is exactly our absolute top-800 and greedy-781."""
    for cut in (mib_graph.top_k(800, absolute=True), mib_graph.greedy(781, absolute=True)):
        assert torch.equal(cut.in_graph, mib_graph.in_graph)
        assert torch.equal(cut.node_in_graph, mib_graph.node_in_graph)
        assert (cut.n_edges, cut.n_nodes) == (756, 81)


def test_selection_ranks_every_edge(mib_graph):
    # a loaded circuit holds 756 edges, but selection ranks all 32,491 scores (as MIB's apply_topn)
    assert mib_graph.top_k(2000, absolute=True).n_edges > 756


def test_node_level():
    s = GraphStructure(n_layers=1, n_heads=2)
    node_scores = torch.tensor([float("nan"), 5.0, -1.0, 2.0, float("nan")])  # input, a0.h0, a0.h1, m0, logits
    g = Graph(s, node_scores=node_scores)
    top = g.top_k(1, level="node")  # a0.h0 (+ unscored input, logits)
    assert set(top.edges) == {"input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>", "a0.h0->logits",
                              "input->logits"}
    assert set(g.top_k(1, absolute=True, level="node").nodes) == {"input", "a0.h0", "logits"}
    assert set(g.threshold(2.0, level="node").nodes) == {"input", "a0.h0", "m0", "logits"}
    with pytest.raises(ValueError, match="node scores"):
        Graph.full(s).top_k(1, level="node")


def test_empty_after_pruning_warns():
    s = GraphStructure(n_layers=2, n_heads=1)
    g = Graph.full(s)
    g.set_scores({"a0.h0->a1.h0<q>": 1.0})
    with pytest.warns(UserWarning, match="empty"):
        assert g.top_k(1).n_edges == 0
