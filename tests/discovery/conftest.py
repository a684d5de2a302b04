"""Discovery fixtures: a small random model whose edges matter, with an IOI task on its word-level vocabulary (ACDC,
edge pruning); the planted models with their tasks and ground truths; an interruption after the n-th checkpoint."""

from __future__ import annotations

import pytest
import torch

import circuits
import circuits.discovery.checkpoint as checkpoint_mod
from circuits.models.random import random_model
from circuits.session import CircuitSession
from circuits.tasks import task_vocabulary, word_level_tokenizer
from circuits.zoo import task_file

PLANTED = ["planted-induction", "planted-ioi"]


def perturbed_random_model(tokenizer, family: str, n_layers: int, dtype=torch.float64, seed: int = 0, **config):
    """A random ``family`` model (4 heads, d 32) with every weight, norm and bias moved by N(0, 0.3): every term of
    the forward matters, so a wrong formula or a stale held output shows in the numbers."""
    model = random_model(family, n_layers=n_layers, n_heads=4, d_model=32, vocab_size=len(tokenizer),
                         tokenizer=tokenizer, n_ctx=64, dtype=dtype, seed=seed, **config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.hf.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def assert_exact_is_manual_patching(model, task, scores, edge_names) -> None:
    """Exact scores against their definition (corrupted ablation, all pairs): the full metric minus the metric
    with that one edge cut by an [S, R] mask."""
    batch = task.as_batch()
    s = model.structure
    ablated = circuits.interventions.ablation.ablated_outputs(model, "corrupted", batch.clean, batch.attention_mask,
                                                              corrupted_ids=batch.corrupted)
    full = task.base_metric(model.logits(batch.clean, batch.attention_mask), batch).mean()
    for name in edge_names:
        i, j = s.edge_index(name)
        mask = torch.ones(s.n_senders, s.n_receivers, dtype=torch.float64)
        mask[i, j] = 0
        cut = task.base_metric(model.patched_logits(batch.clean, mask, ablated, attention_mask=batch.attention_mask),
                               batch).mean()
        assert float(scores[i, j]) == pytest.approx(float(full - cut), rel=1e-5, abs=1e-9), name  # float32 metric


@pytest.fixture(scope="module", params=PLANTED)
def planted(request):
    """``(name, model, task, ground truth)`` of each planted model, 32 pairs."""
    name = request.param
    model = circuits.load_model(f"zoo:{name}", device="cpu")
    task = circuits.load_task(task_file(name), model, n=32, seed=1)
    truth = circuits.Graph.load(circuits.models.loading.ZOO_DIR / name / "ground_truth.json", model=model)
    return name, model, task, truth


@pytest.fixture
def interrupt_after_saves(monkeypatch):
    """``interrupt_after_saves(n)``: every checkpoint saves at once, and the n-th save from now is followed by a
    KeyboardInterrupt, as if the user stopped the run just after it; ``interrupt_after_saves(None)``: saves as usual."""
    original = checkpoint_mod.Checkpoint.maybe_save

    def arm(n: int | None) -> None:
        if n is None:
            monkeypatch.setattr(checkpoint_mod.Checkpoint, "maybe_save", original)
            return
        calls = {"n": 0}

        def save_then_die(self, state):
            self.every = 0
            original(self, state)
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt("simulated interruption")

        monkeypatch.setattr(checkpoint_mod.Checkpoint, "maybe_save", save_then_die)

    return arm


@pytest.fixture(scope="module")
def setup():
    tok = word_level_tokenizer(task_vocabulary())
    # initializer_range 0.3: a random model whose edges matter (KL full vs ablated ~0.24), so thresholds bite
    m = random_model("gpt2", n_layers=2, n_heads=4, d_model=32, vocab_size=len(tok), tokenizer=tok, n_ctx=64,
                     initializer_range=0.3)
    task = circuits.load_task("ioi", m, n=16, seed=0)
    return m, task


def make_ctx(setup, ablation="corrupted"):
    """The session on the task's training split, batches of 8."""
    m, task = setup
    return CircuitSession(m, task.train, ablation=ablation, batch_size=8)
