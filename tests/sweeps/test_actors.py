"""EvaluatorPool: discovery and circuits evaluated by 2 Ray actors (model replicas) give the result of one process."""

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
    task = circuits.load_task("ioi", model, n=24, seed=0)  # 12 training pairs: 4 batches of 3 for discovery
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


def test_neuron_curve_equals_one_process(setup):
    """A neuron-level curve's circuits (heads and MLP neurons) split over the actors, as edge curves."""
    model, task, _, pool = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scored = circuits.discover(model, task, "eap-neurons", batch_size=6)
        one = circuits.faithfulness_curve(model, task, scored, level="neuron", batch_size=6, circuits_per_pass=4)
    spread = pool.faithfulness_curve(scored, level="neuron")
    assert len(set(one.faithfulness)) > 2  # not a flat curve
    assert spread.k == one.k and spread.n_edges == one.n_edges and spread.level == "neuron"
    assert spread.faithfulness == pytest.approx(one.faithfulness, abs=1e-5)
    assert spread.kl == pytest.approx(one.kl, abs=1e-6)


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = pool.discover("acdc", **kwargs)  # the same through the pool's discover
    assert torch.equal(one.in_graph, again.in_graph)


# Attribution splits the batches: each share's scores are its sum over examples divided by the whole run's
# example count, and the driver adds the shares. Only the order of the float32 additions differs from one
# process (relative rounding ~1e-7 per addition), so 1e-5 of the largest |score| bounds it; a share counted
# twice, lost, or normalised by its own size would be off by ~25-100%.
# Neuron-level methods (heads and MLP neurons: NeuronScores, added up field by field) split the same way, their
# attribution measured at ~3e-7 of the largest score, so asserted at 1e-6.
ATTRIBUTION = [("eap", {}), ("eap-ig", {"steps": 3}), ("eap-ig-activations", {"steps": 2}), ("node-ap", {}),
               ("gim", {"steps": 2}), ("relp", {"steps": 2}), ("eap-neurons", {}), ("eap-ig-neurons", {"steps": 2})]
# Patching splits its passes: each score is computed whole in one pass, so the shares add up to it exactly.
PATCHING = [("exact", {"circuits_per_pass": 4}), ("node-patching", {}), ("neuron-patching", {"circuits_per_pass": 48})]


def _scores(graph):
    """Edge scores on the graph's edges ``[E]``, or node scores ``[n_nodes]`` (logits NaN), then a neuron-level
    graph's neuron scores ``[L * m]``."""
    if graph.node_scores is None:
        return graph.scores[graph.structure.edge_mask]
    if graph.neuron_scores is None:
        return graph.node_scores
    return torch.cat([graph.node_scores, graph.neuron_scores.flatten()])


@pytest.mark.parametrize("method,params", ATTRIBUTION + PATCHING, ids=lambda x: x if isinstance(x, str) else "")
def test_discover_on_the_pool_equals_one_process(setup, method, params):
    model, task, _, pool = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = circuits.discover(model, task, method, batch_size=3, **params)
    spread = pool.discover(method, batch_size=3, **params)
    a, b = _scores(one), _scores(spread)
    assert torch.equal(a.isnan(), b.isnan())  # node methods: logits NaN; edge methods: none
    a, b = a[~a.isnan()], b[~b.isnan()]
    assert float(a.abs().max()) > 0 and (a != 0).float().mean() > 0.9  # real scores, not an empty graph
    if (method, params) in PATCHING:  # the shares are disjoint passes, the same passes as one process
        assert torch.equal(a, b)
    else:
        tolerance = 1e-6 if circuits.discovery.METHODS[method].level == "neuron" else 1e-5
        assert float((a - b).abs().max()) <= tolerance * float(a.abs().max())
    assert spread.metadata["params"] == one.metadata["params"] and spread.metadata["n_examples"] == 12
    assert spread.metadata["method"] == method and spread.metadata["split"] == "train"


def test_ensemble_on_the_pool_equals_one_process(setup):
    """Each member spread over the pool; the rank combination of members whose scores agree to rounding."""
    model, task, _, pool = setup
    params = {"members": ["eap", "exact"], "combine": "min"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = circuits.discover(model, task, "ensemble", batch_size=3, **params)
    spread = pool.discover("ensemble", batch_size=3, **params)
    a, b = _scores(one), _scores(spread)
    assert 0.5 < float(a.abs().max()) <= 1.0  # combined normalised ranks
    # ranks are equal unless two of eap's scores are within rounding of each other: a few ties may swap
    assert float((a - b).abs().max()) <= 0.05 and float((a == b).float().mean()) > 0.98
    assert [m["method"] for m in spread.metadata["result"]["members"]] == ["eap", "exact"]


def test_discover_on_the_pool_refuses_sequential_methods(setup):
    _, _, _, pool = setup
    with pytest.raises(circuits.discovery.DiscoveryError, match="'edge-pruning' runs in one process.*eap-ig") as err:
        pool.discover("edge-pruning")
    assert all(name in str(err.value) for name in ("eap-neurons", "eap-ig-neurons", "neuron-patching"))
    with pytest.raises(circuits.discovery.DiscoveryError, match="takes no checkpoint"):
        pool.discover("exact", checkpoint="x.ckpt")


def test_a_spread_run_keeps_the_driver_s_chunks(setup):
    """The replicas run the sub-batches and position chunks of the driver's session (given, or fitted to its
    ``memory_budget``): more pieces than the unchunked run, and the scores of one process."""
    model, task, _, pool = setup
    chunks = {"examples_per_pass": 2, "position_chunk": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = circuits.discover(model, task, "eap", batch_size=3)
        one = circuits.discover(model, task, "eap", batch_size=3, **chunks)
    progress: list[tuple[int, int]] = []
    pool.on_progress = lambda done, total: progress.append((done, total))
    try:
        spread = pool.discover("eap", batch_size=3, **chunks)
    finally:
        pool.on_progress = None
    assert progress and progress[-1] == (8, 8)  # 4 batches of 3 re-cut into 8 sub-batches of 2 and 1 examples
    a, b, c = (_scores(g) for g in (whole, one, spread))
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())
    assert float((b - c).abs().max()) <= 1e-5 * float(b.abs().max())


def test_grouped_kv_graphs_on_the_pool_equal_one_process(ray_cluster):
    """A grouped-query model's grouped graph (k/v receivers per key/value group) spread over 2 replicas: the
    replicas run the driver's graph, so discovery and the curve equal one process's on the grouped graph. (cpus=0:
    the module's pool holds the test cluster's CPUs.)"""
    from circuits.tasks import task_vocabulary, word_level_tokenizer
    from tests.discovery.conftest import perturbed_random_model

    per_head = perturbed_random_model(word_level_tokenizer(task_vocabulary()), "llama", 2, dtype=torch.float32,
                                      n_kv_heads=2)
    grouped = per_head.with_grouped_kv(True)
    task = circuits.load_task("ioi", per_head, n=12, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = circuits.discover(grouped, task, "eap", batch_size=3)
        curve_one = circuits.faithfulness_curve(grouped, task, one, fractions=[0.1, 0.5], batch_size=3)
    with EvaluatorPool(per_head, task, n_actors=2, batch_size=3, gpus=0, cpus=0,
                       grouped_kv=True) as pool:
        spread = pool.discover("eap", batch_size=3)
        curve = pool.faithfulness_curve(spread, fractions=[0.1, 0.5])
    assert spread.structure.grouped_kv and spread.structure.n_edges == grouped.structure.n_edges
    a, b = _scores(one), _scores(spread)
    assert float(a.abs().max()) > 0 and float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())
    torch.testing.assert_close(torch.tensor(curve.faithfulness), torch.tensor(curve_one.faithfulness),
                               rtol=1e-5, atol=1e-6)
