"""ACDC: batched search == the plain one-edge-at-a-time search; threshold semantics; checkpoint resume."""

from __future__ import annotations

import pytest
import torch

import circuits
from circuits.discovery import acdc as acdc_mod
from circuits.discovery.checkpoint import Checkpoint
from circuits.session import CircuitSession
from circuits.graph.graph import Graph
from circuits.graph.pruning import prune
from circuits.models.random import random_model
from circuits.tasks import task_vocabulary, word_level_tokenizer
from circuits.tasks.metrics import Metric
from tests.discovery.conftest import make_ctx


_ctx = make_ctx


@pytest.mark.parametrize("metric,threshold", [("kl", 0.003), ("task", 0.01)])
def test_batched_equals_one_at_a_time(setup, metric, threshold):
    ctx = _ctx(setup)
    s = ctx.model.structure
    scores, in_graph = acdc_mod.acdc(ctx, threshold=threshold, metric=metric, circuits_per_pass=8)
    batched = dict(ctx.extras["acdc"])
    ref_scores, ref_graph = acdc_mod.acdc(ctx, threshold=threshold, metric=metric, one_at_a_time=True)
    ref = dict(ctx.extras["acdc"])
    assert 0 < batched["n_kept"] < s.n_edges  # some but not all edges removed
    assert torch.equal(in_graph, ref_graph)
    assert batched["n_kept"] == ref["n_kept"] and batched["n_tested"] == ref["n_tested"]
    # the plain form runs full forwards, the batched one starts at the receiver's layer: rounding differs only
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=2e-6)
    # the same engine one circuit per pass: the same decisions; scores differ by rounding only (a node idle in
    # every circuit of a pass is skipped, and which nodes are idle depends on the pass's other circuits)
    one_scores, one_graph = acdc_mod.acdc(ctx, threshold=threshold, metric=metric, circuits_per_pass=1)
    assert torch.equal(one_graph, in_graph)
    torch.testing.assert_close(one_scores, scores, rtol=0, atol=2e-6)


@torch.no_grad()
def test_threshold_semantics_and_scores(setup):
    ctx = _ctx(setup)
    s = ctx.model.structure
    tau = 0.003
    scores, in_graph = acdc_mod.acdc(ctx, threshold=tau)
    info = ctx.extras["acdc"]
    # the returned circuit reproduces from its scores: threshold(tau) and top_k(edges kept before pruning)
    g = Graph(s, scores=scores, in_graph=in_graph)
    assert torch.equal(g.threshold(tau).in_graph, in_graph)
    assert torch.equal(g.top_k(info["n_kept"]).in_graph, in_graph)
    # kept edges scored >= tau, every other edge below
    assert bool((scores[in_graph] >= tau).all())
    # evaluate the circuit: KL to the full model equals ACDC's tracked objective; each removal added < tau
    kept = torch.zeros_like(in_graph)
    kept[scores >= tau] = True
    kept &= s.edge_mask
    kl = Metric("kl")
    total_kept, total_pruned = 0.0, 0.0
    for p in ctx.batches:
        full = ctx.model.logits(p.clean, p.attention_mask, logit_positions=p.positions)
        masks = torch.stack([kept, in_graph]).float()
        logits = ctx.model.patched_logits(p.clean, masks, ctx.ablated(p), attention_mask=p.attention_mask,
                                          logit_positions=p.positions)
        total_kept += float(kl(logits[0], p.readout, full).sum())
        total_pruned += float(kl(logits[1], p.readout, full).sum())
    kl_kept, kl_pruned = total_kept / ctx.n_examples, total_pruned / ctx.n_examples
    assert abs(-info["final_objective"] - kl_kept) < 1e-5
    assert abs(kl_pruned - kl_kept) < 1e-5  # corrupted ablation: pruned-away edges carried their ablated value
    removed_tested = int(((scores < tau) & s.edge_mask & (scores > scores[s.edge_mask].min())).sum())
    assert kl_kept < tau * max(1, removed_tested) + 1e-6


def test_threshold_zero_keeps_every_edge_that_matters(setup):
    ctx = _ctx(setup)
    s = ctx.model.structure
    scores, in_graph = acdc_mod.acdc(ctx, threshold=0.0)
    kept = (scores >= 0) & s.edge_mask
    # an edge is only dropped at tau = 0 if removing it did not raise KL: the circuit's KL stays ~ 0
    assert -ctx.extras["acdc"]["final_objective"] < 1e-5
    # exact single-edge effects on the full model: every edge with a clear effect on its own is kept
    from circuits.discovery.exact import exact

    single = exact(ctx, circuits_per_pass=64)
    assert bool(kept[(single.abs() > 1e-3) & s.edge_mask].all())


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_other_ablations_run_and_agree(setup, ablation):
    ctx = _ctx(setup, ablation)
    scores, in_graph = acdc_mod.acdc(ctx, threshold=0.01, circuits_per_pass=8)
    ref_scores, ref_graph = acdc_mod.acdc(ctx, threshold=0.01, one_at_a_time=True)
    assert torch.equal(in_graph, ref_graph)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=2e-6)


def test_fast_forward_matches_patched_logits_across_architectures():
    tok = word_level_tokenizer(task_vocabulary())
    for family, extra in [("gpt_neox", {}), ("llama", {"n_kv_heads": 2}), ("gpt2", {})]:
        m = random_model(family, n_layers=2, n_heads=4, d_model=32, vocab_size=len(tok), tokenizer=tok, **extra)
        task = circuits.load_task("ioi", m, n=4, seed=0)
        ctx = CircuitSession(m, task, ablation="corrupted", batch_size=4)
        s = m.structure
        fast = acdc_mod.CandidateEvaluator(ctx, ctx.metric, fast=True)
        plain = acdc_mod.CandidateEvaluator(ctx, ctx.metric, fast=False)
        gen = torch.Generator().manual_seed(0)
        current = s.edge_mask.float()
        for r in [s.logits_receiver, s.mlp_receiver(1), s.qkv_receiver(1, 3, "k"), s.mlp_receiver(0), 0]:
            # ACDC's state: edges into receivers after r partly removed, r's own edges being tested
            cut = torch.rand(s.n_senders, s.n_receivers, generator=gen) < 0.4
            cut[:, :r + 1] = False
            current = current * ~cut
            masks = current[None].repeat(3, 1, 1)
            masks[torch.arange(3), torch.arange(3) % int(s.n_upstream[r]), r] = 0.0
            for ref in (current, None):  # the evaluator following the search, or held at the full model
                torch.testing.assert_close(fast.objective(masks, ref), plain.objective(masks), rtol=1e-4, atol=1e-5)
        # any batch of circuits, however far from the held reference (everything they change is recomputed)
        masks = (torch.rand(3, s.n_senders, s.n_receivers, generator=gen) < 0.6).float() * s.edge_mask
        torch.testing.assert_close(fast.objective(masks), plain.objective(masks), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_reference_depends_only_on_the_anchor(setup):
    """The evaluator's held outputs follow the search, and are the same bits whichever path led to the anchor
    (what makes a resumed search evaluate exactly what the uninterrupted one did)."""
    ctx = _ctx(setup)
    s = ctx.model.structure
    kl = acdc_mod.objective_metric(ctx, "kl")
    gen = torch.Generator().manual_seed(1)
    cut = (torch.rand(s.n_senders, s.n_receivers, generator=gen) < 0.5) & s.edge_mask
    late, r = s.mlp_receiver(1), s.qkv_receiver(1, 2, "v")
    halfway = s.edge_mask.float() * ~(cut & (torch.arange(s.n_receivers) > late))  # edges into the logits cut
    anchor = halfway * ~(cut & (torch.arange(s.n_receivers) > r))  # then the edges into m1 too
    masks = anchor[None].repeat(4, 1, 1)
    masks[torch.arange(4), torch.arange(4), r] = 0.0
    stepwise = acdc_mod.CandidateEvaluator(ctx, kl, fast=True)
    stepwise.objective(halfway[None], halfway)
    direct = acdc_mod.CandidateEvaluator(ctx, kl, fast=True)
    values = [e.objective(masks, anchor) for e in (stepwise, direct)]
    assert torch.equal(stepwise.reference, anchor) and torch.equal(direct.reference, anchor)
    for a, b in zip(stepwise.batches, direct.batches):
        assert torch.equal(a.outputs, b.outputs)
        assert not torch.equal(a.outputs, a.full_outputs)  # the reference really moved off the full model
    assert torch.equal(values[0], values[1])
    plain = acdc_mod.CandidateEvaluator(ctx, kl, fast=False)
    torch.testing.assert_close(values[0], plain.objective(masks), rtol=1e-4, atol=1e-6)


def test_checkpoint_resume_gives_the_same_result(setup, tmp_path, monkeypatch):
    ctx = _ctx(setup)
    full_scores, full_graph = acdc_mod.acdc(ctx, threshold=0.003)

    class Stop(Exception):
        pass

    def hook(done):
        if done == 12:
            raise Stop

    ckpt = Checkpoint(tmp_path / "acdc.pt", key="k")
    with pytest.raises(Stop):
        acdc_mod.acdc(ctx, threshold=0.003, checkpoint=ckpt, on_progress=hook)
    assert ckpt.load()["done"] == 12
    scores, in_graph = acdc_mod.acdc(ctx, threshold=0.003, checkpoint=Checkpoint(tmp_path / "acdc.pt", key="k"))
    assert torch.equal(scores, full_scores) and torch.equal(in_graph, full_graph)


def test_discover_returns_acdc_circuit(setup):
    m, task = setup
    g = circuits.discover(m, task, "acdc", threshold=0.003, batch_size=8)
    assert g.metadata["method"] == "acdc" and g.metadata["result"]["n_kept"] > 0
    assert torch.equal(g.threshold(0.003).in_graph, g.in_graph)
    assert 0 < g.n_edges < m.structure.n_edges
    with pytest.raises(circuits.discovery.DiscoveryError):
        circuits.discover(m, task, "acdc", metric="logit_diff", batch_size=8)


def test_max_receivers_and_untested_scores(setup):
    ctx = _ctx(setup)
    s = ctx.model.structure
    scores, in_graph = acdc_mod.acdc(ctx, threshold=0.003, max_receivers=3)
    # receivers not visited keep every edge, scored above every tested edge
    unvisited = s.edge_mask.clone()
    unvisited[:, s.n_receivers - 3:] = False
    assert bool((scores[unvisited] > scores[s.edge_mask & ~unvisited].max()).all())
    prune(s, in_graph)  # a valid circuit
