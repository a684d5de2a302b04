"""Graph files: MIB JSON both ways (exact), GraphML and .pt round trips, mismatch and format errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from circuits.graph import Graph, GraphFormatError, GraphMismatchError, GraphStructure


def random_graph(structure: GraphStructure, seed: int = 0, node_scores: bool = True) -> Graph:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(structure.n_senders, structure.n_receivers, generator=gen)  # float32
    ns = torch.randn(structure.n_nodes, generator=gen) if node_scores else None
    g = Graph(structure, scores=scores, node_scores=ns,
              metadata={"method": "eap-ig", "params": {"steps": 5}, "task": "ioi", "n_examples": 200,
                        "wall_time_s": 1.25, "circuits_version": "0.1.0", "model": "gpt2"})
    return g.top_k(500, absolute=True)


# ---- MIB's file --------------------------------------------------------------------------------------------------
def test_mib_file_loads_exactly(mib_graph, mib_doc):
    s = mib_graph.structure
    assert s.cfg() == mib_doc["cfg"] == {"n_layers": 12, "n_heads": 12, "parallel_attn_mlp": False, "d_model": 768}
    assert [n.name for n in s.nodes] == list(mib_doc["nodes"])  # all 158 names, in order
    assert list(s.edge_names()) == list(mib_doc["edges"])  # all 32,491 names, in order
    scores = mib_graph.edge_scores()
    assert scores == {k: v["score"] for k, v in mib_doc["edges"].items()}  # float equality, every edge
    frame = mib_graph.to_frame()
    assert frame["in_graph"].tolist() == [v["in_graph"] for v in mib_doc["edges"].values()]
    assert mib_graph.node_in_graph.tolist() == [v["in_graph"] for v in mib_doc["nodes"].values()]
    assert (mib_graph.n_edges, mib_graph.n_nodes) == (756, 81)
    assert mib_graph.scores.dtype == torch.float64
    assert mib_graph.metadata == {}


def test_mib_file_writes_back_identically(mib_graph, mib_doc, tmp_path):
    path = mib_graph.save(tmp_path / "ioi.json")
    with open(path) as f:
        written = json.load(f)
    assert written == mib_doc  # cfg, nodes, edges; no metadata key when there is none
    assert list(written["edges"]) == list(mib_doc["edges"])
    # and with metadata, MIB's keys are untouched
    g = mib_graph.copy()
    g.metadata["method"] = "eap-ig"
    with open(g.save(tmp_path / "ioi-meta.json")) as f:
        written = json.load(f)
    assert {k: written[k] for k in ("cfg", "nodes", "edges")} == mib_doc
    assert written["metadata"] == {"method": "eap-ig"}
    assert Graph.load(tmp_path / "ioi-meta.json") == g


def test_eap_ig_old_node_format(mib_doc, tmp_path):
    doc = dict(mib_doc, nodes={k: v["in_graph"] for k, v in mib_doc["nodes"].items()})  # {name: bool}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(doc))
    g = Graph.load(path)
    assert g.n_nodes == 81 and g.n_edges == 756


# ---- our own files -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".json", ".graphml", ".pt"])
def test_round_trip(tmp_path, suffix):
    s = GraphStructure(n_layers=6, n_heads=4, d_model=64)
    g = random_graph(s)
    assert g.node_scores is not None and 0 < g.n_edges < 500
    back = Graph.load(g.save(tmp_path / f"g{suffix}"))
    assert back == g  # every score exactly (float32 -> float64 is exact), flags, node scores, metadata
    assert back.structure.cfg() == s.cfg()
    assert back.edges == g.edges


@pytest.mark.parametrize("suffix", [".json", ".graphml", ".pt"])
def test_round_trip_mib_graph(mib_graph, tmp_path, suffix):
    back = Graph.load(mib_graph.save(tmp_path / f"g{suffix}"))
    assert back == mib_graph
    assert torch.equal(back.scores, mib_graph.scores)  # float64 bit-exact


def test_round_trip_float64_and_nan(tmp_path):
    s = GraphStructure(n_layers=2, n_heads=2, n_kv_heads=1)
    scores = torch.randn(s.n_senders, s.n_receivers, dtype=torch.float64) / 3  # not float32-representable
    g = Graph.full(s, scores=scores)
    g.set_scores({"input->logits": math.nan})
    for suffix in (".json", ".graphml", ".pt"):
        back = Graph.load(g.save(tmp_path / f"g{suffix}"))
        assert back == g
        assert math.isnan(back.score("input->logits"))
        assert back.structure.n_kv_heads == 1
    with open(tmp_path / "g.json") as f:
        assert json.load(f)["cfg"]["n_key_value_heads"] == 1


def test_parallel_round_trip(tmp_path):
    s = GraphStructure(n_layers=6, n_heads=8, parallel_attn_mlp=True, d_model=512)
    g = random_graph(s, node_scores=False)
    back = Graph.load(g.save(tmp_path / "pythia.json"))
    assert back == g and back.structure.parallel_attn_mlp


def test_unpruned_explicit_nodes_survive(tmp_path):
    s = GraphStructure(n_layers=3, n_heads=2)
    g = Graph(s, in_graph=torch.zeros(s.n_senders, s.n_receivers, dtype=torch.bool),
              node_in_graph=torch.ones(s.n_nodes, dtype=torch.bool))
    for suffix in (".json", ".graphml", ".pt"):
        back = Graph.load(g.save(tmp_path / f"g{suffix}"))
        assert back.n_nodes == s.n_nodes and back.n_edges == 0


# ---- loading with a model ----------------------------------------------------------------------------------------
def test_load_with_matching_model(mib_file, fake_model):
    model = fake_model(GraphStructure(n_layers=12, n_heads=12, d_model=768), "gpt2")
    g = Graph.load(mib_file, model=model)
    assert g.structure is model.structure
    assert g.n_edges == 756


@pytest.mark.parametrize("structure, differs", [
    (GraphStructure(n_layers=24, n_heads=14, n_kv_heads=2, d_model=896), "n_layers 12 vs 24"),
    (GraphStructure(n_layers=12, n_heads=12, d_model=1024), "d_model 768 vs 1024"),
    (GraphStructure(n_layers=12, n_heads=12, parallel_attn_mlp=True), "parallel_attn_mlp False vs True"),
])
def test_mismatch(mib_file, fake_model, structure, differs):
    model = fake_model(structure, "Qwen/Qwen2.5-0.5B")
    with pytest.raises(GraphMismatchError) as err:
        Graph.load(mib_file, model=model)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert str(mib_file) in msg and "12 layers x 12 heads" in msg and structure.describe() in msg
    assert differs in msg and "Qwen/Qwen2.5-0.5B" in msg
    assert "load it with the model it was discovered on" in msg


@pytest.mark.parametrize("suffix", [".graphml", ".pt"])
def test_mismatch_other_formats(tmp_path, fake_model, suffix):
    path = Graph.full(GraphStructure(n_layers=2, n_heads=2, d_model=8)).save(tmp_path / f"g{suffix}")
    with pytest.raises(GraphMismatchError, match="2 layers x 2 heads.*'tiny' has 3 layers x 2 heads"):
        Graph.load(path, model=fake_model(GraphStructure(n_layers=3, n_heads=2, d_model=8), "tiny"))
    assert Graph.load(path, model=fake_model(GraphStructure(n_layers=2, n_heads=2), "tiny")).n_edges > 0


def test_mismatch_kv_heads_only_when_recorded(tmp_path, fake_model):
    file_s = GraphStructure(n_layers=2, n_heads=4, n_kv_heads=2)
    path = Graph.full(file_s).save(tmp_path / "g.json")
    with pytest.raises(GraphMismatchError, match="n_key_value_heads 2 vs 4"):
        Graph.load(path, model=fake_model(GraphStructure(n_layers=2, n_heads=4), "m"))
    # MIB files do not record kv heads: then any kv layout of the same shape loads
    doc = json.loads(path.read_text())
    del doc["cfg"]["n_key_value_heads"]
    path.write_text(json.dumps(doc))
    assert Graph.load(path, model=fake_model(GraphStructure(n_layers=2, n_heads=4, n_kv_heads=1), "m")).n_edges


# ---- errors ------------------------------------------------------------------------------------------------------
def test_malformed_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"cfg": {')
    with pytest.raises(GraphFormatError, match="bad.json: not valid JSON"):
        Graph.load(path)


def test_missing_cfg_key(mib_doc, tmp_path):
    doc = dict(mib_doc, cfg={"n_layers": 12, "parallel_attn_mlp": False})
    path = tmp_path / "nocfg.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(GraphFormatError, match=r"nocfg.json: cfg has no 'n_heads'"):
        Graph.load(path)
    path.write_text(json.dumps({"nodes": {}, "edges": {}}))
    with pytest.raises(GraphFormatError, match="no 'cfg' key"):
        Graph.load(path)


def test_unknown_edge(tmp_path):
    s = GraphStructure(n_layers=1, n_heads=1)
    doc = {"cfg": s.cfg(), "edges": {"a0.h0->a0.h0<q>": {"score": 1.0, "in_graph": True}}}
    path = tmp_path / "edge.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(GraphFormatError, match=r"edge.json: edges\['a0.h0->a0.h0<q>'\]"):
        Graph.load(path)
    doc["edges"] = {"a7.h0->logits": {"score": 1.0, "in_graph": True}}
    path.write_text(json.dumps(doc))
    with pytest.raises(GraphFormatError, match="a7.h0"):
        Graph.load(path)
    doc["edges"] = {"input->logits": {"score": "high", "in_graph": True}}
    path.write_text(json.dumps(doc))
    with pytest.raises(GraphFormatError, match=r"\['score'\] must be a number"):
        Graph.load(path)


def test_partial_edges_warn_and_load_unscored(tmp_path):
    s = GraphStructure(n_layers=1, n_heads=1)
    doc = {"cfg": s.cfg(), "edges": {"input->logits": {"score": 2.0, "in_graph": True}}}
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="missing"):
        g = Graph.load(path)
    assert g.edges == ("input->logits",) and g.score("input->logits") == 2.0
    assert math.isnan(g.score("m0->logits"))


def test_bad_suffix_and_missing_file(tmp_path, gpt2):
    with pytest.raises(ValueError, match="unknown graph file type '.txt'"):
        Graph.full(gpt2).save(tmp_path / "g.txt")
    with pytest.raises(FileNotFoundError):
        Graph.load(tmp_path / "nope.json")


def test_metadata_must_be_json(tmp_path, gpt2):
    g = Graph.full(gpt2, metadata={"fn": print})
    with pytest.raises(TypeError, match="JSON-serializable"):
        g.save(tmp_path / "g.json")
    assert not (tmp_path / "g.json").exists()
