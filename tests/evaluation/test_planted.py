"""Planted-circuit models (the zoo): the planted circuit is faithful, and ground-truth scoring sees it."""

from __future__ import annotations

import pytest
import torch

import circuits
from circuits.evaluation import auroc, evaluate, minimal_circuit, precision_recall_at_size


@pytest.fixture(scope="module")
def planted():
    # The bundled model ships with the package: if it cannot load, the package is broken and these tests fail.
    from circuits import zoo

    model = circuits.load_model("zoo:planted-ioi")
    task = circuits.load_task(zoo.task_file("planted-ioi"), model, n=16)
    truth = zoo.ground_truth("planted-ioi", model)
    return model, task, truth


def test_planted_circuit_is_faithful_and_recovered(planted):
    model, task, truth = planted
    result = evaluate(model, task, truth)
    assert result.faithfulness == pytest.approx(1.0, abs=0.02)
    # scores that rank the planted edges first: AUROC 1, and the minimal circuit is the planted one
    scored = truth.copy()
    scored.set_scores(truth.in_graph.double() + 0.01 * torch.rand(truth.in_graph.shape, dtype=torch.float64,
                                                                   generator=torch.Generator().manual_seed(0)))
    assert auroc(scored, truth) == 1.0 and auroc(scored, truth, level="node") == 1.0
    assert precision_recall_at_size(scored, truth)["precision"] == 1.0
    small = minimal_circuit(model, task, scored, target=0.9)
    assert small.n_edges <= truth.n_edges and set(small.edges) <= set(truth.edges)
