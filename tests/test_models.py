"""Loading models, supported architectures and their graphs (issue 2, points 2 and 3)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import circuits
from circuits.graph.graph import Graph
from circuits.graph.io import GraphMismatchError
from circuits.models.architectures import UnsupportedArchitectureError
from circuits.models.loading import ModelNotFoundError
from circuits.models.random import random_config
from tests.conftest import tiny_model

MIB_FILE = Path(__file__).parent / "graph" / "data" / "ioi-eap-ig.json"


def meta_model(family: str, **shape) -> circuits.CircuitModel:
    """A model of a real shape on the meta device: its graph, with no memory spent on weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(random_config(family, **shape))
    return circuits.CircuitModel.from_hf(hf, name=f"meta:{family}")


def test_gpt2_small_graph_has_mibs_counts():
    model = circuits.load_model(meta_model("gpt2", n_layers=12, n_heads=12, d_model=768).hf)
    graph = model.graph
    assert (model.structure.n_nodes, model.structure.n_edges) == (158, 32491)
    assert graph.n_edges == 32491 and graph.n_nodes == 158


def test_gpt2_small_graph_names_equal_mibs_file():
    model = meta_model("gpt2", n_layers=12, n_heads=12, d_model=768)
    mib = Graph.load(MIB_FILE, model=model)
    assert list(model.structure.edge_names()) == list(mib.to_frame()["name"])
    assert [n.name for n in model.structure.nodes] == [n.name for n in mib.structure.nodes]


def test_qwen2_5_0_5b_graph_counts_every_query_heads_kv_inputs():
    model = meta_model("qwen2", n_layers=24, n_heads=14, n_kv_heads=2, d_model=896, d_mlp=4864)
    assert model.structure.n_kv_heads == 2
    assert model.structure.n_edges == 179749


def test_llama_3_1_8b_graph_count():
    model = meta_model("llama", n_layers=32, n_heads=32, n_kv_heads=8, d_model=4096, d_mlp=14336)
    assert model.structure.n_edges == 1592881


def test_gpt_neox_parallel_blocks_drop_head_to_own_mlp_edges():
    """Pythia computes attention and MLP from the same residual, so a head reaches only later layers."""
    par = meta_model("gpt_neox", n_layers=6, n_heads=8, d_model=512)
    seq = meta_model("gpt_neox", n_layers=6, n_heads=8, d_model=512, use_parallel_residual=False)
    L, H = 6, 8
    qkv = 3 * H * sum(1 + l * (H + 1) for l in range(L))
    logits = 1 + L * (H + 1)
    assert seq.structure.n_edges == qkv + sum(1 + l * (H + 1) + H for l in range(L)) + logits
    assert par.structure.n_edges == qkv + sum(1 + l * (H + 1) for l in range(L)) + logits == 3580
    assert seq.structure.n_edges - par.structure.n_edges == L * H
    with pytest.raises(KeyError, match="not written before"):
        par.structure.edge_index("a2.h3->m2")
    par.structure.edge_index("a2.h3->m3")
    seq.structure.edge_index("a2.h3->m2")


def test_to_networkx_follows_design(arch):
    model = tiny_model(arch)
    g = model.graph.to_networkx(circuit_only=False)
    assert g.nodes["a1.h2"]["kind"] == "head" and g.nodes["a1.h2"]["layer"] == 1 and g.nodes["a1.h2"]["head"] == 2
    assert g.nodes["a1.h2<k>"]["kind"] == "qkv" and g.has_edge("a1.h2<k>", "a1.h2")
    assert g.nodes["m0"]["kind"] == "mlp" and g.nodes["input"]["kind"] == "input"
    scored = [(u, v) for u, v, d in g.edges(data=True) if not d.get("structural")]
    assert len(scored) == model.structure.n_edges
    assert all("score" in g.edges[e] and "in_circuit" in g.edges[e] for e in scored)


def test_load_model_from_a_local_folder_and_from_a_loaded_model(tmp_path):
    model = tiny_model("llama")
    model.hf.save_pretrained(tmp_path / "llama")
    loaded = circuits.load_model(tmp_path / "llama", device="cpu")
    ids = torch.randint(0, 64, (2, 5))
    assert torch.allclose(loaded.logits(ids), model.hf(ids).logits, atol=1e-4)
    assert circuits.load_model(model.hf).structure == model.structure


def test_graph_from_another_model_is_refused(tmp_path):
    gpt2 = tiny_model("gpt2")
    path = gpt2.graph.save(tmp_path / "g.json")
    bigger = circuits.models.random.random_model("gpt2", n_layers=3, n_heads=4, d_model=32)
    with pytest.raises(GraphMismatchError, match="3 layers|n_layers"):
        Graph.load(path, model=bigger)
    neox = tiny_model("gpt_neox")  # same layers and heads, parallel blocks: a different graph
    with pytest.raises(GraphMismatchError):
        Graph.load(path, model=neox)
    assert Graph.load(path, model=gpt2).n_edges == gpt2.structure.n_edges


def test_unsupported_architecture_fails_at_once(tmp_path):
    from transformers import OPTConfig, OPTForCausalLM

    opt = OPTForCausalLM(OPTConfig(hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                                   vocab_size=50, max_position_embeddings=32, word_embed_proj_dim=16))
    with pytest.raises(UnsupportedArchitectureError, match="'opt' is not supported.*gpt2"):
        circuits.CircuitModel.from_hf(opt)
    opt.save_pretrained(tmp_path / "opt")
    with pytest.raises(UnsupportedArchitectureError, match="not supported"):
        circuits.load_model(tmp_path / "opt")


def test_missing_hub_model_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="huggingface-cli download"):
        circuits.load_model("EleutherAI/pythia-70m")
    assert time.perf_counter() - start < 30
    with pytest.raises(ModelNotFoundError, match="bundled"):
        circuits.load_model("zoo:does-not-exist")
    with pytest.raises(ModelNotFoundError, match="config.json"):
        circuits.load_model(tmp_path)


def test_model_follows_its_parameters_dtype():
    model = tiny_model("gpt2")
    ids = torch.randint(0, 64, (2, 5))
    model.to(torch.float64)
    assert model.logits(ids).dtype == torch.float64
    assert torch.allclose(model.logits(ids), model.hf(ids).logits, atol=1e-10)
