"""Memory-bounded runs: a memory budget (or explicit chunk sizes) chunks discovery and evaluation over examples,
stacked steps, circuits and backward positions with the same results, and a run that cannot fit is refused before
any forward with its estimate (circuits.session.memory, CircuitSession.fit)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import circuits
from circuits.cli import main
from circuits.evaluation import evaluate, faithfulness_curve
from circuits.interventions import probe as probe_module
from circuits.models.circuit_model import CircuitModel
from circuits.session import CircuitSession
from circuits.session.memory import ModelWidths, estimate_peak, parse_memory
from circuits.session.session import MemoryBudgetError
from tests.conftest import TINY, tiny_model
from tests.evaluation.conftest import tiny_task

N, BATCH = 12, 6  # 12 examples in 2 batches of 6: a budget for 2 examples per pass makes 6 sub-batches
TOL = dict(atol=1e-5, rtol=1e-5)
ATTRIBUTION = {"eap": {}, "eap-ig": {"steps": 3}, "eap-ig-activations": {"steps": 2}}


@pytest.fixture(scope="module", params=list(TINY))
def setup(request):
    model = tiny_model(request.param)
    return model, tiny_task(n=N, vocab=64)


class Counts:
    """Every forward of the model and every per-head gradient the probe's backward computes (a position chunk
    each), counted by wrapping them in the test."""

    def __init__(self, monkeypatch):
        self.forwards = self.head_gradients = 0
        run, vjp = CircuitModel.run, probe_module._norm_vjp_heads

        def counted_run(*args, **kwargs):
            self.forwards += 1
            return run(*args, **kwargs)

        def counted_vjp(*args, **kwargs):
            self.head_gradients += 1
            return vjp(*args, **kwargs)

        monkeypatch.setattr(CircuitModel, "run", counted_run)
        monkeypatch.setattr(probe_module, "_norm_vjp_heads", counted_vjp)

    def take(self) -> tuple[int, int]:
        out = (self.forwards, self.head_gradients)
        self.forwards = self.head_gradients = 0
        return out


@pytest.fixture
def counts(monkeypatch):
    return Counts(monkeypatch)


def budget_for(model, task, kind: str, examples: int, **terms) -> int:
    """The estimate of a pass over ``examples`` of the task's longest batch: a budget that fits about that many."""
    session = CircuitSession(model, task, split="all", batch_size=BATCH)
    P = max(int(b.clean.shape[1]) for b in session.batches)
    return estimate_peak(ModelWidths.of(model), kind, examples=examples, positions=P, **terms).total


# ---- chunked == unchunked ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(ATTRIBUTION))
def test_attribution_chunked_over_examples_and_positions_equals_unchunked(setup, method, counts):
    model, task = setup
    params = ATTRIBUTION[method]
    base = circuits.discover(model, task, method, split="all", batch_size=BATCH, check=False, **params)
    base_forwards, base_gradients = counts.take()
    budget = budget_for(model, task, "attribution", 2, sender_copies=2)
    chunked = circuits.discover(model, task, method, split="all", batch_size=BATCH, check=False,
                                memory_budget=budget, position_chunk=3, **params)
    forwards, gradients = counts.take()
    assert forwards > base_forwards and gradients > base_gradients  # examples and positions really chunked
    assert float(base.scores.abs().max()) > 1e-3
    torch.testing.assert_close(chunked.scores, base.scores, **TOL)


def test_eap_ig_budget_unstacks_steps(setup):
    """A budget for one step of 2 examples: the session allows 1 stacked step (of 4) and 2 examples per pass."""
    model, task = setup
    session = CircuitSession(model, task, split="all", batch_size=BATCH,
                             memory_budget=budget_for(model, task, "attribution", 2, sender_copies=2))
    assert session.fit("attribution", steps=4, sender_copies=2) == 1
    assert session.steps_per_pass == 1 and session.examples_per_pass == 2 and len(session.batches) == N // 2


def test_ensemble_fits_every_member(counts):
    """An ensemble's session is fitted for each member's pass: chunks only shrink, the stacked steps stay."""
    model, task = tiny_model("gpt2"), tiny_task(n=N, vocab=64)
    base = circuits.discover(model, task, "ensemble", members=["eap-ig", "eap"], split="all", batch_size=BATCH,
                             check=False)
    base_forwards, _ = counts.take()
    chunked = circuits.discover(model, task, "ensemble", members=["eap-ig", "eap"], split="all", batch_size=BATCH,
                                check=False, memory_budget=budget_for(model, task, "attribution", 2, sender_copies=2))
    forwards, _ = counts.take()
    assert forwards > base_forwards
    torch.testing.assert_close(chunked.scores, base.scores, **TOL)
    session = CircuitSession(model, task, split="all", batch_size=BATCH, examples_per_pass=2,
                             memory_budget=budget_for(model, task, "attribution", 2, sender_copies=2, steps=2))
    assert session.fit("attribution", steps=5, sender_copies=2) == 2
    assert session.fit("attribution") == 1 and session.fit("patched") == 1
    assert session.steps_per_pass == 2 and session.examples_per_pass == 2


def test_exact_chunked_over_examples_equals_unchunked(setup, counts):
    model, task = setup
    base = circuits.discover(model, task, "node-patching", split="all", batch_size=BATCH, check=False)
    base_forwards, _ = counts.take()
    chunked = circuits.discover(model, task, "node-patching", split="all", batch_size=BATCH, check=False,
                                memory_budget=budget_for(model, task, "patched", 2))
    forwards, _ = counts.take()
    assert forwards > base_forwards
    assert float(base.node_scores.abs().nan_to_num().max()) > 1e-3
    torch.testing.assert_close(chunked.node_scores, base.node_scores, equal_nan=True, **TOL)


def test_exact_edges_with_explicit_examples_per_pass(counts):
    model, task = tiny_model("gpt2"), tiny_task(n=N, vocab=64)
    base = circuits.discover(model, task, "exact", split="all", batch_size=BATCH, check=False)
    base_forwards, _ = counts.take()
    chunked = circuits.discover(model, task, "exact", split="all", batch_size=BATCH, check=False, examples_per_pass=4)
    forwards, _ = counts.take()
    assert forwards > base_forwards
    torch.testing.assert_close(chunked.scores, base.scores, **TOL)


@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
def test_evaluate_and_curve_chunked_equal_unchunked(setup, ablation, counts):
    model, task = setup
    scored = circuits.discover(model, task, "eap", split="all", batch_size=BATCH, check=False)
    circuit = scored.top_k(20)
    counts.take()
    budget = budget_for(model, task, "patched", 2, ablation=ablation)
    base = evaluate(model, task, circuit, ablation, split="all", batch_size=BATCH)
    base_forwards, _ = counts.take()
    chunked = evaluate(model, task, circuit, ablation, split="all", batch_size=BATCH, memory_budget=budget)
    forwards, _ = counts.take()
    assert forwards > base_forwards
    frame, base_frame = (torch.tensor(r.per_example[["metric", "kl", "faithfulness", "metric_full",
                                                      "metric_empty"]].to_numpy()) for r in (chunked, base))
    torch.testing.assert_close(frame[:, [0, 1, 3, 4]], base_frame[:, [0, 1, 3, 4]], **TOL)
    # per-example f divides by each example's M(full) - M(empty): its error is the metric's over that denominator
    f_error = (frame[:, 2] - base_frame[:, 2]).abs() * (base_frame[:, 3] - base_frame[:, 4]).abs()
    assert float(f_error.nan_to_num().max()) < 1e-5
    assert chunked.faithfulness == pytest.approx(base.faithfulness, rel=1e-5, abs=1e-5)
    assert base.kl > 1e-4

    fractions = (0.05, 0.2, 0.5, 1.0)
    curve = faithfulness_curve(model, task, scored, fractions=fractions, ablation=ablation, split="all",
                               batch_size=BATCH)
    base_forwards, _ = counts.take()
    chunked_curve = faithfulness_curve(model, task, scored, fractions=fractions, ablation=ablation, split="all",
                                       batch_size=BATCH, memory_budget=budget)
    forwards, _ = counts.take()
    assert forwards > base_forwards
    for key in ("faithfulness", "metric", "kl"):
        torch.testing.assert_close(torch.tensor(getattr(chunked_curve, key)), torch.tensor(getattr(curve, key)),
                                   equal_nan=True, **TOL)


# ---- refused before any forward --------------------------------------------------------------------------------
@pytest.mark.parametrize("run", [
    lambda m, t, g: circuits.discover(m, t, "eap-ig", split="all", memory_budget="1KB"),
    lambda m, t, g: circuits.discover(m, t, "eap", split="all", memory_budget=1024),
    lambda m, t, g: circuits.discover(m, t, "exact", split="all", memory_budget="1KB"),
    lambda m, t, g: evaluate(m, t, g, split="all", memory_budget="1KB"),
    lambda m, t, g: faithfulness_curve(m, t, g, split="all", memory_budget="1KB"),
], ids=["eap-ig", "eap", "exact", "evaluate", "curve"])
def test_a_run_that_cannot_fit_is_refused_before_any_forward(run, counts):
    model, task = tiny_model("llama"), tiny_task(n=N, vocab=64)
    graph = circuits.Graph.full(model.structure, scores=torch.randn(model.structure.n_senders,
                                                                    model.structure.n_receivers))
    counts.take()
    with pytest.raises(MemoryBudgetError) as info:
        run(model, task, graph)
    assert counts.take() == (0, 0)
    message = str(info.value)
    assert "needs about" in message and "memory budget of 1 KB" in message and "--memory-budget" in message
    assert "KB" in message.split("needs about")[1].split("(")[0]  # the estimate itself, in bytes


def test_explicit_steps_per_pass_that_cannot_fit_names_it():
    model, task = tiny_model("gpt2"), tiny_task(n=N, vocab=64)
    budget = budget_for(model, task, "attribution", 1, sender_copies=2, steps=2)
    with pytest.raises(MemoryBudgetError, match="steps_per_pass"):
        circuits.discover(model, task, "eap-ig", split="all", steps=8, steps_per_pass=8, memory_budget=budget)


# ---- the estimate and the defaults -----------------------------------------------------------------------------
def test_patched_row_estimate_is_the_documented_formula():
    """The session sizes a pass's circuits by the estimator's cost of one more circuit: on one example (fp32,
    4 heads, 2 kv groups: R = 12 head inputs) the buffer and the partial sum (S + 2 rows), the largest of the read
    (2R + 1) and the attention (R + 1 + 8 rows and the scores with their float32 softmax), the masks and the
    readout; position-aware masks add the model-dtype masks and a bool view per position, neuron masks [L, m]."""
    model = tiny_model("qwen2")
    w, s, d, V = ModelWidths.of(model), model.structure, model.spec.d_model, model.spec.W_U.shape[1]
    R, H = 3 * s.n_heads, s.n_heads
    L, m = len(model.spec.layers), model.spec.layers[0].mlp.d_hidden
    for P, K in ((8, 1), (64, 3)):
        def circuit(**reads):
            one, two = (estimate_peak(w, "patched", examples=1, positions=P, read_positions=K, circuits=c, **reads)
                        for c in (1, 2))
            return two.total - one.total
        transient = max((2 * R + 1) * P * d * 4, (R + 1 + 8) * P * d * 4 + H * P * P * 16)
        masks = s.n_senders * s.n_receivers * 8  # [1, S, R] in float32, the model's dtype and two bool copies
        row = (s.n_senders + 2) * P * d * 4 + masks + transient + K * V * 12
        assert circuit() == row
        assert circuit(by_position=True) == row + s.n_senders * s.n_receivers * P * (4 + 1)
        neuron_transient = max(transient, (3 * P * d + (3 + 2) * P * m) * 4)  # SwiGLU's 3 [P, m] and the mix's 2
        assert circuit(neurons=1) == row - transient + neuron_transient + L * m * 4


def test_no_budget_on_cpu_plans_as_before():
    model, task = tiny_model("gpt2"), tiny_task(n=N, vocab=64)
    session = CircuitSession(model, task, split="all", batch_size=BATCH)
    assert session.fit("attribution", steps=5, sender_copies=2) == 5
    assert len(session.batches) == math.ceil(N / BATCH) and session.position_chunk is None
    assert session.steps_per_pass is None and session.examples_per_pass is None


def test_estimate_terms_on_llama_8b_widths():
    """Llama-3.1-8B widths (hidden 4096, 32 heads, 8 kv heads, MLP 14336): every term is linear in the examples,
    the position chunk only shrinks the backward's per-head gradients, and bf16 halves the dtype-sized terms."""
    w = ModelWidths(n_layers=32, n_heads=32, n_kv_heads=8, d_model=4096, d_head=128, d_mlp=14336, vocab=128256,
                    n_senders=1 + 32 * 33, gated=True, itemsize=2)
    one = estimate_peak(w, "attribution", examples=4, positions=64, steps=5, sender_copies=2)
    two = estimate_peak(w, "attribution", examples=8, positions=64, steps=5, sender_copies=2)
    assert two.total == 2 * one.total
    assert one.senders == 2 * (1 + 32 * 33) * 4 * 64 * 4096 * 2  # clean outputs and differences [S, b, P, d]
    chunked = estimate_peak(w, "attribution", examples=8, positions=64, steps=5, sender_copies=2, position_chunk=8)
    assert chunked.backward_transient * 8 == two.backward_transient and chunked.saved == two.saved
    patched = estimate_peak(w, "patched", examples=8, positions=64, circuits=4)
    assert patched.senders == (3 + 32 * 33) * 32 * 64 * 4096 * 2 and patched.saved == 0  # [1 + S, c*b, P, d], partial
    fp32 = estimate_peak(dataclasses.replace(w, itemsize=4), "attribution", examples=8, positions=64, steps=5,
                         sender_copies=2)
    assert (fp32.senders, fp32.saved, fp32.ablated) == (2 * two.senders, 2 * two.saved, 2 * two.ablated)
    with pytest.raises(ValueError, match="kind"):
        estimate_peak(w, "training", examples=1, positions=1)


@pytest.mark.parametrize("text, expected", [("4GB", 4 * 2**30), ("512 MB", 512 * 2**20), ("1.5GiB", 3 * 2**29),
                                            ("2e9", 2_000_000_000), (4096, 4096), ("64k", 65536)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["-3GB", "lots", "0", "4 parsecs", "nan", True, -1, ""])
def test_parse_memory_refuses(text):
    with pytest.raises(ValueError, match="memory_budget"):
        parse_memory(text)


def test_cli_memory_flags_give_the_unchunked_scores(tmp_path):
    args = ["discover", "--model", "zoo:planted-ioi", "--n", "8", "--method", "eap", "--no-evaluate"]
    assert main([*args, "--out", str(tmp_path / "base.json")]) == 0
    assert main([*args, "--out", str(tmp_path / "chunked.json"), "--memory-budget", "64MB",
                 "--examples-per-pass", "1", "--position-chunk", "2"]) == 0
    model = circuits.load_model("zoo:planted-ioi")
    base, chunked = (circuits.Graph.load(tmp_path / f"{name}.json", model=model) for name in ("base", "chunked"))
    torch.testing.assert_close(chunked.scores, base.scores, **TOL)


def test_cli_too_small_budget_is_one_line(capsys):
    code = main(["discover", "--model", "zoo:planted-ioi", "--n", "8", "--method", "eap-ig", "--no-evaluate",
                 "--memory-budget", "2KB"])
    err = capsys.readouterr().err
    assert code == 2 and "memory budget of 2 KB" in err and "Traceback" not in err
