"""EAP, EAP-IG, exact and node methods: identities that would fail on a wrong formula or sign (issue 11)."""

from __future__ import annotations

import pytest
import torch

import circuits
from circuits.discovery import METHODS, DiscoveryError, discover
from circuits.session import CircuitSession
from circuits.tasks import task_vocabulary, word_level_tokenizer
from tests.discovery.conftest import assert_exact_is_manual_patching, perturbed_random_model

ARCHS = {"gpt2": {}, "gpt_neox": {}, "llama": {"n_kv_heads": 2}}


@pytest.fixture(scope="module")
def tokenizer():
    return word_level_tokenizer(task_vocabulary())


def small_model(tokenizer, arch="gpt2", dtype=torch.float64, seed=0):
    return perturbed_random_model(tokenizer, arch, 2, dtype=dtype, seed=seed, **ARCHS[arch])


def mask_gradient(model, task, metric_sign=1.0):
    """dM/dm at m = 1 by autograd through the patched forward, averaged over pairs (the definition of EAP)."""
    s = model.structure
    total = torch.zeros(s.n_senders, s.n_receivers, dtype=torch.float64)
    for batch in task.batches(8):
        ablated = circuits.interventions.ablation.ablated_outputs(model, "corrupted", batch.clean,
                                                                  batch.attention_mask, corrupted_ids=batch.corrupted)
        masks = torch.ones(s.n_senders, s.n_receivers, dtype=torch.float64, requires_grad=True)
        logits = model.patched_logits(batch.clean, masks, ablated, attention_mask=batch.attention_mask)
        (metric_sign * task.base_metric(logits, batch)).sum().backward()
        total += masks.grad
    return (total / len(task)).masked_fill(~s.edge_mask, 0)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_eap_equals_mask_gradient_at_one(tokenizer, arch):
    model = small_model(tokenizer, arch)
    task = circuits.load_task("ioi", model, n=16, seed=0)
    scores = discover(model, task, "eap", split="all", batch_size=5).scores.double()
    reference = mask_gradient(model, task)
    assert torch.allclose(scores, reference, rtol=1e-4, atol=1e-7 * reference.abs().max())
    assert (scores[model.structure.edge_mask] != 0).float().mean() > 0.75  # not a vacuous 0 == 0


def test_eap_on_kl_takes_the_negated_divergence(tokenizer):
    """KL is lowest (0) at the full model, so its gradient there vanishes: EAP on KL gives ~0 scores, and the
    sign rule makes every exact KL score non-negative (removing an edge can only move away from the model)."""
    model = small_model(tokenizer)
    task = circuits.load_task("ioi", model, n=8, seed=0).with_metric("kl")
    eap = discover(model, task, "eap", split="all").scores
    assert eap.abs().max() < 1e-6
    exact = discover(model, task, "exact", split="all").scores
    assert (exact[model.structure.edge_mask] >= -1e-6).all()
    assert exact.max() > 1e-4


def test_top_eap_edges_hurt_when_removed(tokenizer):
    model = small_model(tokenizer, dtype=torch.float64)
    task = circuits.load_task("ioi", model, n=16, seed=0)
    eap = discover(model, task, "eap", split="all")
    exact = discover(model, task, "exact", split="all")
    top = torch.topk(eap.scores.flatten(), 5).indices
    assert (exact.scores.flatten()[top] > 0).all(), "the edges EAP says help must lower the metric when cut"


def test_eap_ig_one_step_is_the_gradient_at_the_ablated_input(tokenizer):
    """steps=1: scores = (clean - ablated) . dM/d input_R on the ablated (corrupted) run. Checked by running EAP
    the other way round (corrupted prompts, clean outputs as the ablation), whose scores are exactly minus that."""
    model = small_model(tokenizer)
    task = circuits.load_task("ioi", model, n=8, seed=1)
    ig1 = discover(model, task, "eap-ig", split="all", steps=1, batch_size=8).scores.double()
    batch = task.as_batch()
    s = model.structure
    clean_out = model.sender_outputs(batch.clean, batch.attention_mask)
    masks = torch.ones(s.n_senders, s.n_receivers, dtype=torch.float64, requires_grad=True)
    logits = model.patched_logits(batch.corrupted, masks, clean_out, attention_mask=batch.attention_mask)
    task.base_metric(logits, batch).sum().backward()
    reverse = (masks.grad / len(task)).masked_fill(~s.edge_mask, 0)
    assert torch.allclose(ig1, -reverse, rtol=1e-4, atol=1e-7 * reverse.abs().max())


def test_eap_ig_completeness_gap_shrinks_with_steps(tokenizer):
    """Integrated gradients over the input: the input's outgoing scores sum to M(clean) - M(ablated) in the limit."""
    model = small_model(tokenizer)
    task = circuits.load_task("ioi", model, n=8, seed=2)
    batch = task.as_batch()
    with torch.no_grad():
        gap_total = (task.base_metric(model.logits(batch.clean, batch.attention_mask), batch)
                     - task.base_metric(model.logits(batch.corrupted, batch.attention_mask), batch)).mean()
    gaps = []
    for steps in (1, 5, 20, 50):  # left Riemann sums: the gap falls roughly as 1 / steps
        scores = discover(model, task, "eap-ig", split="all", steps=steps).scores
        gaps.append(abs(float(scores[0].sum()) - float(gap_total)))
    assert gaps[0] > 1.0 * abs(float(gap_total)), "one step is far from the total effect on this model"
    assert gaps[3] < gaps[2] < gaps[1] < gaps[0]
    assert gaps[3] < 0.06 * abs(float(gap_total))


def test_exact_equals_manual_single_edge_cuts(tokenizer):
    model = small_model(tokenizer, "llama")
    task = circuits.load_task("ioi", model, n=8, seed=3)
    scores = discover(model, task, "exact", split="all", circuits_per_pass=7).scores
    assert_exact_is_manual_patching(model, task, scores, ["input->a0.h1<q>", "a0.h2->a1.h3<k>", "m0->logits",
                                                          "a1.h0->m1", "input->logits"])


def test_exact_resumes_from_a_checkpoint_to_the_same_result(tokenizer, tmp_path, interrupt_after_saves):
    model = small_model(tokenizer, dtype=torch.float32)
    task = circuits.load_task("ioi", model, n=6, seed=4)
    reference = discover(model, task, "exact", split="all", circuits_per_pass=8).scores
    ckpt = tmp_path / "exact.ckpt"
    interrupt_after_saves(5)
    with pytest.raises(KeyboardInterrupt):
        discover(model, task, "exact", split="all", circuits_per_pass=8, checkpoint=ckpt)
    assert ckpt.exists()
    interrupt_after_saves(None)
    resumed = discover(model, task, "exact", split="all", circuits_per_pass=8, checkpoint=ckpt).scores
    assert torch.equal(resumed, reference)
    assert not ckpt.exists(), "a finished run removes its checkpoint"
    other = circuits.load_task("ioi", model, n=6, seed=5)  # a checkpoint of another run is refused
    interrupt_after_saves(5)
    with pytest.raises(KeyboardInterrupt):
        discover(model, task, "exact", split="all", circuits_per_pass=8, checkpoint=ckpt)
    interrupt_after_saves(None)
    with pytest.raises(ValueError, match="different run"):
        discover(model, other, "exact", split="all", circuits_per_pass=8, checkpoint=ckpt)


def test_node_methods(tokenizer):
    model = small_model(tokenizer)
    task = circuits.load_task("ioi", model, n=8, seed=6)
    eap = discover(model, task, "eap", split="all").scores.double()
    node_ap = discover(model, task, "node-ap", split="all")
    assert node_ap.metadata["level"] == "node"
    assert torch.allclose(node_ap.node_scores[:-1].double(), eap.sum(1).float().double(), rtol=1e-4, atol=1e-7)
    assert torch.isnan(node_ap.node_scores[-1])
    patched = discover(model, task, "node-patching", split="all")
    s = model.structure
    batch = task.as_batch()
    ablated = circuits.interventions.ablation.ablated_outputs(model, "corrupted", batch.clean, batch.attention_mask,
                                                              corrupted_ids=batch.corrupted)
    full = task.base_metric(model.logits(batch.clean, batch.attention_mask), batch).mean()
    head = s.sender_index("a0.h2")
    mask = s.edge_mask.double().clone()
    mask[head] = 0
    cut = task.base_metric(model.patched_logits(batch.clean, mask, ablated, attention_mask=batch.attention_mask),
                           batch).mean()
    assert float(patched.node_scores[head]) == pytest.approx(float(full - cut), rel=1e-5)
    top2 = patched.top_k(2, level="node")
    assert top2.n_nodes >= 2


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_every_method_runs_with_every_ablation(tokenizer, ablation):
    model = small_model(tokenizer, dtype=torch.float32)
    task = circuits.load_task("ioi", model, n=6, seed=7)
    for name in ["eap", "eap-ig", "eap-ig-activations", "exact", "node-ap", "node-patching", "random"]:
        params = {"steps": 2} if name.startswith("eap-ig") else {}
        graph = discover(model, task, name, ablation=ablation, split="all", **params)
        assert graph.metadata["ablation"] == ablation
        values = graph.node_scores if graph.metadata["level"] == "node" else graph.scores
        assert torch.isfinite(values[:-1] if graph.metadata["level"] == "node" else values).all()


def test_metadata_and_mib_json_round_trip(tokenizer, tmp_path):
    model = small_model(tokenizer, dtype=torch.float32)
    task = circuits.load_task("ioi", model, n=8, seed=8)
    graph = discover(model, task, "eap-ig", steps=3)
    meta = graph.metadata
    assert meta["method"] == "eap-ig" and meta["params"]["steps"] == 3 and meta["task"] == "ioi"
    assert meta["ablation"] == "corrupted" and meta["n_examples"] == len(task.train) and meta["wall_time_s"] > 0
    assert meta["version"] == circuits.__version__ and meta["model"] == model.name
    top_before = graph.top_k(20)
    path = graph.save(tmp_path / "ioi.json")
    loaded = circuits.Graph.load(path, model=model)
    assert torch.equal(loaded.scores, graph.scores)
    assert loaded.metadata["method"] == "eap-ig"
    assert torch.equal(loaded.top_k(20).in_graph, top_before.in_graph)


def test_bad_input_is_named(tokenizer):
    model = small_model(tokenizer, dtype=torch.float32)
    task = circuits.load_task("ioi", model, n=6, seed=9)
    with pytest.raises(DiscoveryError, match="unknown method 'eap2'.*eap-ig"):
        discover(model, task, "eap2")
    with pytest.raises(DiscoveryError, match="no parameter.*stepz.*steps=5"):
        discover(model, task, "eap-ig", stepz=3)
    with pytest.raises(DiscoveryError, match="takes no checkpoint"):
        discover(model, task, "eap", checkpoint="x.ckpt")
    with pytest.raises(DiscoveryError, match="unknown ablation"):
        discover(model, task, "eap", ablation="resample")
    # a metric that does not move: clean and corrupted prompts are the same
    same = task._replace(data=task.data.__class__(**{**task.data.__dict__, "corrupted": task.data.clean}))
    with pytest.raises(DiscoveryError, match="nothing to attribute"):
        discover(model, same, "eap")
    # a task built with another tokenizer (GPT-2's) than the model's word-level one
    gpt2_task = circuits.load_task("ioi", circuits.tasks.default_gpt2_tokenizer(), n=4, seed=0)
    with pytest.raises(DiscoveryError, match="another tokenizer|different tokenizer"):
        discover(model, gpt2_task, "eap")
    # an ablation a method's definition rules out
    from circuits.discovery import register
    register("corrupted-only", "edge", "test method", ablations=("corrupted",),
             why_not="it needs paired counterfactuals")(lambda ctx: torch.zeros(1))
    try:
        with pytest.raises(DiscoveryError, match="cannot use ablation='zero': it needs paired counterfactuals"):
            discover(model, task, "corrupted-only", ablation="zero")
    finally:
        METHODS.pop("corrupted-only")


def test_context_objective_for_batched_circuits(tokenizer):
    model = small_model(tokenizer, dtype=torch.float32)
    task = circuits.load_task("ioi", model, n=4, seed=10)
    ctx = CircuitSession(model, task)
    prepared = ctx.batches[0]
    s = model.structure
    masks = torch.stack([torch.ones(s.n_senders, s.n_receivers), torch.zeros(s.n_senders, s.n_receivers)])
    logits = model.patched_logits(prepared.clean, masks, ctx.ablated(prepared), attention_mask=prepared.attention_mask,
                                  logit_positions=prepared.positions)
    both = ctx.objective(logits, prepared)
    assert both.shape == (2, len(task))
    assert torch.allclose(both[0], ctx.objective(logits[0], prepared))
    assert torch.allclose(both[1], ctx.objective(logits[1], prepared))


def test_eap_ig_stacked_steps_equal_one_step_per_pass(tokenizer):
    """Stacking the interpolation steps in one pass (their gradients summed before the score products) changes
    nothing but rounding; llama covers grouped keys/values and RMSNorm in the probed projections."""
    for arch in ("gpt2", "llama"):
        model = small_model(tokenizer, arch)
        task = circuits.load_task("ioi", model, n=10, seed=4)
        one = discover(model, task, "eap-ig", split="all", steps=4, steps_per_pass=1, batch_size=5).scores
        stacked = discover(model, task, "eap-ig", split="all", steps=4, steps_per_pass=3, batch_size=5).scores
        assert torch.allclose(one, stacked, rtol=1e-5, atol=1e-6 * one.abs().max()), arch  # fp32 score buffer
        assert one.abs().max() > 0


def test_attribution_takes_no_weight_gradients(tokenizer):
    """Weight views carry no autograd history: a backward through the decomposed forward leaves every
    parameter's .grad empty even when the parameters require grad (edge pruning trains masks this way)."""
    model = small_model(tokenizer, dtype=torch.float32)
    assert all(p.requires_grad for p in model.hf.parameters())
    s = model.structure
    batch = circuits.load_task("ioi", model, n=4, seed=0).as_batch()
    ablated = model.sender_outputs(batch.corrupted, batch.attention_mask)
    masks = torch.ones(s.n_senders, s.n_receivers, requires_grad=True)
    model.patched_logits(batch.clean, masks, ablated, attention_mask=batch.attention_mask).sum().backward()
    assert masks.grad is not None and masks.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.hf.parameters())
