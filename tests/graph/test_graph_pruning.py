"""prune(): only edges on a path input -> ... -> logits survive."""

from __future__ import annotations

import time

import pytest
import torch

from circuits.graph import Graph, GraphStructure
from circuits.graph.pruning import node_mask, prune


def mask_of(s: GraphStructure, names: list[str]) -> torch.Tensor:
    m = torch.zeros(s.n_senders, s.n_receivers, dtype=torch.bool)
    for n in names:
        m[s.edge_index(n)] = True
    return m


def test_hand_built_example():
    s = GraphStructure(n_layers=2, n_heads=2)
    selected = [
        "input->a0.h0<q>",   # keep: input -> a0.h0 -> m0 -> logits
        "a0.h0->m0",         # keep
        "m0->logits",        # keep
        "a0.h1->a1.h0<k>",   # drop: nothing feeds a0.h1
        "a0.h0->a1.h0<q>",   # keep: a1.h0 is reached through its q input ...
        "a1.h0->logits",     # keep: ... so its output counts even though its k sender dangles
        "input->a1.h1<v>",   # drop: a1.h1 writes to nothing
        "m0->m1",            # drop: m1 writes to nothing
        "input->logits",     # keep
    ]
    g = Graph.from_edges(s, selected)
    assert g.n_edges == 9
    assert g.nodes == ("input", "a0.h0", "m0", "a1.h0", "logits")  # EAP-IG's rule: an edge in and out

    p = g.prune()
    assert set(p.edges) == {"input->a0.h0<q>", "a0.h0->m0", "m0->logits", "a0.h0->a1.h0<q>", "a1.h0->logits",
                            "input->logits"}
    assert p.nodes == ("input", "a0.h0", "m0", "a1.h0", "logits")
    assert p.n_edges == 6 and p.n_nodes == 5
    assert p.prune() == p  # idempotent
    assert g.n_edges == 9  # prune returns a copy


def test_chain_through_qkv_of_one_head():
    s = GraphStructure(n_layers=2, n_heads=1)
    # a1.h0 is fed only on k; a0.h0 only on v: a head is reached if any of its q/k/v is.
    p = Graph.from_edges(s, ["input->a0.h0<v>", "a0.h0->a1.h0<k>", "a1.h0->logits"]).prune()
    assert p.n_edges == 3
    # remove the first link: everything dangles
    assert Graph.from_edges(s, ["a0.h0->a1.h0<k>", "a1.h0->logits"]).prune().n_edges == 0


def test_parallel_blocks():
    s = GraphStructure(n_layers=2, n_heads=1, parallel_attn_mlp=True)
    p = Graph.from_edges(s, ["input->a0.h0<q>", "a0.h0->m1", "input->m0", "m0->logits", "m1->logits"]).prune()
    assert set(p.edges) == {"input->a0.h0<q>", "a0.h0->m1", "m1->logits", "input->m0", "m0->logits"}
    p = Graph.from_edges(s, ["input->a0.h0<q>", "a0.h0->m1", "m0->logits", "input->a1.h0<q>"]).prune()
    assert p.n_edges == 0


def mib_iterative_prune(s: GraphStructure, in_graph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MIB's Graph.prune, transcribed: drop nodes lacking an incoming or outgoing edge until nothing changes."""
    S, R = s.n_senders, s.n_receivers
    f2b = torch.zeros(S, R)
    f2b[s.receiver_node[:-1], torch.arange(R - 1)] = 1.0  # [S, R]: sender node -> its receivers
    E = in_graph.clone()
    nodes = torch.zeros(S, dtype=torch.bool)
    while True:
        out_ = E.any(1)
        in_ = (E.any(0).float() @ f2b.T) > 0
        in_[0] = True
        new = out_ & in_
        same = torch.equal(new, nodes)
        nodes = new
        recv = nodes.float() @ f2b
        recv[-1] = 1
        E &= (nodes[:, None] & (recv[None, :] > 0))
        if same:
            return E, torch.cat([nodes, torch.tensor([True])])


@pytest.mark.parametrize("shape", [(3, 2, False), (4, 3, True), (12, 12, False)])
@pytest.mark.parametrize("density", [0.003, 0.03, 0.3])
def test_matches_mib_iterative_prune(shape, density):
    n_layers, n_heads, parallel = shape
    s = GraphStructure(n_layers=n_layers, n_heads=n_heads, parallel_attn_mlp=parallel)
    gen = torch.Generator().manual_seed(n_layers * 100 + int(density * 1000))
    for _ in range(4 if n_layers < 12 else 2):
        m = (torch.rand(s.n_senders, s.n_receivers, generator=gen) < density) & s.edge_mask
        edges, nodes = prune(s, m)
        ref_edges, ref_nodes = mib_iterative_prune(s, m)
        assert torch.equal(edges, ref_edges)
        assert torch.equal(nodes, ref_nodes)
        assert torch.equal(node_mask(s, edges), nodes)  # derived node rule agrees on pruned graphs


def test_mib_circuit_is_already_pruned(mib_graph):
    edges, nodes = prune(mib_graph.structure, mib_graph.in_graph)
    assert torch.equal(edges, mib_graph.in_graph)
    assert torch.equal(nodes, mib_graph.node_in_graph)


def test_speed_gpt2_small():
    s = GraphStructure(n_layers=12, n_heads=12)
    m = (torch.rand(s.n_senders, s.n_receivers, generator=torch.Generator().manual_seed(0)) < 0.05) & s.edge_mask
    prune(s, m)  # warm caches
    t0 = time.perf_counter()
    prune(s, m)
    assert time.perf_counter() - t0 < 0.5
