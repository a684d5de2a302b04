"""Memory of the finer runs under a budget: position-aware masks and scores, MLP neurons as units, incremental
patching's held clean run and ACDC's held references. The estimate (circuits.session.memory) against the peak of
the tensors a pass holds (tests/memory_tracking.py), and budgeted runs whose whole tracked peak (passes, kept
ablations, baselines) stays under the budget with the unbudgeted results."""

from __future__ import annotations

import pytest
import torch

import circuits
from circuits.discovery.exact import EdgeCuts, single_cut_effects
from circuits.interventions.ablation import ablated_outputs
from circuits.interventions.masked import MaskedResidual, PositionMaskedResidual
from circuits.interventions.neurons import NeuronMasked, NeuronProbe, hidden_ablation
from circuits.interventions.probe import GradientProbe
from circuits.models.random import random_model
from circuits.session import CircuitSession
from circuits.session.memory import ModelWidths, estimate_peak, head_subset_weights
from circuits.session.neurons import NeuronRuns
from circuits.session.session import MemoryBudgetError
from tests.memory_tracking import StoragePeak
from tests.test_patched_memory import V, model_of, random_task

MODELS = [("llama", torch.float32, 1), ("llama", torch.float32, 3), ("llama", torch.bfloat16, 2),
          ("gpt2", torch.bfloat16, 2), ("gpt2", torch.float32, 2)]
SHAPES = [(4, 2, 32), (2, 3, 64)]  # circuits, examples, positions


def _inputs(model, b: int, P: int):
    g = torch.Generator().manual_seed(1)
    clean, corrupted = (torch.randint(0, V, (b, P), generator=g) for _ in range(2))
    with torch.no_grad():
        ablated = ablated_outputs(model, "corrupted", clean, corrupted_ids=corrupted)
    return clean, corrupted, ablated, torch.full((b, 1), P - 1)


def _unmade(model) -> int:
    """The head-subset weight copies the estimate budgets for and random half-dense masks do not make."""
    w = ModelWidths.of(model)
    return head_subset_weights(w) - head_subset_weights(w, subset=False)


# ---- the estimate against one pass ------------------------------------------------------------------------------
@pytest.mark.parametrize("family, dtype, layers", MODELS)
@pytest.mark.parametrize("C, b, P", SHAPES)
def test_position_pass_estimate_holds(family, dtype, layers, C, b, P):
    """A position-aware pass (masks [C, S, R, P] made in the pass, as a session makes them): the estimate is never
    below the tracked peak and at most 20% above it. Before a read stopped copying the base R times (3R rows a
    read, where the estimate allows 2R + 1) the estimate without a position term was 0.80x of this peak."""
    model = model_of(family, dtype, layers)
    s = model.structure
    clean, _, ablated, at = _inputs(model, b, P)
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(C, s.n_senders, s.n_receivers, P, generator=g) < 0.5).float() * s.edge_mask[..., None]
    with torch.no_grad(), StoragePeak() as tracked:
        model.run(clean, residual=PositionMaskedResidual(masks.to(model.dtype), ablated), logit_positions=at)
    e = estimate_peak(ModelWidths.of(model), "patched", examples=b, positions=P, circuits=C, by_position=True)
    ratio = (e.total - e.ablated - _unmade(model)) / tracked.peak
    assert 1.0 <= ratio <= 1.2, (ratio, e.describe())


@pytest.mark.parametrize("family, dtype, layers", MODELS)
@pytest.mark.parametrize("C, b, P", SHAPES)
def test_neuron_pass_estimate_holds(family, dtype, layers, C, b, P):
    """A neuron-level pass (edge masks and neuron masks [C, L, m], the neurons' ablation made before it): the
    estimate is never below the tracked peak and at most 35% above it."""
    model = model_of(family, dtype, layers)
    s = model.structure
    L, m = len(model.spec.layers), model.spec.layers[0].mlp.d_hidden
    clean, corrupted, ablated, at = _inputs(model, b, P)
    hidden = hidden_ablation(model, "corrupted", clean, corrupted_ids=corrupted)
    g = torch.Generator().manual_seed(0)
    edges = (torch.rand(C, s.n_senders, s.n_receivers, generator=g) < 0.5).float() * s.edge_mask
    neurons = (torch.rand(C, L, m, generator=g) < 0.5).float()
    with torch.no_grad(), StoragePeak() as tracked:
        model.run(clean, residual=NeuronMasked(MaskedResidual(edges.to(model.dtype), ablated),
                                               neurons.to(model.dtype), hidden), logit_positions=at)
    e = estimate_peak(ModelWidths.of(model), "patched", examples=b, positions=P, circuits=C, neurons=1)
    ratio = (e.total - e.ablated - _unmade(model)) / tracked.peak
    assert 1.0 <= ratio <= 1.35, (ratio, e.describe())


@pytest.mark.parametrize("family, dtype, layers", MODELS)
@pytest.mark.parametrize("what", ["neurons", "positions"])
def test_attribution_estimate_holds_for_neurons_and_positions(family, dtype, layers, what):
    """EAP's forward and backward scoring MLP neurons (the per-layer neuron differences it holds) or every
    position (float32 scores [S, R, P], made in the block): the estimate is never below the tracked peak (it is
    up to 1.55x above it in float32 at these widths, as plain EAP's is)."""
    model = model_of(family, dtype, layers)
    s = model.structure
    b, P = 3, 32
    clean, corrupted, ablated, at = _inputs(model, b, P)
    hidden = hidden_ablation(model, "corrupted", clean, corrupted_ids=corrupted)
    with StoragePeak() as tracked, torch.enable_grad():
        if what == "neurons":
            probe = NeuronProbe(GradientProbe(ablated, torch.zeros(s.n_senders, s.n_receivers)), hidden,
                                torch.zeros(hidden.shape[0], hidden.shape[-1]))
        else:
            probe = GradientProbe(ablated, torch.zeros(s.n_senders, s.n_receivers, P), positions=True)
        model.run(clean, residual=probe, logit_positions=at).logits[..., 1].sum().backward()
    e = estimate_peak(ModelWidths.of(model), "attribution", examples=b, positions=P,
                      neurons=int(what == "neurons"), by_position=what == "positions")
    ratio = (e.total - e.ablated) / tracked.peak
    assert 1.0 <= ratio <= 1.6, (ratio, e.describe())


# ---- budgeted runs ----------------------------------------------------------------------------------------------
N, BATCH, P = 12, 4, 16


def _budget(model, **reads) -> int:
    """One and a half circuits of a 2-example pass: batches of 4 are cut, a pass runs one circuit, few
    ablations are kept."""
    one, two = (estimate_peak(ModelWidths.of(model), "patched", examples=2, positions=P, circuits=c, **reads)
                for c in (1, 2))
    return one.total + (two.total - one.total) // 2


def _sessions(model, budget: int, **kw):
    task = random_task(N, P)
    return (CircuitSession(model, task, split="all", batch_size=BATCH, memory_budget=budget, show_progress=False,
                           **kw),
            CircuitSession(model, task, split="all", batch_size=BATCH, show_progress=False, **kw))


@pytest.mark.parametrize("family, dtype", [("llama", torch.float32), ("gpt2", torch.bfloat16)])
def test_budgeted_position_circuits_stay_under_the_budget(family, dtype):
    """Position-aware circuit metrics from a fresh session under a budget of 1.5 circuits of 2 examples: everything
    the session makes (baselines, kept ablations, the passes and their masks) peaks under the budget, and the
    metrics equal the unbudgeted ones."""
    model = model_of(family, dtype, 2)
    s = model.structure
    budgeted, plain = _sessions(model, _budget(model, by_position=True))
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(5, s.n_senders, s.n_receivers, P, generator=g) < 0.5).float()
    with StoragePeak() as tracked:
        got = budgeted.circuit_metrics(masks, kl=True)
    assert budgeted.examples_per_pass is not None and budgeted.examples_per_pass < BATCH
    assert tracked.peak <= budgeted.memory_budget, (tracked.peak, budgeted.memory_budget)
    want = plain.circuit_metrics(masks, kl=True)
    torch.testing.assert_close(got.metric, want.metric, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.kl, want.kl, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family, dtype", [("llama", torch.float32), ("gpt2", torch.bfloat16)])
def test_budgeted_neuron_circuits_stay_under_the_budget(family, dtype):
    """Neuron circuits (edge and neuron masks) from a fresh session under a budget: the peak of everything made,
    the neurons' kept ablations among it, stays under the budget, with the unbudgeted metrics. The neurons'
    ablations are kept only while they fit: before, every batch's were kept, growing with the examples."""
    model = model_of(family, dtype, 2)
    s = model.structure
    budgeted, plain = _sessions(model, _budget(model, neurons=1))
    runs, plain_runs = NeuronRuns(budgeted), NeuronRuns(plain)
    g = torch.Generator().manual_seed(0)
    edges = (torch.rand(5, s.n_senders, s.n_receivers, generator=g) < 0.7).float()
    neurons = (torch.rand(5, *runs.shape, generator=g) < 0.5).float()
    with StoragePeak() as tracked:
        got = runs.circuit_metrics(edges, neurons, kl=True)
    assert tracked.peak <= budgeted.memory_budget, (tracked.peak, budgeted.memory_budget)
    want = plain_runs.circuit_metrics(edges, neurons, kl=True)
    torch.testing.assert_close(got.metric, want.metric, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.kl, want.kl, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_budgeted_incremental_patching_stays_under_the_budget(family):
    """Exact patching on the incremental engine reads its batch's held clean run ([S, b, P, d], as large as the
    corrupted run): the pass's estimate counts it, the run holds one batch's at a time, and the whole run peaks
    under the budget with the unbudgeted scores."""
    model = model_of(family, torch.float32, 2)
    budgeted, plain = _sessions(model, _budget(model, held=1))
    edges = model.structure.edge_order[::17]  # a sample of edges into every kind of receiver
    with StoragePeak() as tracked:
        got = single_cut_effects(budgeted, EdgeCuts(model.structure, edges), circuits_per_pass=8)
    assert tracked.peak <= budgeted.memory_budget, (tracked.peak, budgeted.memory_budget)
    torch.testing.assert_close(got, single_cut_effects(plain, EdgeCuts(model.structure, edges), circuits_per_pass=8),
                               atol=1e-6, rtol=1e-5)


FAMILIES = ["llama", "gpt2", "gpt_neox", "qwen2"]
NEURON_RUNS = [("eap-neurons", {}, f) for f in FAMILIES] + [("eap-ig-neurons", {"steps": 2}, f) for f in FAMILIES] + \
    [("neuron-patching", {"circuits_per_pass": 64}, f) for f in ("llama", "gpt2")]


@pytest.mark.parametrize("method, params, family", NEURON_RUNS)
def test_budgeted_neuron_discovery_equals_unbudgeted(method, params, family):
    """discover() fits the neuron methods' plans, their neuron tensors included: a budget below the smallest pass
    with them (above it without them) is refused before any forward; a budget of about two examples' pass (and,
    for neuron patching, 8 of its 64 circuits per pass) cuts the batches of 4, peaks under the budget and gives
    the unbudgeted scores."""
    patching = method == "neuron-patching"
    d = 64 if patching else 256  # neuron patching: 2 x 256 neurons, each cut alone
    model = random_model(family, n_layers=2, n_heads=4, d_model=d, vocab_size=V, dtype=torch.float32,
                         **({"n_kv_heads": 2} if family == "llama" else {}))
    task = random_task(N, P)
    plan = circuits.discovery.METHODS[method].memory_plans(params)[0]
    reads = {k: v for k, v in plan.items() if k not in ("kind", "steps", "fixed_steps")}
    w = ModelWidths.of(model)

    def smallest(examples: int, circuits: int = 1, **change) -> int:  # fit's last try: 1 step, a position chunk of 1
        chunk = {"position_chunk": 1} if plan["kind"] == "attribution" else {"circuits": circuits}
        return estimate_peak(w, plan["kind"], examples=examples, positions=P, **chunk, **{**reads, **change}).total

    assert smallest(1, neurons=0) < smallest(1)
    kw = dict(split="all", batch_size=BATCH, show_progress=False, check=False, **params)
    with pytest.raises(MemoryBudgetError, match="1 example"):
        circuits.discover(model, task, method, memory_budget=(smallest(1, neurons=0) + smallest(1)) // 2, **kw)
    budget = smallest(2, circuits=8) if patching else smallest(2)
    with StoragePeak() as tracked:
        got = circuits.discover(model, task, method, memory_budget=budget, **kw)
    assert tracked.peak <= budget, (tracked.peak, budget)
    want = circuits.discover(model, task, method, **kw)
    torch.testing.assert_close(got.neuron_scores, want.neuron_scores, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.node_scores, want.node_scores, atol=1e-6, rtol=1e-5, equal_nan=True)


def test_acdc_fast_search_is_refused_when_its_held_references_cannot_fit():
    """ACDC's fast search holds the full model's and its reference circuit's sender outputs for every example
    through the run. A budget below them is refused before any forward, naming what it holds and the fix; the
    one-at-a-time search, which holds none, runs under the same budget."""
    model = model_of("gpt2", torch.float32, 1)
    task = random_task(N, P)
    w = ModelWidths.of(model)
    held = 2 * w.n_senders * N * P * w.d_model * 4
    budget = held * 9 // 10  # the passes of one example fit, beside the references they do not
    kw = dict(split="all", batch_size=BATCH, show_progress=False, check=False, threshold=0.05, max_receivers=2)
    with pytest.raises(MemoryBudgetError, match=r"holds for all 12 examples.*one_at_a_time=True.*run fewer examples"):
        circuits.discover(model, task, "acdc", memory_budget=budget, **kw)
    circuits.discover(model, task, "acdc", memory_budget=budget, one_at_a_time=True, **kw)
