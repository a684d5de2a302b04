"""Position-aware graphs: ``[S, R, L]`` scores / in_graph, their summed view, selection, pruning and files."""

from __future__ import annotations

import json
import math

import pytest
import torch

import circuits
from circuits.graph.io import GraphFormatError, sidecar_path
from circuits.graph.selection import SelectionError, fraction_to_k, select

L = 3
E1 = "input->a0.h0<q>"  # first edge in MIB order
E2 = "a0.h0->logits"  # later in MIB order
UNFED = "a1.h1->logits"  # a1.h1 has no incoming circuit edge unless given one


@pytest.fixture
def st() -> circuits.GraphStructure:
    return circuits.GraphStructure(n_layers=2, n_heads=2)


def dense(st, values: dict[str, float], fill: float = 0.0) -> torch.Tensor:
    """``[S, R, L]`` scores: ``fill`` everywhere, ``values`` keyed by ``"S->R@p"``."""
    out = torch.full((st.n_senders, st.n_receivers, L), fill)
    for name, v in values.items():
        edge, _, p = name.rpartition("@")
        s, r = st.edge_index(edge)
        out[s, r, int(p)] = v
    return out


def flags(st, names: list[str]) -> torch.Tensor:
    out = torch.zeros(st.n_senders, st.n_receivers, L, dtype=torch.bool)
    for name in names:
        edge, _, p = name.rpartition("@")
        s, r = st.edge_index(edge)
        out[s, r, int(p)] = True
    return out


@pytest.fixture
def scored(st) -> circuits.Graph:
    scores = dense(st, {f"{E1}@2": 5.0, f"{E2}@0": 5.0, f"{E1}@0": 4.0, f"{E1}@1": 4.0, f"{E2}@1": -6.0,
                        f"{E2}@2": 1.0})
    return circuits.Graph(st, scores=scores, metadata={"method": "test"})


# ---- construction ---------------------------------------------------------------------------------------------------
def test_construction_and_defaults(st, scored):
    assert scored.n_positions == L
    assert circuits.Graph(st).n_positions is None
    assert scored.scores.shape == (st.n_senders, st.n_receivers, L) and scored.scores.dtype == torch.float32
    assert scored.n_edges == st.n_edges * L == 138  # the full graph: every edge at every position
    assert scored.in_graph.dtype == torch.bool
    # non-edges are stored as 0 and kept out of the circuit at every position
    g = circuits.Graph(st, scores=torch.ones(st.n_senders, st.n_receivers, L),
                       in_graph=torch.ones(st.n_senders, st.n_receivers, L, dtype=torch.bool))
    off = ~st.edge_mask
    assert not g.in_graph[off].any() and bool((g.scores[off] == 0).all()) and bool((g.scores[~off] == 1).all())
    only_flags = circuits.Graph(st, in_graph=flags(st, [f"{E1}@1"]))
    assert only_flags.n_positions == L and only_flags.scores.shape == (st.n_senders, st.n_receivers, L)
    assert only_flags.n_edges == 1
    ints = circuits.Graph(st, scores=torch.ones(st.n_senders, st.n_receivers, L, dtype=torch.int64))
    assert ints.scores.dtype == torch.float32
    empty = circuits.Graph.empty(st, scores=scored.scores)
    assert empty.n_positions == L and empty.n_edges == 0


def test_shape_errors(st):
    S, R = st.n_senders, st.n_receivers
    with pytest.raises(ValueError, match="same position axis"):
        circuits.Graph(st, scores=torch.zeros(S, R, L), in_graph=torch.ones(S, R, dtype=torch.bool))
    with pytest.raises(ValueError, match="same position axis"):
        circuits.Graph(st, scores=torch.zeros(S, R, L), in_graph=torch.ones(S, R, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"n_positions"):
        circuits.Graph(st, scores=torch.zeros(S, R + 1, L))
    with pytest.raises(ValueError, match=r"n_positions"):
        circuits.Graph(st, scores=torch.zeros(S, R, L, 2))
    with pytest.raises(ValueError, match="length 0"):
        circuits.Graph(st, scores=torch.zeros(S, R, 0))
    with pytest.raises(TypeError, match="bool"):
        circuits.Graph(st, in_graph=torch.ones(S, R, L))


# ---- views ----------------------------------------------------------------------------------------------------------
def test_summed(st, scored):
    g = circuits.Graph(st, scores=scored.scores, in_graph=flags(st, [f"{E1}@0", f"{E1}@2", f"{E2}@1"]),
                       metadata={"method": "test"})
    s = g.summed()
    assert s.n_positions is None
    assert s.scores.shape == (st.n_senders, st.n_receivers)
    assert s.score(E1) == 13.0 and s.score(E2) == 0.0 and s.score("input->m0") == 0.0
    assert torch.equal(s.scores, g.scores.sum(-1))
    assert s.edges == (E1, E2) and s.n_edges == 2
    assert s.metadata == {"method": "test", "summed_positions": L}
    assert g.metadata == {"method": "test"}  # not modified
    assert torch.equal(s.node_in_graph, g.node_in_graph)
    assert s.summed() == s  # position-free: a copy


def test_n_edges_names_and_score(st, scored):
    g = circuits.Graph(st, scores=scored.scores, in_graph=flags(st, [f"{E2}@2", f"{E1}@2", f"{E1}@0"]))
    assert g.n_edges == 3
    assert g.edges == (f"{E1}@0", f"{E1}@2", f"{E2}@2")  # MIB order, then position
    assert g.score(f"{E1}@2") == 5.0 and g.score(f"{E2}@1") == -6.0 and g.score(f"{E2}@0") == 5.0
    assert g.score(E1) == 13.0  # no position: the sum over positions (as summed())
    assert f"{E1}@2" in g and f"{E1}@1" not in g and E1 in g and E2 in g and "input->m0" not in g
    with pytest.raises(KeyError, match="out of range"):
        g.score(f"{E1}@3")
    with pytest.raises(KeyError, match="integer"):
        g.score(f"{E1}@x")
    with pytest.raises(KeyError, match="position-free"):
        circuits.Graph(st).score(f"{E1}@0")
    frame = g.to_frame()
    assert list(frame.columns) == ["sender", "receiver", "position", "name", "score", "in_graph"]
    assert len(frame) == st.n_edges * L
    assert list(frame["name"][:4]) == [f"{E1}@0", f"{E1}@1", f"{E1}@2", "input->a0.h0<k>@0"]
    assert list(frame["position"][:4]) == [0, 1, 2, 0]
    assert list(frame["score"][:3]) == [4.0, 4.0, 5.0]
    circuit = g.to_frame(circuit_only=True)
    assert list(circuit["name"]) == list(g.edges) and circuit["in_graph"].all()
    assert "position" not in circuits.Graph(st).to_frame().columns  # position-free frames are unchanged
    assert g.edge_scores(circuit_only=True) == {f"{E1}@0": 4.0, f"{E1}@2": 5.0, f"{E2}@2": 1.0}
    nxg = g.to_networkx()  # through the summed view
    assert set(nxg.edges) >= {("input", "a0.h0<q>"), ("a0.h0", "logits")}


def test_set_scores(st, scored):
    g = scored.copy()
    g.set_scores({f"{E1}@1": 7.0, E2: 2.0})
    assert g.score(f"{E1}@1") == 7.0 and g.score(f"{E1}@0") == 4.0
    assert [g.score(f"{E2}@{p}") for p in range(L)] == [2.0, 2.0, 2.0]
    g.set_scores(torch.ones(st.n_senders, st.n_receivers, L))
    assert g.score(f"{E1}@0") == 1.0 and float(g.scores[~st.edge_mask].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="n_positions"):
        g.set_scores(torch.ones(st.n_senders, st.n_receivers))


# ---- selection ------------------------------------------------------------------------------------------------------
def test_top_k_orders_edge_positions_with_ties(scored):
    # 5.0 at E1@2 and E2@0: E1 is first in MIB order; 4.0 at E1@0 and E1@1: the lower position first
    assert scored.top_k(1, prune=False).edges == (f"{E1}@2",)
    assert scored.top_k(2, prune=False).edges == (f"{E1}@2", f"{E2}@0")
    assert scored.top_k(3, prune=False).edges == (f"{E1}@0", f"{E1}@2", f"{E2}@0")
    assert scored.top_k(4, prune=False).edges == (f"{E1}@0", f"{E1}@1", f"{E1}@2", f"{E2}@0")
    assert scored.top_k(5, prune=False).edges == (f"{E1}@0", f"{E1}@1", f"{E1}@2", f"{E2}@0", f"{E2}@2")
    assert scored.top_k(1, absolute=True, prune=False).edges == (f"{E2}@1",)  # |-6| first
    top = scored.top_k(2)  # E1 and E2 make input -> a0.h0 -> logits (at different positions): kept
    assert top.edges == (f"{E1}@2", f"{E2}@0") and top.n_positions == L
    assert top.metadata["selection"] == {"rule": "top_k", "k": 2, "absolute": False, "level": "edge",
                                         "pruned": True, "n_selected": 2}
    assert scored.top_k(0).n_edges == 0
    assert scored.top_k(138, prune=False).n_edges == 138
    with pytest.raises(SelectionError, match="edge-positions"):
        scored.top_k(139)


def test_top_fraction_counts_edge_positions(st, scored):
    assert fraction_to_k(st, 0.03) == 1 and fraction_to_k(st, 0.03, n_positions=L) == 4  # int(0.03 * 138)
    assert fraction_to_k(st, 1.0, L) == 138
    g = scored.top_fraction(0.03, prune=False)
    assert g.n_edges == 4 and g.edges == scored.top_k(4, prune=False).edges
    assert g.metadata["selection"]["k"] == 4 and g.metadata["selection"]["fraction"] == 0.03
    assert scored.top_fraction(1.0, prune=False).n_edges == 138
    with pytest.raises(SelectionError, match=r"\[0, 1\]"):
        scored.top_fraction(1.5)


def test_threshold(st, scored):
    g = scored.copy()
    g.set_scores({"input->m0@1": math.nan})
    assert g.threshold(4.0, prune=False).edges == (f"{E1}@0", f"{E1}@1", f"{E1}@2", f"{E2}@0")
    assert g.threshold(5.0, prune=False).edges == (f"{E1}@2", f"{E2}@0")
    assert g.threshold(6.0, absolute=True, prune=False).edges == (f"{E2}@1",)
    everything = g.threshold(-math.inf, prune=False)
    assert everything.n_edges == 137 and "input->m0@1" not in everything  # NaN never passes
    assert g.threshold(4.0).edges == (f"{E1}@0", f"{E1}@1", f"{E1}@2", f"{E2}@0")


def test_prune_drops_edge_positions_of_dangling_edges(st):
    kept = [f"{E1}@0", f"{E2}@1", f"{E2}@2"]  # input -> a0.h0 -> logits, across positions: conservative, kept
    dangling = [f"{UNFED}@2", "input->m1@0", "a0.h1->m0@1"]  # a1.h1 never fed; m1 / a0.h1 reach no logits
    g = circuits.Graph(st, in_graph=flags(st, kept + dangling))
    assert g.n_edges == 6
    pruned = g.prune()
    assert pruned.edges == tuple(kept) and pruned.n_positions == L
    assert pruned.nodes == ("input", "a0.h0", "logits")
    assert g.n_edges == 6  # not modified
    # selections prune the same way
    scores = dense(st, {f"{UNFED}@0": 9.0, f"{E1}@1": 8.0, f"{E2}@1": 7.0})
    top = circuits.Graph(st, scores=scores).top_k(3)
    assert top.edges == (f"{E1}@1", f"{E2}@1") and top.metadata["selection"]["n_selected"] == 3
    with pytest.warns(UserWarning, match="none lies on a path"):
        assert circuits.Graph(st, scores=scores).top_k(1).n_edges == 0


def test_unsupported_selections_raise(st, scored):
    g = scored.copy()
    g.node_scores = torch.arange(st.n_nodes, dtype=torch.float32)
    g.metadata["sign_agreement"] = {"values": [1.0] * st.n_edges}
    match = "not defined for position-aware graphs; use graph.summed()"
    for call in (lambda: g.greedy(2), lambda: g.sign_consistent(2), lambda: g.ratio(2),
                 lambda: g.top_k(2, level="node"), lambda: g.top_k(2, level="neuron"),
                 lambda: g.top_fraction(0.5, level="node"), lambda: g.threshold(0.0, level="node"),
                 lambda: select(g, "greedy", 2), lambda: select(g, "ratio:0.5", 2)):
        with pytest.raises(SelectionError, match=match.replace("(", r"\(").replace(")", r"\)")):
            call()
    assert g.summed().greedy(1, prune=False).n_edges == 1  # the summed view supports them
    assert select(g, "top_k", 2).edges == scored.top_k(2).edges


# ---- files ----------------------------------------------------------------------------------------------------------
def _same_tensors(a: circuits.Graph, b: circuits.Graph) -> None:
    assert a.n_positions == b.n_positions
    assert a.scores.dtype == b.scores.dtype
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0, equal_nan=True)  # bit-exact, NaN included
    assert torch.equal(a.in_graph, b.in_graph) and torch.equal(a.node_in_graph, b.node_in_graph)


def test_pt_round_trip(tmp_path, scored):
    g = scored.top_k(2, prune=False)
    g.set_scores({f"{E1}@1": math.nan, "input->m0@2": 0.1})
    path = g.save(tmp_path / "g.pt")
    back = circuits.Graph.load(path)
    _same_tensors(back, g)
    assert back == g and back.metadata == g.metadata
    raw = torch.load(path, weights_only=True)
    assert raw["n_positions"] == L and raw["scores"].shape == (g.structure.n_senders, g.structure.n_receivers, L)
    plain = circuits.Graph.load(circuits.Graph(g.structure).save(tmp_path / "plain.pt"))
    assert plain.n_positions is None


def test_json_round_trip_with_sidecar(tmp_path, scored):
    g = scored.top_k(3, prune=False)
    g.set_scores({"input->m0@2": 0.1, "a0.h1->m1@0": -1e-7})
    path = g.save(tmp_path / "x.json")
    side = tmp_path / "x.positions.pt"
    assert sidecar_path(path) == side and side.exists()
    # the JSON is MIB's format holding the summed view
    doc = json.loads(path.read_text())
    assert set(doc) == {"cfg", "nodes", "edges", "metadata"}
    assert len(doc["edges"]) == g.structure.n_edges
    assert doc["edges"][E1] == {"score": 13.0, "in_graph": True}
    assert doc["edges"][E2]["score"] == 0.0 and doc["edges"][E2]["in_graph"] is True
    assert doc["metadata"]["summed_positions"] == L
    back = circuits.Graph.load(path)
    _same_tensors(back, g)
    assert back.metadata == {**g.metadata, "positions_sidecar": "x.positions.pt"}
    # without the sidecar: the summed graph
    side.unlink()
    summed = circuits.Graph.load(path)
    assert summed.n_positions is None and summed == g.summed()
    g.save(tmp_path / "y.json")
    with pytest.raises(GraphFormatError, match="sidecar"):  # the sidecar is no graph file of its own
        circuits.Graph.load(tmp_path / "y.positions.pt")


def test_json_with_a_stale_sidecar_loads_the_summed_graph(tmp_path, scored):
    from circuits.graph.io import to_mib_dict

    scored.save(tmp_path / "x.json")
    other = scored.top_k(2, prune=False).summed()
    (tmp_path / "x.json").write_text(json.dumps(to_mib_dict(other)))  # rewritten by another tool
    with pytest.warns(UserWarning, match="does not match"):
        back = circuits.Graph.load(tmp_path / "x.json")
    assert back == other
    other.save(tmp_path / "x.json")  # saving a position-free graph removes the old sidecar
    assert not (tmp_path / "x.positions.pt").exists()
    assert circuits.Graph.load(tmp_path / "x.json") == other


def test_graphml_refuses_position_aware_graphs(tmp_path, scored):
    with pytest.raises(GraphFormatError, match=r"\.pt.*\.json"):
        scored.save(tmp_path / "g.graphml")
    assert not (tmp_path / "g.graphml").exists()
    scored.summed().save(tmp_path / "s.graphml")  # the summed view is fine


# ---- equality and display -------------------------------------------------------------------------------------------
def test_equality_copy_to_repr(st, scored):
    assert scored == scored.copy() and scored == scored.to("cpu")
    assert scored.copy().n_positions == L and scored.to("cpu").n_positions == L
    changed = scored.copy()
    changed.set_scores({f"{E1}@0": 4.5})
    assert scored != changed
    assert scored != circuits.Graph(st, scores=scored.scores[..., :2], metadata={"method": "test"})
    assert scored.summed() != scored
    flat = circuits.Graph(st, scores=scored.scores.sum(-1), metadata={"method": "test"})
    single = circuits.Graph(st, scores=scored.scores.sum(-1, keepdim=True), metadata={"method": "test"})
    assert flat != single  # [S, R] vs [S, R, 1]: different graphs
    text = repr(scored.top_k(2))
    assert "3 positions" in text and "2 of 138 edge-positions" in text and "2 of 46 edges" in text
