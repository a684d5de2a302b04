"""Exact and node patching on the incremental engine: the same numbers as the plain engine, fewer nodes computed."""

from __future__ import annotations

import pytest
import torch

import circuits
from circuits.discovery import discover
from circuits.discovery.checkpoint import CheckpointMismatchError
from circuits.discovery.exact import EdgeCuts, NodeCuts, cut_passes, single_cut_effects
from circuits.session import CircuitSession
from circuits.tasks import task_vocabulary, word_level_tokenizer
from tests.discovery.conftest import assert_exact_is_manual_patching, perturbed_random_model

# every supported family: sequential and parallel blocks, grouped-query attention
ARCHS = {
    "gpt2": {},
    "gpt_neox": {},
    "gpt_neox-sequential": {"use_parallel_residual": False},
    "llama": {"n_kv_heads": 2},
    "qwen2": {"n_kv_heads": 2},
}


@pytest.fixture(scope="module")
def tokenizer():
    return word_level_tokenizer(task_vocabulary())


def model_of(tokenizer, arch: str, seed: int = 0):
    return perturbed_random_model(tokenizer, arch.split("-")[0], 3, seed=seed, **ARCHS[arch])


@pytest.mark.parametrize("ablation", ["corrupted", "mean", "zero"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_incremental_equals_plain_engine(tokenizer, arch, ablation):
    model = model_of(tokenizer, arch)
    task = circuits.load_task("ioi", model, n=10, seed=1)
    kw = dict(ablation=ablation, split="all", batch_size=6, circuits_per_pass=9)  # two batches, uneven passes
    fast = discover(model, task, "exact", **kw).scores
    plain = discover(model, task, "exact", incremental=False, **kw).scores
    assert float(plain.abs().max()) > 1e-3, "the edges matter on this model"
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-6)
    fast_nodes = discover(model, task, "node-patching", **kw).node_scores
    plain_nodes = discover(model, task, "node-patching", incremental=False, **kw).node_scores
    torch.testing.assert_close(fast_nodes, plain_nodes, rtol=0, atol=1e-6, equal_nan=True)


def test_incremental_equals_manual_patching(tokenizer):
    """Against the definition, not the other engine: full metric minus the metric with one edge cut."""
    model = model_of(tokenizer, "llama")
    task = circuits.load_task("ioi", model, n=8, seed=3)
    scores = discover(model, task, "exact", split="all", circuits_per_pass=5).scores
    assert_exact_is_manual_patching(model, task, scores, ["input->a0.h1<q>", "a0.h2->a2.h3<k>", "a1.h0->a2.h1<v>",
                                                          "m0->logits", "a2.h0->m2", "input->logits", "m1->m2"])


def test_passes_recompute_only_what_a_cut_changes(tokenizer):
    """Cuts share a pass only when they change the same nodes; a logits edge recomputes no node."""
    model = model_of(tokenizer, "gpt2")
    s = model.structure
    cuts = EdgeCuts(s)
    plan = cut_passes(cuts, 1000)
    assert sorted(torch.cat(plan).tolist()) == list(range(s.n_edges)), "every edge exactly once"
    receiver_nodes = s.receiver_node[s.edge_order[:, 1]]
    assert len(plan) == len(torch.unique(receiver_nodes)), "one pass per receiver node when passes are wide"
    for idx in plan:
        assert len(torch.unique(receiver_nodes[idx])) == 1
    # what the runs compute: count the nodes through the strategy the session builds
    task = circuits.load_task("ioi", model, n=4, seed=0)
    session = CircuitSession(model, task, split="all", batch_size=4)
    batch = session.batches[0]
    logits_edges = (s.edge_order[:, 1] == s.logits_receiver).nonzero().flatten()
    run = session.incremental(batch, (~cuts[logits_edges]).double())
    session.run(batch, run)
    assert not run.computed.any(), "an edge into the logits recomputes no sender"
    last_head = s.head_sender(s.n_layers - 1, 2)
    into_head = (receiver_nodes == last_head).nonzero().flatten()
    run = session.incremental(batch, (~cuts[into_head]).double())
    session.run(batch, run)
    assert run.computed.nonzero().flatten().tolist() == [last_head, s.mlp_sender(s.n_layers - 1)]
    node_plan = cut_passes(NodeCuts(s), 1000)
    assert len(node_plan) == 1 + 2 * s.n_layers  # the input; per layer its heads (one set of descendants), its MLP


def test_incremental_resume_is_bit_exact(tokenizer, tmp_path, interrupt_after_saves):
    from circuits.discovery.checkpoint import Checkpoint

    model = model_of(tokenizer, "gpt2")
    task = circuits.load_task("ioi", model, n=8, seed=4)
    session = lambda: CircuitSession(model, task, split="all", batch_size=4)  # noqa: E731
    reference = single_cut_effects(session(), EdgeCuts(model.structure), circuits_per_pass=6)
    ckpt_path = tmp_path / "exact.ckpt"
    interrupt_after_saves(7)
    with pytest.raises(KeyboardInterrupt):
        single_cut_effects(session(), EdgeCuts(model.structure), circuits_per_pass=6,
                           checkpoint=Checkpoint(ckpt_path, "k"))
    interrupt_after_saves(None)
    state = torch.load(ckpt_path, weights_only=False)
    assert 0 < state["next_unit"] < 2 * len(cut_passes(EdgeCuts(model.structure), 6))  # 2 batches x the passes
    with pytest.raises(CheckpointMismatchError, match="other batches"):  # a budget that cuts the batches otherwise
        single_cut_effects(CircuitSession(model, task, split="all", batch_size=4, examples_per_pass=2),
                           EdgeCuts(model.structure), circuits_per_pass=6, checkpoint=Checkpoint(ckpt_path, "k"))
    resumed = single_cut_effects(session(), EdgeCuts(model.structure), circuits_per_pass=6,
                                 checkpoint=Checkpoint(ckpt_path, "k"))
    assert torch.equal(resumed, reference)


def test_incremental_runs_hold_one_batch_at_a_time(tokenizer):
    """Exact patching finishes a batch (every pass of its plan) before the next, so each batch's clean run is
    recorded once and only the latest is held, however many batches: the memory of the held outputs does not
    grow with the examples."""
    model = model_of(tokenizer, "gpt2")
    session = CircuitSession(model, circuits.load_task("ioi", model, n=12, seed=4), split="all", batch_size=4)
    recorded = []
    held_full = session.held_full
    session.held_full = lambda b: (recorded.append(b.number), held_full(b))[1]  # type: ignore[method-assign]
    single_cut_effects(session, EdgeCuts(model.structure), circuits_per_pass=6)
    assert recorded == sorted(recorded) and sorted(set(recorded)) == [0, 1, 2]
    assert session._held is not None and session._held[0] == 2  # the last batch's, the others freed
