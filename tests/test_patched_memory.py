"""The patched pass's memory: the estimate (circuits.session.memory, kind "patched") against the peak of the
tensors a pass really holds (tests/memory_tracking.py), and a budgeted session's passes under their budget."""

from __future__ import annotations

import pytest
import torch

from circuits.interventions.ablation import ablated_outputs
from circuits.interventions.masked import MaskedResidual
from circuits.models.random import random_model
from circuits.session import CircuitSession
from circuits.session.memory import ModelWidths, estimate_peak, head_subset_weights
from circuits.session.session import CPU_ROWS_PER_PASS
from circuits.tasks.metrics import Metric
from circuits.tasks.task import Task, build_batch
from tests.evaluation.conftest import tiny_task
from tests.memory_tracking import StoragePeak

V = 256
# (family, dtype, layers): RMSNorm and grouped-query attention in fp32 and bf16, LayerNorm in bf16
MODELS = [("llama", torch.float32, 1), ("llama", torch.float32, 3), ("llama", torch.bfloat16, 2),
          ("gpt2", torch.bfloat16, 2), ("gpt2", torch.float32, 2)]


def random_task(n: int, P: int) -> Task:
    """``n`` random pairs of ``P`` tokens read at the last position."""
    g = torch.Generator().manual_seed(2)
    clean, corrupted = (torch.randint(3, V, (n, P), generator=g).tolist() for _ in range(2))
    return Task("random", build_batch(clean, corrupted, [[(P - 1, [1], [2])] for _ in range(n)], pad=0),
                Metric("logit_diff"), None)


def model_of(family: str, dtype: torch.dtype, layers: int):
    kv = {"n_kv_heads": 2} if family == "llama" else {}
    return random_model(family, n_layers=layers, n_heads=8, d_model=256, vocab_size=V, dtype=dtype, **kv)


def patched_peak(model, masks: torch.Tensor, b: int, P: int) -> tuple[int, int]:
    """(tracked peak, estimate without the ablation made before it) of one patched pass of ``masks [C, S, R]``
    on ``b`` random examples of ``P`` tokens, read at the last position."""
    g = torch.Generator().manual_seed(1)
    clean, corrupted = (torch.randint(0, V, (b, P), generator=g) for _ in range(2))
    with torch.no_grad():
        ablated = ablated_outputs(model, "corrupted", clean, corrupted_ids=corrupted)
        with StoragePeak() as tracked:
            model.run(clean, residual=MaskedResidual(masks.to(model.dtype), ablated),
                      logit_positions=torch.full((b, 1), P - 1))
    estimate = estimate_peak(ModelWidths.of(model), "patched", examples=b, positions=P, circuits=masks.shape[0])
    return tracked.peak, estimate.total - estimate.ablated


@pytest.mark.parametrize("family, dtype, layers", MODELS)
@pytest.mark.parametrize("C, b, P", [(4, 2, 32), (2, 3, 64)])
def test_estimate_tracks_the_peak_of_a_pass(family, dtype, layers, C, b, P):
    """Half the edges of each circuit at random (every sender computed): the estimate is at most 10% below the
    tracked peak, and at most 35% above it (it is sized for the worst read, 2R + 1 rows, where these masks'
    reads mostly take R + 1: on 1-3 layers of 8 heads that read is a third of the pass; at 32 layers, under 10%)
    besides the head-subset weight copies it budgets for and these masks do not make (every head computed).
    The old estimate (6H + 8 rows besides the buffer) missed the float32 RMSNorm copies of half precision (bf16
    llama: 0.78 of the peak) and the forward held two layers' inputs at once."""
    model = model_of(family, dtype, layers)
    s = model.structure
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(C, s.n_senders, s.n_receivers, generator=g) < 0.5).float() * s.edge_mask
    peak, estimate = patched_peak(model, masks, b, P)
    w = ModelWidths.of(model)
    unmade = head_subset_weights(w) - head_subset_weights(w, subset=False)
    assert 0.9 * peak <= estimate <= 1.35 * peak + unmade, (peak, estimate, unmade)


WIDE = [("llama", torch.float32, False), ("llama", torch.float32, True), ("llama", torch.bfloat16, False),
        ("llama", torch.bfloat16, True), ("gpt2", torch.float32, False), ("gpt2", torch.bfloat16, False)]


@pytest.mark.parametrize("family, dtype, grouped", WIDE)
@pytest.mark.parametrize("C, b, P", [(2, 1, 8), (2, 2, 32)])
def test_estimate_holds_for_layers_that_compute_a_subset_of_heads(family, dtype, grouped, C, b, P):
    """Sparse circuits: one head per layer read by nothing, so every layer computes H - 1 heads through
    head_subset, which copies their weight rows (fp32: and folds the norm into them). On a model wide enough
    for the weights to matter (d 1024, 8 heads: a pass of few rows is mostly those copies, as an 8B-width pass
    of one 16-token example is) the estimate is an upper bound within 40%; without its weight-copy term it is
    under 70% of the peak at one example (the gap issue 18 found: 0.54x at 8B width)."""
    kv = {"n_kv_heads": 2} if family == "llama" else {}
    model = random_model(family, n_layers=2, n_heads=8, d_model=1024, vocab_size=V, dtype=dtype, **kv)
    if grouped:
        model = model.with_grouped_kv(True)
    s = model.structure
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(C, s.n_senders, s.n_receivers, generator=g) < 0.5).float() * s.edge_mask
    for layer in range(s.n_layers):
        masks[:, s.layer_senders(layer).start + 1, :] = 0  # head 1's output is read by nothing: not computed
    peak, estimate = patched_peak(model, masks, b, P)
    assert peak <= estimate <= 1.4 * peak, (peak, estimate)
    if b == 1:
        assert estimate - head_subset_weights(ModelWidths.of(model)) < 0.7 * peak


@pytest.mark.parametrize("family, dtype, layers", MODELS[:2] + MODELS[3:4])
def test_estimate_holds_when_head_inputs_share_a_mix(family, dtype, layers):
    """The worst read: two head inputs of every layer share a mix, so the read builds R distinct mixes and then
    their R-row gather (2R + 1 rows). The estimate is sized for it: at most 10% below the tracked peak."""
    model = model_of(family, dtype, layers)
    s = model.structure
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(4, s.n_senders, s.n_receivers, generator=g)
    for layer in range(s.n_layers):
        first = s.attn_receivers(layer).start
        masks[:, :, first + 1] = masks[:, :, first]
    peak, estimate = patched_peak(model, masks * s.edge_mask, 2, 32)
    assert 0.9 * peak <= estimate <= 1.25 * peak, (peak, estimate)


@pytest.mark.parametrize("family, dtype", [("llama", torch.float32), ("gpt2", torch.bfloat16)])
def test_budgeted_patched_passes_stay_under_the_budget(family, dtype):
    """A budget for about 3 circuit rows: circuit_metrics of 6 circuits on 12 examples runs in several chunked
    passes, each of whose tracked peak plus the cached ablation it reads stays under the budget; the metrics
    equal the unbudgeted ones."""
    model = model_of(family, dtype, 2)
    widths, P = ModelWidths.of(model), 32
    task = random_task(12, P)
    s = model.structure
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(6, s.n_senders, s.n_receivers, generator=g) < 0.5).float() * s.edge_mask
    row = estimate_peak(widths, "patched", examples=1, positions=P)
    budget = 3 * (row.total - row.ablated) + estimate_peak(widths, "patched", examples=2, positions=P).ablated
    session = CircuitSession(model, task, split="all", batch_size=6, memory_budget=budget, show_progress=False)
    session.fit("patched")
    assert session.examples_per_pass is not None and session.examples_per_pass <= 3
    session.baselines
    for batch in session.batches:  # the caches a pass reads, made before it
        session.ablated(batch)
    cached = max(estimate_peak(widths, "patched", examples=len(b), positions=P).ablated for b in session.batches)
    forwards = session.forwards
    with StoragePeak() as tracked:
        metrics = session.circuit_metrics(masks, metric=Metric("logit_diff"))
    assert session.forwards - forwards > len(session.batches)  # circuits chunked too
    assert tracked.peak + cached <= budget, (tracked.peak, cached, budget)
    plain = CircuitSession(model, task, split="all", batch_size=6, show_progress=False)
    torch.testing.assert_close(metrics.metric, plain.circuit_metrics(masks).metric, atol=1e-5, rtol=1e-5)


def test_cpu_without_a_budget_caps_rows_as_before():
    """No budget on CPU: nothing is chunked and a pass runs CPU_ROWS_PER_PASS rows (circuits x examples)."""
    model = model_of("llama", torch.float32, 2)
    session = CircuitSession(model, tiny_task(n=12, vocab=V), split="all", batch_size=6, show_progress=False)
    assert session.fit("patched") == 1 and session.examples_per_pass is None
    assert all(session._circuits_per_pass(b) == CPU_ROWS_PER_PASS // len(b) for b in session.batches)
