"""prune(): only edges on a path input -> ... -> logits survive."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

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


class _CountOps(TorchFunctionMode):
    """Counts the torch calls made from Python (functions and tensor methods): the cost model of ``prune``."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _ops(n_layers: int, n_heads: int, density: float) -> int:
    s = GraphStructure(n_layers=n_layers, n_heads=n_heads)
    m = (torch.rand(s.n_senders, s.n_receivers, generator=torch.Generator().manual_seed(0)) < density) & s.edge_mask
    prune(s, m)  # the structure's cached tensors are built outside the count
    with _CountOps() as mode:
        prune(s, m)
    return mode.calls


def test_cost_is_per_layer_not_per_edge():
    """Dense tensor ops, one sweep over layers each way: the number of torch calls is the same whatever the number
    of edges or heads, and grows linearly with the layers (a loop over edges, heads or nodes would multiply it)."""
    base = _ops(12, 12, 0.05)  # GPT-2 small's shape, 5% of the edges
    assert _ops(12, 12, 0.5) == base  # 10x the edges
    assert _ops(12, 24, 0.05) == base  # 2x the heads
    deeper = _ops(24, 12, 0.05)
    assert base < deeper <= 2 * base  # linear in layers (plus a constant)
    assert base < 40 * 12  # a few dozen ops per layer at most
