"""Tiny models and tasks for the evaluation tests (random weights, no tokenizer needed)."""

from __future__ import annotations

import pytest
import torch

from circuits.tasks import Metric, Task
from circuits.tasks.task import build_batch
from tests.conftest import tiny_model


def tiny_task(n: int = 16, seed: int = 0, metric: str = "logit_diff", vocab: int = 64, variable: bool = True,
              identical: bool = False) -> Task:
    """Random token pairs with a readout at each prompt's last real token (lengths 5..8 when ``variable``,
    so batches are right-padded and cut at different lengths)."""
    g = torch.Generator().manual_seed(seed)
    clean, corrupted, readouts = [], [], []
    for i in range(n):
        L = int(torch.randint(5, 9, (1,), generator=g)) if variable else 8
        c = torch.randint(3, vocab, (L,), generator=g).tolist()
        k = c if identical else torch.randint(3, vocab, (L,), generator=g).tolist()
        a, d = torch.randperm(vocab - 3, generator=g)[:2].add(3).tolist()
        clean.append(c)
        corrupted.append(list(k))
        readouts.append([(L - 1, [a], [d])])
    return Task(name="tiny", data=build_batch(clean, corrupted, readouts, 0), base_metric=Metric(metric),
                tokenizer=None, seed=seed)


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2")


@pytest.fixture(scope="module")
def task():
    return tiny_task()


@pytest.fixture(scope="module")
def scored(model):
    g = model.graph
    g.set_scores(torch.randn(g.structure.n_senders, g.structure.n_receivers,
                             generator=torch.Generator().manual_seed(3)))
    return g
