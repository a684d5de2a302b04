"""evaluate / faithfulness_curve / minimal_circuit against manual computations with the patched forward."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import circuits
from circuits.evaluation import (MIB_FRACTIONS, FaithfulnessCurve, FaithfulnessWarning, cmd, cpr,
                                 evaluate, faithfulness_curve, mib_scores, minimal_circuit)
from circuits.graph.io import GraphMismatchError
from circuits.interventions.ablation import ablated_outputs
from circuits.session import CircuitSession
from circuits.tasks import Metric

from .conftest import tiny_task


def manual(model, task, circuit, ablation):
    """Faithfulness the slow, obvious way: whole split in one batch, full padded length, full logits."""
    val, train = task.validation, task.train
    ids, mask, corr = val.clean, val.attention_mask, val.corrupted
    ablated = ablated_outputs(model, ablation, ids, mask, corrupted_ids=corr, reference_ids=train.clean,
                              reference_mask=train.attention_mask)
    with torch.no_grad():
        patched = model.patched_logits(ids, circuit.in_graph.float(), ablated, mask)
        full = model.logits(ids, mask)
        empty = model.patched_logits(ids, torch.zeros_like(circuit.in_graph, dtype=torch.float), ablated, mask)
    m = val.metric
    mc, mf, me = m(patched), m(full), m(empty)
    f = (mc.mean() - me.mean()) / (mf.mean() - me.mean())
    kl = Metric("kl")(patched, val.data, full_logits=full)
    return float(f), mc, float(mf.mean()), float(me.mean()), kl


@pytest.mark.parametrize("ablation", ["corrupted", "mean", "zero"])
def test_intermediate_circuit_equals_manual_patching(model, task, scored, ablation):
    circuit = scored.top_k(30)
    assert 0 < circuit.n_edges < model.structure.n_edges
    result = evaluate(model, task, circuit, ablation=ablation, batch_size=3)  # 8 examples: uneven batches
    f, mc, mf, me, kl = manual(model, task, circuit, ablation)
    assert result.n_edges == circuit.n_edges and result.n_examples == len(task.validation)
    assert result.metric_full == pytest.approx(mf, abs=1e-5)
    assert result.metric_empty == pytest.approx(me, abs=1e-5)
    assert result.faithfulness == pytest.approx(f, abs=1e-4)
    assert abs(f) > 0.01 and abs(f - 1) > 0.01  # a real intermediate point, so a wrong formula would show
    # per-example rows come back in the split's order, whatever the batching did
    assert torch.allclose(torch.tensor(result.per_example["metric"].values), mc.double(), atol=1e-5)
    assert torch.allclose(torch.tensor(result.per_example["kl"].values), kl.double(), atol=1e-5)
    assert result.kl == pytest.approx(float(kl.mean()), abs=1e-6)


def test_full_is_one_and_empty_is_zero(model, task):
    full = evaluate(model, task, model.graph)
    assert full.faithfulness == pytest.approx(1.0, abs=1e-5)
    assert full.kl == pytest.approx(0.0, abs=1e-7)
    with pytest.warns(FaithfulnessWarning, match="no edges"):
        empty = evaluate(model, task, circuits.Graph.empty(model.structure))
    assert empty.faithfulness == pytest.approx(0.0, abs=1e-5)
    # with corrupted ablation the empty circuit is the corrupted run itself
    val = task.validation
    with torch.no_grad():
        corrupted = val.metric(model.logits(val.corrupted, val.attention_mask))
    assert empty.metric == pytest.approx(float(corrupted.mean()), abs=1e-5)
    assert list(empty.per_example.columns) == ["example", "metric", "metric_full", "metric_empty", "kl",
                                               "faithfulness"]
    assert set(full.to_dict()) >= {"faithfulness", "metric", "kl", "n_edges", "ablation"}


def test_kl_metric_task(model, scored):
    """With a divergence metric, f is defined on it as configured: f = 1 - KL(C) / KL(empty)."""
    task = tiny_task(metric="kl")
    result = evaluate(model, task, scored.top_k(30))
    assert result.metric_full == pytest.approx(0.0, abs=1e-7)
    assert result.faithfulness == pytest.approx(1 - result.metric / result.metric_empty, abs=1e-6)
    assert result.metric == pytest.approx(result.kl, abs=1e-6)


def test_node_level_circuit(model, task):
    """A circuit given by nodes (like the published induction heads) runs the edges between them."""
    st = model.structure
    nodes = torch.zeros(st.n_nodes, dtype=torch.bool)
    for name in ("input", "a0.h1", "a1.h2", "m1", "logits"):
        nodes[st.node_index(name)] = True
    circuit = circuits.Graph(st, in_graph=torch.zeros(st.n_senders, st.n_receivers, dtype=torch.bool),
                             node_in_graph=nodes)
    edges = [e for e in st.edge_names() if all(p.split("<")[0] in ("input", "a0.h1", "a1.h2", "m1", "logits")
                                                  for p in e.split("->"))]
    by_edges = circuits.Graph.from_edges(st, edges)
    a = evaluate(model, task, circuit, level="node")
    b = evaluate(model, task, by_edges)
    assert a.n_edges == b.n_edges > 0
    assert a.faithfulness == pytest.approx(b.faithfulness, abs=1e-6)


# ---- curves -----------------------------------------------------------------------------------------------------
def test_cpr_cmd_against_hand_computed_curve():
    f = [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 0.9, 1.0, 1.2, 1.0]
    # trapezoids on MIB's fractions, worked by hand:
    # .001*.1 + .003*.3 + .005*.45 + .01*.55 + .03*.7 + .05*.85 + .1*.95 + .3*1.1 + .5*1.1
    assert cpr(MIB_FRACTIONS, f) == pytest.approx(1.04725, abs=1e-12)
    # |1 - f| = 1 .8 .6 .5 .4 .2 .1 0 .2 0 (the 1.2 point counts as 0.2 above the model, not -0.2)
    # .001*.9 + .003*.7 + .005*.55 + .01*.45 + .03*.3 + .05*.15 + .1*.05 + .3*.1 + .5*.1
    assert cmd(MIB_FRACTIONS, f) == pytest.approx(0.11175, abs=1e-12)
    curve = FaithfulnessCurve(fractions=MIB_FRACTIONS, k=[0] * 10, n_edges=[0] * 10, n_nodes=[0] * 10,
                              faithfulness=f, metric=f, kl=f, metric_full=1.0, metric_empty=0.0, absolute=False,
                              ablation="corrupted", level="edge", selection="top_k", metric_name="logit_diff",
                              task="t", split="validation", n_examples=1)
    assert (curve.cpr, curve.cmd) == (pytest.approx(1.04725), pytest.approx(0.11175))
    assert curve.average == pytest.approx(sum(f) / 10)
    # log-scale variant (older MIB scripts): first interval is log(2) wide
    assert cpr([0.001, 0.002], [0.0, 0.2], log_scale=True) == pytest.approx(math.log(2) * 0.1)


def test_curve_is_batched_and_equals_per_point_evaluation(model, task, scored):
    fractions = (0.05, 0.1, 0.2, 0.5, 1.0)
    curve = faithfulness_curve(model, task, scored, fractions=fractions, absolute=True)
    frame = curve.to_frame()
    assert list(frame["fraction"]) == list(fractions)
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-5)
    n = model.structure.n_edges
    assert curve.k == [int(f * n) for f in fractions]
    for i, circuit in enumerate(curve.circuits):
        assert circuit.n_edges == curve.n_edges[i]
        if circuit.n_edges == 0:
            assert curve.faithfulness[i] == pytest.approx(0.0, abs=1e-6)
            continue
        single = evaluate(model, task, circuit)
        assert single.faithfulness == pytest.approx(curve.faithfulness[i], abs=1e-5)
        assert single.kl == pytest.approx(curve.kl[i], abs=1e-6)
    assert curve.cpr == pytest.approx(cpr(fractions, curve.faithfulness))
    assert curve.cmd == pytest.approx(cmd(fractions, curve.faithfulness))
    assert curve.to_dict()["cpr"] == curve.cpr


def test_all_points_run_in_one_patched_forward_per_batch(model, task, scored):
    masks = torch.stack([scored.top_k(k).in_graph for k in (20, 30, 40, 60)] +
                        [scored.top_k(30).in_graph, model.graph.in_graph,
                         torch.zeros_like(model.graph.in_graph)])  # a duplicate, the full and the empty circuit
    runner = CircuitSession(model, task, ablation="corrupted", split="validation", batch_size=64)
    metric = runner.circuit_metrics(masks, kl=True).metric
    assert runner.forwards == 1  # 4 distinct circuits, one batch of examples: one patched forward
    assert torch.equal(metric[1], metric[4])
    assert torch.allclose(metric[5], runner.metric_full) and torch.allclose(metric[6], runner.metric_empty)
    chunked = CircuitSession(model, task, ablation="corrupted", split="validation", batch_size=3, circuits_per_pass=2)
    metric2 = chunked.circuit_metrics(masks, kl=True).metric
    assert chunked.forwards == 3 * 2  # 3 batches x 2 chunks of circuits
    assert torch.allclose(metric, metric2, atol=1e-5)


def test_mib_scores_runs_signed_and_absolute_curves(model, task, scored):
    out = mib_scores(model, task, scored, fractions=(0.1, 0.5, 1.0))
    signed = faithfulness_curve(model, task, scored, fractions=(0.1, 0.5, 1.0))
    assert out["cpr"] == pytest.approx(signed.cpr, abs=1e-6)
    assert out["absolute"].absolute and not out["signed"].absolute
    assert out["cmd"] == pytest.approx(out["absolute"].cmd)


# ---- minimal circuit --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("points_per_pass", [1, 3])
def test_minimal_circuit_is_the_bisection_boundary(model, task, scored, points_per_pass):
    target = 0.8
    circuit = minimal_circuit(model, task, scored, target, points_per_pass=points_per_pass)
    info = circuit.metadata["minimal"]
    k = info["k"]
    assert circuit.n_edges == scored.top_k(k).n_edges
    assert evaluate(model, task, scored.top_k(k)).faithfulness >= target
    assert evaluate(model, task, scored.top_k(k - 1)).faithfulness < target
    assert info["faithfulness"] >= target > info["faithfulness_at_k_minus_1"]


def test_graph_minimal_is_minimal_circuit(model, task, scored):
    """DESIGN.md's ``scored.minimal(...)`` is the same search as ``minimal_circuit``."""
    a = scored.minimal(model, task, 0.8)
    b = minimal_circuit(model, task, scored, 0.8)
    assert torch.equal(a.in_graph, b.in_graph) and a.metadata["minimal"]["k"] == b.metadata["minimal"]["k"]


def test_minimal_circuit_rejects_bad_targets(model, task, scored):
    with pytest.raises(ValueError, match="target"):
        minimal_circuit(model, task, scored, 1.5)


# ---- bad input ----------------------------------------------------------------------------------------------------
def test_circuit_from_another_model_is_refused(model, task):
    other = circuits.Graph.full(circuits.GraphStructure(n_layers=3, n_heads=4), metadata={"model": "other"})
    with pytest.raises(GraphMismatchError, match="3 layers"):
        evaluate(model, task, other)
    with pytest.raises(GraphMismatchError):
        faithfulness_curve(model, task, other)
    with pytest.raises(TypeError, match="circuits.Graph"):
        evaluate(model, task, {"a0.h0->logits"})


def test_undefined_faithfulness_is_nan_with_a_warning(model, scored):
    task = tiny_task(identical=True)  # corrupted == clean: M(full) == M(empty)
    with pytest.warns(FaithfulnessWarning, match="undefined"):
        result = evaluate(model, task, scored.top_k(30))
    assert math.isnan(result.faithfulness)
    assert result.per_example["faithfulness"].isna().all()
    with pytest.warns(FaithfulnessWarning, match="undefined"):
        curve = faithfulness_curve(model, task, scored, fractions=(0.5, 1.0))
    assert math.isnan(curve.cpr) and math.isnan(curve.cmd)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="undefined"):
            minimal_circuit(model, task, scored)


def test_bad_options(model, task, scored):
    with pytest.raises(ValueError, match="ablation"):
        evaluate(model, task, scored, ablation="resample-everything")
    with pytest.raises(ValueError, match="split"):
        evaluate(model, task, scored, split="test")
    with pytest.raises(ValueError, match="too few"):
        evaluate(model, task[:1], scored)
    with pytest.raises(ValueError, match="fractions"):
        faithfulness_curve(model, task, scored, fractions=(0.5, 0.1))
    unscored = model.graph
    with pytest.warns(FaithfulnessWarning, match="all NaN or all equal"):
        faithfulness_curve(model, task, unscored, fractions=(0.5, 1.0))


def test_evaluate_many_shares_one_pass(model, task, scored):
    from circuits.evaluation import evaluate_many

    circuits_ = [scored.top_k(20), scored.top_k(45), model.graph]
    many = evaluate_many(model, task, circuits_)
    for c, r in zip(circuits_, many):
        assert r.faithfulness == pytest.approx(evaluate(model, task, c).faithfulness, abs=1e-6)
        assert r.n_edges == c.n_edges
