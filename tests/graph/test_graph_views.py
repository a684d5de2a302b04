"""The Graph container and its views: names, scores, pandas, networkx, repr."""

from __future__ import annotations

import doctest

import pytest
import torch

import circuits
from circuits.graph import Graph, GraphStructure


def test_public_names():
    assert circuits.Graph is Graph
    assert circuits.GraphStructure is GraphStructure


def test_doctests():
    import circuits.graph.graph as graph_mod
    import circuits.graph.pruning as pruning_mod
    import circuits.graph.structure as structure_mod

    for mod in (graph_mod, pruning_mod, structure_mod):
        result = doctest.testmod(mod)
        assert result.failed == 0, mod.__name__


def test_networkx_circuit(mib_graph):
    g = mib_graph.to_networkx()
    real = [(u, v, d) for u, v, d in g.edges(data=True) if not d["structural"]]
    structural = [(u, v, d) for u, v, d in g.edges(data=True) if d["structural"]]
    assert len(real) == 756 and all(d["in_circuit"] for *_, d in real)
    qkv_nodes = [n for n, d in g.nodes(data=True) if d["kind"] == "qkv"]
    assert len(structural) == len(qkv_nodes) > 0
    assert all(u.startswith(v) and u.endswith(">") and "score" not in d for u, v, d in structural)
    assert {n for n, d in g.nodes(data=True) if d["kind"] != "qkv"} == set(mib_graph.nodes)
    for u, v, d in real[:50]:
        assert d["score"] == mib_graph.score(f"{u}->{v}")
    assert g.graph["cfg"] == mib_graph.structure.cfg()


def test_networkx_full(mib_graph):
    g = mib_graph.to_networkx(circuit_only=False)
    kinds = {}
    for _, d in g.nodes(data=True):
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
    assert kinds == {"input": 1, "head": 144, "mlp": 12, "logits": 1, "qkv": 432}
    assert g.number_of_edges() == 32_491 + 432
    assert sum(d["in_circuit"] for *_, d in g.edges(data=True) if not d["structural"]) == 756
    assert g.nodes["a3.h2"] == {"kind": "head", "layer": 3, "head": 2,
                                "in_circuit": "a3.h2" in mib_graph}
    assert g.nodes["a3.h2<k>"]["kind"] == "qkv" and g.nodes["a3.h2<k>"]["qkv"] == "k"
    assert g.nodes["input"]["layer"] == -1 and g.nodes["logits"]["layer"] == 12
    assert g.nodes["m5"]["head"] == -1
    assert g.has_edge("a3.h2<k>", "a3.h2") and g.edges["a3.h2<k>", "a3.h2"]["structural"]
    assert g.edges["a5.h5", "m5"]["score"] == mib_graph.score("a5.h5->m5")


def test_networkx_node_scores():
    s = GraphStructure(n_layers=1, n_heads=1)
    g = Graph(s, node_scores=torch.arange(4.0)).to_networkx()
    assert [g.nodes[n]["score"] for n in ("input", "a0.h0", "m0", "logits")] == [0.0, 1.0, 2.0, 3.0]


def test_frame_and_names(mib_graph):
    df = mib_graph.to_frame()
    assert list(df.columns) == ["sender", "receiver", "name", "score", "in_graph"]
    assert len(df) == 32_491 and int(df["in_graph"].sum()) == 756
    assert df["name"].iloc[0] == "input->a0.h0<q>" and df["name"].iloc[-1] == "m11->logits"
    circuit = mib_graph.to_frame(circuit_only=True)
    assert tuple(circuit["name"]) == mib_graph.edges and len(circuit) == 756
    assert (circuit["sender"] + "->" + circuit["receiver"] == circuit["name"]).all()
    assert len(mib_graph.edge_scores(circuit_only=True)) == 756
    assert len(mib_graph.nodes) == 81 and mib_graph.nodes[0] == "input" and mib_graph.nodes[-1] == "logits"


def test_contains_and_score(mib_graph):
    name = mib_graph.edges[0]
    assert name in mib_graph and "input" in mib_graph
    assert 3 not in mib_graph
    assert mib_graph.score(name) == mib_graph.edge_scores()[name]
    with pytest.raises(KeyError, match="not an edge"):
        mib_graph.score("m5->a1.h0<q>")
    with pytest.raises(KeyError, match="no node scores"):
        mib_graph.score("a0.h1")


def test_set_scores():
    s = GraphStructure(n_layers=2, n_heads=2)
    g = Graph.full(s)
    dense = torch.randn(s.n_senders, s.n_receivers, dtype=torch.float64)
    g.set_scores(dense)
    assert g.scores.dtype == torch.float64
    assert torch.equal(g.scores[s.edge_mask], dense[s.edge_mask])
    assert not g.scores[~s.edge_mask].any()  # non-edges are 0, whatever was passed
    flat = torch.arange(s.n_edges, dtype=torch.float32)
    g.set_scores(flat)
    assert list(g.edge_scores().values()) == flat.tolist()  # flat vectors are in MIB order
    g.set_scores({"m1->logits": -2.5})
    assert g.score("m1->logits") == -2.5 and g.score("input->a0.h0<q>") == 0.0
    with pytest.raises(ValueError, match="shape"):
        g.set_scores(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="one entry per edge"):
        g.set_scores(torch.zeros(5))
    with pytest.raises(KeyError):
        g.set_scores({"m1->m0": 1.0})


def test_constructor_validates_and_copies():
    s = GraphStructure(n_layers=1, n_heads=1)
    scores = torch.ones(s.n_senders, s.n_receivers)
    g = Graph(s, scores=scores)
    scores[0, 0] = 5.0
    assert g.scores[0, 0] == 1.0  # no aliasing
    assert g.scores[~s.edge_mask].abs().sum() == 0
    with pytest.raises(TypeError, match="bool"):
        Graph(s, in_graph=torch.ones(s.n_senders, s.n_receivers))
    with pytest.raises(ValueError, match="shape"):
        Graph(s, node_scores=torch.zeros(3))
    c = g.copy()
    c.scores += 1
    c.metadata["x"] = 1
    assert g.scores.max() == 1.0 and "x" not in g.metadata
    assert g.to("cpu") == g


def test_repr(mib_graph):
    r = repr(mib_graph)
    assert "756 of 32,491 edges" in r and "81 of 158 nodes" in r and "12 layers x 12 heads" in r
    g = mib_graph.copy()
    g.metadata.update(method="eap-ig", task="ioi")
    assert "method='eap-ig'" in repr(g) and "task='ioi'" in repr(g)
