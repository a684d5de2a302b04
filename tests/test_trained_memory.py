"""A training step's memory (edge pruning, MAttr): the estimate (circuits.session.memory, kind "trained") against
the peak of the tensors a step really holds (tests/memory_tracking.py), budgeted runs under their budget with the
gates of the unbudgeted run (a step's gradient accumulated over the passes a batch is cut into), and a run that
cannot fit refused before any forward."""

from __future__ import annotations

import pytest
import torch

import circuits
from circuits.discovery import METHODS
from circuits.discovery.edge_pruning import edge_pruning
from circuits.discovery.mattr import mattr
from circuits.models.circuit_model import CircuitModel
from circuits.models.random import random_model
from circuits.session import CircuitSession
from circuits.session.memory import ModelWidths, estimate_peak, format_bytes
from circuits.session.session import MemoryBudgetError
from circuits.tasks.metrics import Metric
from tests.memory_tracking import StoragePeak
from tests.test_patched_memory import V, random_task

pytestmark = pytest.mark.filterwarnings("ignore:edge pruning:UserWarning")  # a few steps do not converge

# (family, grouped k/v): RMSNorm with grouped-query attention (k/v receivers per group and per query head), and
# LayerNorm with (gpt_neox) and without (gpt2) rotary embeddings
FAMILIES = [("llama", True), ("llama", False), ("gpt2", False), ("gpt_neox", False)]


def model_of(family: str, dtype: torch.dtype, layers: int = 2, grouped: bool = False) -> CircuitModel:
    kv = {"n_kv_heads": 2} if family in ("llama", "qwen2") else {}
    model = random_model(family, n_layers=layers, n_heads=8, d_model=256, vocab_size=V, dtype=dtype, **kv)
    return model.with_grouped_kv(True) if grouped else model


def step_peak(session: CircuitSession) -> int:
    """The tracked peak of one training step of one circuit (random float gates over every edge, KL to the full
    model) on the session's first batch, through :meth:`CircuitSession.trained_objective`; the ablation and the
    full logits it reads are made before it, as a session keeps them."""
    s = session.structure
    order = s.edge_order
    batch = session.batches[0]
    session.ablated(batch), session.full_logits(batch)
    theta = torch.randn(order.shape[0], generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    with StoragePeak() as tracked:
        masks = torch.zeros(s.n_senders, s.n_receivers).index_put((order[:, 0], order[:, 1]), torch.sigmoid(theta))
        loss = -session.trained_objective([batch], masks, Metric("kl"))
        loss.backward()
    assert theta.grad is not None and bool(theta.grad.abs().sum() > 0)
    return tracked.peak


@pytest.mark.parametrize("family, grouped", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layers, b, P", [(2, 2, 32), (1, 4, 64)])
def test_estimate_bounds_the_peak_of_a_training_step(family, grouped, dtype, layers, b, P):
    """The estimate is an upper bound of the tracked peak, and not a loose one: at most 1.6 times it (measured
    1.15-1.35; the largest slack is grouped k/v, whose keys and values are counted per query head)."""
    model = model_of(family, dtype, layers, grouped)
    session = CircuitSession(model, random_task(b, P), split="all", batch_size=b, show_progress=False)
    peak = step_peak(session)
    estimate = estimate_peak(ModelWidths.of(session.model), "trained", examples=b, positions=P)
    ratio = (estimate.total - estimate.ablated) / peak  # the ablation is made before the step
    assert 1.0 <= ratio <= 1.6, (ratio, peak, estimate.describe())


def test_trained_estimate_grows_with_the_examples_and_the_precision():
    """Linear in the examples besides the per-pass terms (edge parameters, folded float32 weights); a half
    precision RMSNorm model holds float32 copies of its head inputs, so it needs more than half the float32 bytes."""
    model = model_of("llama", torch.float32)
    widths = ModelWidths.of(model)
    one, two, four = (estimate_peak(widths, "trained", examples=b, positions=32).total for b in (1, 2, 4))
    assert four - two == 2 * (two - one) > 0
    half = ModelWidths.of(model_of("llama", torch.bfloat16))
    assert estimate_peak(half, "trained", examples=2, positions=32).total > two / 2


# ---- budgeted runs ----------------------------------------------------------------------------------------------
N, BATCH, P = 8, 4, 16
METHODS_RUN = {"edge-pruning": (edge_pruning, dict(target_sparsity=0.5, steps=4, lr=0.1, seed=1)),
               "mattr": (mattr, dict(steps=4, lr=0.05, seed=1))}


@pytest.mark.parametrize("method", list(METHODS_RUN))
@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "qwen2"])
def test_budgeted_training_stays_under_the_budget_with_the_same_gates(method, family):
    """A budget of half the estimate of a whole batch: each batch of 4 runs as sub-batches, every step's tracked
    peak (plus the cached ablation it reads) stays under the budget, and the scores (and edge pruning's circuit)
    equal the unbudgeted run's: a step accumulates its batch's gradient over the sub-batches before Adam's step."""
    fn, params = METHODS_RUN[method]
    model = model_of(family, torch.float32, 2, grouped=family == "llama")
    task = random_task(N, P)
    widths = ModelWidths.of(model)
    budget = estimate_peak(widths, "trained", examples=BATCH, positions=P).total // 2
    session = CircuitSession(model, task, split="all", batch_size=BATCH, memory_budget=budget, show_progress=False)
    session.fit("trained")
    assert session.examples_per_pass is not None and 1 <= session.examples_per_pass < BATCH
    assert len(session.batches) > len(session.batch_groups) == N // BATCH
    assert [sorted(torch.cat([b.index for b in g]).tolist()) for g in session.batch_groups] == \
        [sorted(b.index.tolist()) for b in CircuitSession(model, task, split="all", batch_size=BATCH).batches]
    for batch in session.batches:  # the caches a step reads, made before it
        session.ablated(batch), session.full_logits(batch)
    cached = estimate_peak(widths, "trained", examples=session.examples_per_pass, positions=P).ablated
    with StoragePeak() as tracked:
        out = fn(session, **params)
    assert tracked.peak + cached <= budget, (tracked.peak, cached, budget)
    plain = fn(CircuitSession(model, task, split="all", batch_size=BATCH, show_progress=False), **params)
    scores, plain_scores = (out[0], plain[0]) if isinstance(out, tuple) else (out, plain)
    torch.testing.assert_close(scores, plain_scores, atol=1e-5, rtol=1e-5)
    assert scores.abs().sum() > 0
    if isinstance(out, tuple):
        assert torch.equal(out[1], plain[1])


def test_discover_fits_trained_passes():
    """discover() fits the methods' plans before any forward: edge-pruning and mattr a trained pass,
    edge-pruning-eap-ig its EAP-IG phase (attribution, clean outputs and differences held) and then the training;
    budgeted graphs equal the unbudgeted ones. Edge pruning from EAP-IG's ranking to 1e-4: its closed gates have
    gradients near Adam's eps (~5e-9 against 1e-8), whose first step g / (|g| + eps) then moves by the roundoff
    of g, which differs between a batch's forward and its sub-batches' (measured: 5.8e-5 on one edge's score)."""
    assert METHODS["edge-pruning"].memory(METHODS["edge-pruning"].params) == {"kind": "trained"}
    assert METHODS["mattr"].memory(METHODS["mattr"].params) == {"kind": "trained"}
    plans = METHODS["edge-pruning-eap-ig"].memory({**METHODS["edge-pruning-eap-ig"].params, "ig_steps": 3})
    assert plans == [{"kind": "attribution", "sender_copies": 2, "steps": 3, "fixed_steps": False},
                     {"kind": "trained"}]
    model, task = model_of("gpt2", torch.float32, 1), random_task(N, P)
    budget = estimate_peak(ModelWidths.of(model), "trained", examples=BATCH, positions=P).total // 2
    kw = dict(split="all", batch_size=BATCH, check=False, show_progress=False, steps=3, target_sparsity=0.5)
    for method in ("edge-pruning", "edge-pruning-eap-ig"):
        extra = {"ig_steps": 2} if method == "edge-pruning-eap-ig" else {}
        budgeted = circuits.discover(model, task, method, memory_budget=budget, **kw, **extra)
        plain = circuits.discover(model, task, method, **kw, **extra)
        tol = 1e-4 if extra else 1e-5
        torch.testing.assert_close(budgeted.scores, plain.scores, atol=tol, rtol=tol)
        assert torch.equal(budgeted.in_graph, plain.in_graph)


@pytest.mark.parametrize("method", ["edge-pruning", "mattr"])
def test_a_step_that_cannot_fit_is_refused_before_any_forward(method, monkeypatch):
    """A budget under one example's estimate: MemoryBudgetError before any forward, naming the trained run's
    estimate at 1 example and the setting to change."""
    model, task = model_of("llama", torch.float32, 1), random_task(N, P)
    one = estimate_peak(ModelWidths.of(model), "trained", examples=1, positions=P)
    forwards = []
    run = CircuitModel.run
    monkeypatch.setattr(CircuitModel, "run", lambda *a, **k: forwards.append(1) or run(*a, **k))
    with pytest.raises(MemoryBudgetError) as info:
        circuits.discover(model, task, method, split="all", batch_size=BATCH, steps=2,
                          memory_budget=one.total - 1, show_progress=False)
    assert not forwards
    message = str(info.value)
    assert "trained run needs about" in message and format_bytes(one.total) in message
    assert "1 example(s) per pass" in message and "--memory-budget" in message
    assert "training step" in message and "circuit per pass" not in message
    session = CircuitSession(model, task, split="all", batch_size=BATCH, memory_budget=one.total - 1)
    with pytest.raises(MemoryBudgetError, match="--memory-budget"):  # called directly, the method fits too
        METHODS[method].fn(session, steps=2)
    assert not forwards
