"""Discovery fixtures: a small random model whose edges matter, with an IOI task on its word-level vocabulary (ACDC,
edge pruning); the planted models with their tasks and ground truths; an interruption after the n-th checkpoint."""

from __future__ import annotations

import pytest

import circuits
import circuits.discovery.checkpoint as checkpoint_mod
from circuits.models.random import random_model
from circuits.session import CircuitSession
from circuits.tasks import task_vocabulary, word_level_tokenizer
from circuits.zoo import task_file

PLANTED = ["planted-induction", "planted-ioi"]


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
