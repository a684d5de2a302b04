"""The published circuits: counts, every node and edge present in a model of the right shape, files up to date."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import circuits
from circuits.evaluation import evaluate, list_published, published_circuit
from circuits.evaluation.published import PUBLISHED, SOURCE, published_path
from circuits.graph.io import GraphMismatchError
from circuits.models.random import random_model

COUNTS = {"ioi": 963, "greater-than": 235, "docstring": 24, "induction": 0}
REPO_GRAPHS = Path(__file__).resolve().parents[2] / "graphs" / "published"
HEADS = {"ioi": 26, "greater-than": 9, "docstring": 6, "induction": 3}


@pytest.fixture(scope="module")
def gpt2_shaped():
    """GPT-2 small's graph shape (12 x 12, d_model 768) with a tiny vocabulary: random weights."""
    return random_model("gpt2", n_layers=12, n_heads=12, d_model=768, vocab_size=64, n_ctx=16)


def attn_only(n_layers: int, n_heads: int):
    from circuits.models import attn_only as mod  # part of the package: a failed import is a failure
    cfg = mod.AttnOnlyConfig(vocab_size=32, n_layer=n_layers, n_head=n_heads, d_model=8 * n_heads, n_ctx=16)
    torch.manual_seed(0)
    return circuits.CircuitModel.from_hf(mod.AttnOnlyForCausalLM(cfg), name=f"random attn-only {n_layers}l")


def check_against(model, name):
    graph = published_circuit(name, model=model)
    assert graph.structure is model.structure
    source = json.loads(SOURCE.read_text())[PUBLISHED[name]["key"]]
    names = set(model.structure.edge_names())
    if source["edges"] is not None:
        edges = [f"{s}->{r}" for s, r in source["edges"]]
        assert all(e in names for e in edges)  # every published edge exists in this model's graph
        assert set(graph.edges) == set(edges)
    assert graph.n_edges == COUNTS[name]
    nodes = {n.name for n in model.structure.nodes}
    listed = {h for group in source["nodes"].values() for h in group}
    assert listed <= nodes and listed <= set(graph.nodes)  # every published node exists and is in the circuit
    heads = [n for n in graph.nodes if n.startswith("a")]
    assert len(heads) == HEADS[name]
    return graph


@pytest.mark.parametrize("name", ["ioi", "greater-than"])
def test_gpt2_circuits_exist_in_a_gpt2_small_shaped_model(gpt2_shaped, name):
    graph = check_against(gpt2_shaped, name)
    assert graph.prune().n_edges == graph.n_edges  # every published edge lies on an input -> logits path
    assert graph.top_k(graph.n_edges, prune=False).edges == graph.edges  # scores 1 on the circuit, 0 elsewhere


def test_attention_only_circuits_exist_in_models_of_their_shape():
    docstring = check_against(attn_only(4, 8), "docstring")
    assert docstring.structure.n_edges == 1281  # ACDC's 1,377 minus 32 heads x 3 internal q/k/v edges
    induction = check_against(attn_only(2, 8), "induction")
    assert set(induction.nodes) == {"input", "a0.h0", "a1.h5", "a1.h6", "logits"}
    assert induction.structure.n_edges == 257  # ACDC's 305 minus 16 x 3


def test_files_on_disk_equal_a_fresh_build():
    for name in PUBLISHED:
        path = published_path(name, REPO_GRAPHS)
        assert path.exists(), f"{path} missing: regenerate with circuits.evaluation.write_published()"
        assert circuits.Graph.load(path) == published_circuit(name), f"{path} is stale: run write_published()"


def test_wrong_model_shape_and_unknown_names(gpt2_shaped):
    with pytest.raises(GraphMismatchError, match="published circuit 'docstring'"):
        published_circuit("docstring", model=gpt2_shaped)
    with pytest.raises(KeyError, match="available"):
        published_circuit("addition")
    assert published_circuit("GT").metadata["name"] == "greater-than"
    frame = list_published()
    assert list(frame["name"]) == list(PUBLISHED) and list(frame["edges"]) == list(COUNTS.values())


def test_node_level_published_circuit_evaluates_at_node_level():
    from .conftest import tiny_task

    model = attn_only(2, 8)
    task = tiny_task(vocab=32)
    circuit = published_circuit("induction", model=model)
    result = evaluate(model, task, circuit, level="node")
    # input, a0.h0, a1.h5, a1.h6, logits: the edges among them (q/k/v of 3 heads from the nodes before them)
    assert result.n_edges == 3 + 2 * 3 * 2 + 3 + 1 and result.n_nodes == 5
