"""Node and edge counts of the full graph for the model shapes the project targets (MIB's convention)."""

from __future__ import annotations

import pytest
import torch

from circuits.graph import Graph, GraphStructure


def expected_edges(n_layers: int, n_heads: int, parallel: bool) -> int:
    """Hand formula: layer l's heads read 1 + l(H+1) senders on each of q, k, v; its MLP reads the same plus,
    in sequential blocks, the layer's own H heads; logits read every sender."""
    H = n_heads
    total = 0
    for layer in range(n_layers):
        upstream = 1 + layer * (H + 1)
        total += 3 * H * upstream + upstream + (0 if parallel else H)
    return total + 1 + n_layers * (H + 1)


def test_gpt2_small():
    g = Graph.full(GraphStructure(n_layers=12, n_heads=12, d_model=768))
    assert (g.n_nodes, g.n_edges) == (158, 32_491)
    assert expected_edges(12, 12, False) == 32_491


def test_qwen25_05b_gqa():
    s = GraphStructure(n_layers=24, n_heads=14, n_kv_heads=2, d_model=896)
    g = Graph.full(s)
    assert g.n_edges == 179_749 == expected_edges(24, 14, False)
    assert g.n_nodes == 1 + 24 * 15 + 1
    assert s.cfg()["n_key_value_heads"] == 2


def test_llama_8b_shape():
    s = GraphStructure(n_layers=32, n_heads=32, n_kv_heads=8, d_model=4096)
    assert s.n_edges == 1_592_881 == expected_edges(32, 32, False)


def test_pythia_70m_parallel_blocks():
    s = GraphStructure(n_layers=6, n_heads=8, parallel_attn_mlp=True, d_model=512)
    g = Graph.full(s)
    assert g.n_edges == expected_edges(6, 8, True) == 3_580
    assert expected_edges(6, 8, False) - g.n_edges == 6 * 8  # heads do not feed their own layer's MLP
    assert "a0.h0->m1" in g and "a5.h7->logits" in g
    with pytest.raises(KeyError, match="not an edge"):
        g.score("a0.h0->m0")
    names = set(g.edge_scores())
    assert not any(f"a{layer}.h{h}->m{layer}" in names for layer in range(6) for h in range(8))


def test_full_and_empty():
    s = GraphStructure(n_layers=2, n_heads=2)
    assert Graph.empty(s).n_edges == 0
    assert Graph.empty(s).n_nodes == 1  # logits is always in the graph, as in MIB files
    full = Graph.full(s)
    assert torch.equal(full.in_graph, s.edge_mask)
    assert full.nodes == tuple(n.name for n in s.nodes)
