"""``circuits discover --workers 2`` and ``circuits evaluate --curve --workers 2``: one run on two Ray actors,
from the command line, with one process's result (on the shared local cluster, which the commands reuse)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

pytest.importorskip("ray")

import circuits  # noqa: E402
from circuits.cli import main  # noqa: E402


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


COMMON = ["--model", "tiny-random", "--task", "ioi", "--n", 16, "--batch-size", 4]


def discover_on_two_workers(capsys, out, method, **params):
    """``circuits discover --method METHOD --workers 2 --out OUT``, and the same discovery in this process:
    ``(model, task, one process's graph, the spread run's graph)``."""
    options = [arg for name, value in params.items() for arg in ("--param", f"{name}={value}")]
    code, stdout, err = run(capsys, "discover", *COMMON, "--method", method, *options, "--workers", 2,
                            "--no-evaluate", "--out", out)
    assert code == 0, err
    assert "ray    2 actor(s), each loading tiny-random" in stdout
    model = circuits.load_model("tiny-random")
    task = circuits.load_task("ioi", model, n=16, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = circuits.discover(model, task, method, batch_size=4, **params)
    return model, task, one, circuits.Graph.load(out, model=model)


def test_discover_and_curve_on_two_workers(ray_cluster, capsys, tmp_path):
    model, task, one, spread = discover_on_two_workers(capsys, tmp_path / "spread.json", "eap-ig", steps=2)
    edges = model.structure.edge_mask
    a, b = one.scores[edges], spread.scores[edges]
    assert float(a.abs().max()) > 0
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())  # float32 sums in another order

    code, out, err = run(capsys, "evaluate", *COMMON, "--graph", tmp_path / "spread.json", "--curve", "--workers", 2,
                         "--save", tmp_path / "curve.json")
    assert code == 0, err
    saved = json.loads((tmp_path / "curve.json").read_text())["curve"]
    alone = circuits.faithfulness_curve(model, task, spread, batch_size=4)
    assert saved["cpr"] == pytest.approx(alone.cpr, abs=1e-5) and saved["cmd"] == pytest.approx(alone.cmd, abs=1e-5)
    assert saved["faithfulness"] == pytest.approx(list(alone.faithfulness), abs=1e-5)


def test_neuron_discovery_on_two_workers(ray_cluster, capsys, tmp_path):
    """Neuron patching's passes split over the actors: each score is computed whole in one pass, so the shares
    add up to one process's scores exactly (neuron-level curves on a pool: test_actors.py)."""
    _, _, one, spread = discover_on_two_workers(capsys, tmp_path / "neurons.json", "neuron-patching")
    assert spread.metadata["method"] == "neuron-patching" and float(one.neuron_scores.abs().max()) > 0
    assert torch.equal(spread.neuron_scores, one.neuron_scores)
    assert torch.equal(spread.node_scores.nan_to_num(), one.node_scores.nan_to_num())


def test_worker_options_checked_before_anything_runs(capsys):
    code, _, err = run(capsys, "discover", "--model", "tiny-random", "--address", "auto")
    assert code == 2 and "--address joins a Ray cluster for --workers; add --workers N" in err
    code, _, err = run(capsys, "discover", "--model", "tiny-random", "--workers", 0)
    assert code == 2 and "--workers 0: expected an integer >= 1" in err
    code, _, err = run(capsys, "evaluate", "--model", "tiny-random", "--task", "ioi", "--graph", "x.json", "--k", 5,
                       "--workers", 2)
    assert code == 2 and "--workers spreads the circuits of a curve (--curve)" in err
