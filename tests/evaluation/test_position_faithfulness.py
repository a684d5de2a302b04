"""Faithfulness of position-aware circuits (issue 20, points 1-2): evaluate, curves and minimal circuits over
edge-positions, and the induction `match` circuit that sits at three positions."""

from __future__ import annotations

import pytest
import torch

import circuits
from circuits.evaluation import evaluate, faithfulness_curve, minimal_circuit
from circuits.graph.selection import SelectionError
from circuits.session import CircuitSession


@pytest.fixture(scope="module")
def setup():
    """zoo:attn-only-2l on induction `match` at one index: pairs of 25 tokens, every one read at position 20, the
    replaced token at position 12."""
    model = circuits.load_model("zoo:attn-only-2l")
    task = circuits.load_task("induction", model, n=48, corruption="match", min_period=8, max_period=8, replaced=3,
                              seq_len=24)
    scored = circuits.discover(model, task, "eap", positions=True, show_progress=False)
    return model, task, scored


def test_discover_returns_a_position_aware_graph(setup):
    model, task, scored = setup
    s = model.structure
    assert scored.n_positions == 25 and scored.metadata["positions"] == 25
    assert scored.scores.shape == (s.n_senders, s.n_receivers, 25) and scored.n_edges == s.n_edges * 25
    free = circuits.discover(model, task, "eap", show_progress=False)
    torch.testing.assert_close(scored.summed().scores, free.scores, rtol=1e-5, atol=1e-7)


def test_evaluate_runs_the_circuit_s_edge_positions(setup):
    model, task, scored = setup
    circuit = scored.top_k(40, absolute=True)
    result = evaluate(model, task, circuit)
    session = CircuitSession(model, task, split="validation")
    direct = session.circuit_metrics(circuit.in_graph[None].float()).metric[0].mean()
    f = (float(direct) - float(session.metric_empty.mean())) / float(session.metric_full.mean() -
                                                                     session.metric_empty.mean())
    assert result.faithfulness == pytest.approx(f, abs=1e-6)
    assert result.n_edges == circuit.n_edges and result.n_distinct_edges == int(circuit.in_graph.any(-1).sum())
    # every edge at every position is the model; every edge at position 20 only is not (the heads' keys need 12, 13)
    every = circuits.Graph(model.structure, scores=scored.scores)
    assert evaluate(model, task, every).faithfulness == pytest.approx(1.0, abs=1e-6)
    at_read = torch.zeros_like(scored.in_graph)
    at_read[..., 20] = model.structure.edge_mask
    one = evaluate(model, task, circuits.Graph(model.structure, scores=scored.scores, in_graph=at_read), prune=False)
    assert one.faithfulness < 0.5 and evaluate(model, task, circuits.Graph(
        model.structure, scores=scored.scores, in_graph=at_read).summed()).faithfulness == pytest.approx(1.0, abs=1e-6)


def test_curve_fractions_count_edge_positions(setup):
    model, task, scored = setup
    fractions = (0.001, 0.01, 0.1, 1.0)
    curve = faithfulness_curve(model, task, scored, fractions=fractions, absolute=True)
    total = model.structure.n_edges * 25
    assert curve.k == [int(fr * total) for fr in fractions]
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-6) and curve.faithfulness[2] > 0.9


def test_the_match_circuit_is_smaller_by_position_and_sits_where_the_effect_is(setup):
    """Point 2: the position-aware circuit at f >= 0.9 keeps edges at the read position (20) and the two the key
    match runs through (12: the replaced token, 13: the token after it), and is smaller than the position-free one
    counted at every position. Sizes on this model: 5 edge-positions (5 distinct edges) vs 5 edges x 25."""
    model, task, scored = setup
    aware = minimal_circuit(model, task, scored, target=0.9, absolute=True)
    free = minimal_circuit(model, task, circuits.discover(model, task, "eap", show_progress=False), target=0.9,
                           absolute=True)
    kept = aware.in_graph.any(0).any(0).nonzero().flatten().tolist()
    logits = model.structure.receiver_index("logits")
    assert aware.metadata["minimal"]["faithfulness"] >= 0.9 and free.metadata["minimal"]["faithfulness"] >= 0.9
    assert bool(aware.in_graph[:, logits, 20].any()) and set(kept) <= {12, 13, 20}
    assert aware.n_edges < free.n_edges * 25
    assert aware.metadata["minimal"]["n_distinct_edges"] <= free.n_edges
    assert evaluate(model, task, aware).faithfulness >= 0.9


def test_a_graph_of_another_length_is_refused(setup):
    model, task, scored = setup
    longer = circuits.load_task("induction", model, n=8, corruption="match", min_period=8, max_period=8, replaced=3,
                                seq_len=30)
    with pytest.raises(SelectionError, match="25 positions but the pairs .* have 31 tokens"):
        evaluate(model, longer, scored.top_k(10))
    with pytest.raises(SelectionError, match="position-aware"):
        evaluate(model, task, scored.top_k(10), level="node")


def test_position_plot(setup, tmp_path):
    from circuits.plotting import draw_circuit, plot_position_scores

    _, _, scored = setup
    fig = plot_position_scores(scored.top_k(20, absolute=True), tmp_path / "positions.png", top=8)
    assert (tmp_path / "positions.png").stat().st_size > 10_000
    assert len(fig.axes[1].get_yticklabels()) == 8 and len(fig.axes[1].get_xticklabels()) == 25
    with pytest.raises(ValueError, match="no position axis"):
        plot_position_scores(scored.summed())
    fig = draw_circuit(scored.top_k(20, absolute=True), tmp_path / "circuit.png")
    assert "summed over its 25 positions" in fig.axes[0].get_title(loc="left")


def test_cli_discovers_and_evaluates_position_aware(tmp_path, capsys):
    from circuits.cli import main

    out = tmp_path / "induction.json"
    code = main(["discover", "--model", "zoo:attn-only-2l", "--task", "induction", "--n", "16", "--method", "eap",
                 "--positions", "--align-positions", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "@" in text and out.exists() and out.with_name("induction.positions.pt").exists()
    graph = circuits.Graph.load(out, model=circuits.load_model("zoo:attn-only-2l"))
    assert graph.n_positions == 41
