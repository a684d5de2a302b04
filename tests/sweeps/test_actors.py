"""EvaluatorPool: circuits evaluated by 2 Ray actors (model replicas) give the result of one process."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("ray")

import circuits  # noqa: E402
from circuits.session import CircuitSession  # noqa: E402
from circuits.sweeps.actors import EvaluatorPool  # noqa: E402
from circuits.sweeps.job import resolve_model  # noqa: E402


@pytest.fixture(scope="module")
def setup(ray_cluster):
    torch.set_num_threads(1)
    model = resolve_model("tiny-random")
    task = circuits.load_task("ioi", model, n=12, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scored = circuits.discover(model, task, "eap", batch_size=6)
    pool = EvaluatorPool("tiny-random", task, n_actors=2, batch_size=6, circuits_per_pass=4, gpus=0)
    yield model, task, scored, pool
    pool.shutdown()


def test_run_equals_one_process(setup):
    model, task, scored, pool = setup
    gen = torch.Generator().manual_seed(0)
    s = model.structure
    masks = torch.rand(7, s.n_senders, s.n_receivers, generator=gen) > 0.5
    runner = CircuitSession(model, task, ablation="corrupted", split="validation", batch_size=6, circuits_per_pass=4)
    one, spread = runner.circuit_metrics(masks, kl=True), pool.circuit_metrics(masks, kl=True)
    metric, kl, p_metric, p_kl = one.metric, one.kl, spread.metric, spread.kl
    assert torch.equal(metric, p_metric) and torch.equal(kl, p_kl)  # bitwise, in the same order
    assert torch.equal(runner.metric_full, pool.metric_full) and torch.equal(runner.metric_empty, pool.metric_empty)


def test_faithfulness_curve_equals_one_process(setup):
    model, task, scored, pool = setup
    one = circuits.evaluation.mib_scores(model, task, scored, batch_size=6, circuits_per_pass=4)
    spread = pool.mib_scores(scored)
    # equal up to rounding: which nodes a patched pass may skip depends on the circuits sharing the pass
    assert spread["cpr"] == pytest.approx(one["cpr"], abs=1e-5) and spread["cmd"] == pytest.approx(one["cmd"], abs=1e-5)
    assert spread["signed"].faithfulness == pytest.approx(one["signed"].faithfulness, abs=1e-5)
    a, b = spread["absolute"].to_frame(), one["absolute"].to_frame()
    assert list(a.columns) == list(b.columns) and a["k"].equals(b["k"]) and a["n_edges"].equals(b["n_edges"])
    curve = pool.faithfulness_curve(scored, absolute=True)
    assert curve.faithfulness == pytest.approx(one["absolute"].faithfulness, abs=1e-5)


def test_acdc_candidates_on_the_pool(setup):
    model, task, _, pool = setup
    kwargs = dict(batch_size=6, threshold=0.005, circuits_per_pass=8, max_receivers=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = circuits.discover(model, task, "acdc", **kwargs)
        with pool.acdc():
            assert circuits.discovery.acdc.EVALUATOR.get().__name__ == "PooledEvaluator"
            spread = circuits.discover(model, task, "acdc", **kwargs)
    assert circuits.discovery.acdc.EVALUATOR.get() is None  # restored
    tested = one.metadata["result"]["n_circuits_evaluated"]
    assert tested > 10 and not bool(one.in_graph.all())  # a real search: candidates tested, edges removed
    assert torch.equal(one.in_graph, spread.in_graph)
    torch.testing.assert_close(one.scores, spread.scores, rtol=0, atol=2e-6)  # same objectives up to rounding
    assert spread.metadata["result"]["n_circuits_evaluated"] == one.metadata["result"]["n_circuits_evaluated"]
