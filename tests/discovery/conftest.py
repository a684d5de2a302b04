"""A small random model whose edges matter, with an IOI task on its word-level vocabulary (ACDC, edge pruning)."""

from __future__ import annotations

import pytest

import circuits
from circuits.session import CircuitSession
from circuits.models.random import random_model
from circuits.tasks import task_vocabulary, word_level_tokenizer


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
