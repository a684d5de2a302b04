"""Neuron-level circuits as graphs: selection over heads and neurons, files, evaluate / curves / minimal at
level="neuron" (issue 20, point 3)."""

from __future__ import annotations

import pytest
import torch

import circuits
from circuits.discovery import discover
from circuits.graph.levels import edge_mask_of
from circuits.session import CircuitSession
from circuits.session.neurons import NeuronRuns
from circuits.tasks import task_vocabulary, word_level_tokenizer
from tests.discovery.conftest import perturbed_random_model


@pytest.fixture(scope="module")
def setup():
    tok = word_level_tokenizer(task_vocabulary())
    model = perturbed_random_model(tok, "gpt2", 2, dtype=torch.float32)
    task = circuits.load_task("ioi", model, n=16, seed=0)
    scored = discover(model, task, "eap-neurons", split="train", batch_size=8)
    return model, task, scored


def test_top_k_keeps_k_units_and_the_mlps_of_kept_neurons(setup):
    model, _, scored = setup
    s = model.structure
    c = scored.top_k(30, level="neuron")
    heads = [s.head_sender(layer, h) for layer in range(s.n_layers) for h in range(s.n_heads)]
    assert int(c.node_in_graph[heads].sum()) + c.n_neurons == 30
    for layer in range(s.n_layers):
        assert bool(c.node_in_graph[s.mlp_sender(layer)]) == bool(c.neuron_in_graph[layer].any())
    units = torch.cat([scored.node_scores[heads].double(), scored.neuron_scores.flatten().double()])
    threshold = torch.sort(units, descending=True).values[29]
    assert bool((scored.neuron_scores[c.neuron_in_graph] >= threshold).all())
    assert c.metadata["selection"]["level"] == "neuron"
    total = len(heads) + scored.neuron_scores.numel()
    assert scored.top_fraction(0.1, level="neuron").metadata["selection"]["k"] == int(0.1 * total)


@pytest.mark.parametrize("suffix", [".pt", ".json"])
def test_neuron_circuits_round_trip_through_files(setup, tmp_path, suffix):
    model, _, scored = setup
    for graph in (scored, scored.top_k(25, level="neuron")):
        path = graph.save(tmp_path / f"g{suffix}")
        loaded = circuits.Graph.load(path, model=model)
        assert torch.equal(loaded.neuron_in_graph, graph.neuron_in_graph)
        assert torch.allclose(loaded.neuron_scores.double(), graph.neuron_scores.double())
        assert loaded.n_neurons == graph.n_neurons
    plain = circuits.Graph.load(model.graph.save(tmp_path / f"plain{suffix}"), model=model)
    assert plain.neuron_scores is None and plain.neuron_in_graph is None


def test_evaluate_at_neuron_level(setup):
    model, task, scored = setup
    every = scored.top_k(scored.structure.n_layers * scored.structure.n_heads + scored.neuron_scores.numel(),
                         level="neuron")
    full = circuits.evaluate(model, task, every, level="neuron")
    assert full.faithfulness == pytest.approx(1.0, abs=1e-5) and full.n_neurons == scored.neuron_scores.numel()
    half = scored.top_k(60, level="neuron")
    result = circuits.evaluate(model, task, half, level="neuron")
    # the same circuit by hand: its edge mask and neuron mask through the session's neuron runs
    session = CircuitSession(model, task, split="validation")
    manual = NeuronRuns(session).circuit_metrics(edge_mask_of(half, True, "neuron")[None],
                                                 half.neuron_in_graph.float()[None]).metric
    f = (float(manual.mean()) - result.metric_empty) / (result.metric_full - result.metric_empty)
    assert result.faithfulness == pytest.approx(f, abs=1e-9)
    assert result.n_neurons == half.n_neurons < scored.neuron_scores.numel()
    # cutting every neuron of the kept MLPs differs from keeping them: the neuron mask is applied
    node_level = circuits.evaluate(model, task, half, level="node")
    assert abs(node_level.faithfulness - result.faithfulness) > 1e-3


def test_curve_and_minimal_at_neuron_level(setup):
    model, task, scored = setup
    curve = circuits.faithfulness_curve(model, task, scored, level="neuron", fractions=(0.0, 0.05, 0.3, 1.0))
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-5)
    assert curve.level == "neuron" and curve.k[-1] == 8 + scored.neuron_scores.numel()
    circuit = scored.minimal(model, task, 0.9, level="neuron")
    record = circuit.metadata["minimal"]
    assert record["faithfulness"] >= 0.9 and record["level"] == "neuron"
    evaluated = dict((k, f) for k, f in record["evaluated"])
    below = [f for k, f in evaluated.items() if k == record["k"] - 1]
    assert not below or below[0] < 0.9
    check = circuits.evaluate(model, task, circuit, level="neuron")
    assert check.faithfulness == pytest.approx(record["faithfulness"], abs=1e-9)


def test_neuron_level_needs_neuron_scores(setup):
    model, task, _ = setup
    with pytest.raises(circuits.graph.selection.SelectionError, match="neuron scores"):
        model.graph.top_k(3, level="neuron")
    with pytest.raises(circuits.graph.selection.SelectionError, match="neuron-level circuit"):
        circuits.evaluate(model, task, model.graph, level="neuron")
