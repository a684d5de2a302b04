"""Bad input, as a new user types it, gets one clear line naming the option: never a traceback.

Each row of :data:`CLI` is a command line that must fail with ``circuits CMD: error: ...`` (exit 2; or argparse's
own usage error, exit 2) and name the option; each row of :data:`API` a Python call that must raise the package's
own :class:`circuits.errors.CircuitsError` naming the argument. The CUDA and MPS rows pretend this torch has
neither, so they mean the same on every machine.
"""

from __future__ import annotations

import math

import pytest
import torch

import circuits
from circuits.cli import main
from circuits.errors import CircuitsError

ZOO = "zoo:planted-ioi"
SMALL = ["--model", ZOO, "--n", "8", "--no-evaluate"]


@pytest.fixture(autouse=True)
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "bad.toml").write_text("model = \n")
    (d / "unknown.toml").write_text('model = "zoo:planted-ioi"\ncolour = "red"\n')
    (d / "params.toml").write_text('method = "eap-ig"\n[params]\nsteps = "many"\n')
    (d / "graph.json").write_text('{"edges": {"input->logits": {"score": "high"}}')
    (d / "sweep.toml").write_text('models = ["zoo:planted-ioi"]\nmethods = ["eap"]\ntasks = ["shipped"]\n')
    circuits.load_model(ZOO).graph.save(d / "planted.json")
    return d


# (id, argv with {d} for the files folder, text the error must contain)
CLI = [
    ("discover-cuda", ["discover", *SMALL, "--method", "eap", "--device", "cuda"], "--device"),
    ("info-cuda", ["info", ZOO, "--device", "cuda"], "--device"),
    ("evaluate-cuda", ["evaluate", "--model", ZOO, "--task", "ioi", "--graph", "x.json", "--device", "cuda:1"],
     "--device"),
    ("discover-cuda-index", ["discover", *SMALL, "--device", "cuda:7"], "--device"),
    ("discover-mps", ["discover", *SMALL, "--device", "mps"], "--device"),
    ("discover-tpu", ["discover", *SMALL, "--device", "tpu"], "--device"),
    ("discover-device-garbage", ["discover", *SMALL, "--device", "gpu!!"], "--device"),
    ("discover-dtype-float13", ["discover", *SMALL, "--dtype", "float13"], "--dtype"),
    ("info-dtype-int8", ["info", ZOO, "--dtype", "int8"], "--dtype"),
    ("evaluate-dtype", ["evaluate", "--model", ZOO, "--task", "ioi", "--graph", "x.json", "--dtype", "float13"],
     "--dtype"),
    ("acdc-threshold-abc", ["discover", *SMALL, "--method", "acdc", "--param", "threshold=abc"], "threshold"),
    ("acdc-threshold-negative", ["discover", *SMALL, "--method", "acdc", "--param", "threshold=-1"], "threshold"),
    ("acdc-threshold-nan", ["discover", *SMALL, "--method", "acdc", "--param", "threshold=nan"], "threshold"),
    ("acdc-metric", ["discover", *SMALL, "--method", "acdc", "--param", "metric=loss"], "metric"),
    ("acdc-absolute", ["discover", *SMALL, "--method", "acdc", "--param", "absolute=maybe"], "absolute"),
    ("eap-ig-steps-zero", ["discover", *SMALL, "--method", "eap-ig", "--param", "steps=0"], "steps"),
    ("eap-ig-steps-float", ["discover", *SMALL, "--method", "eap-ig", "--param", "steps=2.5"], "steps"),
    ("eap-ig-steps-text", ["discover", *SMALL, "--method", "eap-ig", "--param", "steps=many"], "steps"),
    ("eap-ig-unknown-param", ["discover", *SMALL, "--method", "eap-ig", "--param", "step=5"], "step"),
    ("eap-param-without-value", ["discover", *SMALL, "--method", "eap-ig", "--param", "steps"], "--param"),
    ("pruning-sparsity", ["discover", *SMALL, "--method", "edge-pruning", "--param", "target_sparsity=1.5"],
     "target_sparsity"),
    ("pruning-lr-zero", ["discover", *SMALL, "--method", "edge-pruning", "--param", "lr=0"], "lr"),
    ("exact-per-pass", ["discover", *SMALL, "--method", "exact", "--param", "circuits_per_pass=0"],
     "circuits_per_pass"),
    ("random-seed", ["discover", *SMALL, "--method", "random", "--param", "seed=-1"], "seed"),
    ("unknown-method", ["discover", *SMALL, "--method", "eap-xl"], "--method"),
    ("n-zero", ["discover", "--model", ZOO, "--n", "0"], "--n"),
    ("batch-size-zero", ["discover", *SMALL, "--batch-size", "0"], "--batch-size"),
    ("seed-negative", ["discover", *SMALL, "--seed", "-1"], "--seed"),
    ("n-text", ["discover", "--n", "many"], "--n"),  # argparse
    ("ablation-unknown", ["discover", "--ablation", "resample"], "--ablation"),  # argparse
    ("info-batch-zero", ["info", ZOO, "--batch", "0"], "--batch"),
    ("info-seq-too-long", ["info", ZOO, "--seq", "100000"], "--seq"),
    ("model-zoo-missing", ["discover", "--model", "zoo:no-such", "--n", "8"], "no-such"),
    ("model-random-missing", ["info", "random:gpt9"], "gpt9"),
    ("model-folder-missing", ["info", "./no/such/folder"], "no/such/folder"),
    ("task-unknown", ["discover", *SMALL, "--task", "no-such-task"], "no-such-task"),
    ("task-file-missing", ["discover", *SMALL, "--task", "{d}/missing.toml"], "missing.toml"),
    ("config-missing", ["discover", "--config", "{d}/missing.toml"], "missing.toml"),
    ("config-not-toml", ["discover", "--config", "{d}/bad.toml"], "bad.toml"),
    ("config-unknown-key", ["discover", "--config", "{d}/unknown.toml"], "colour"),
    ("config-param-type", ["discover", "--config", "{d}/params.toml", "--model", ZOO], "steps"),
    ("evaluate-graph-missing", ["evaluate", "--model", ZOO, "--task", "ioi", "--graph", "{d}/none.json", "--n", "8"],
     "none.json"),
    ("evaluate-graph-malformed", ["evaluate", "--model", ZOO, "--task", "ioi", "--graph", "{d}/graph.json",
                                  "--n", "8"], "graph.json"),
    ("evaluate-two-selections", ["evaluate", "--model", ZOO, "--task", "ioi", "--graph", "x.json", "--k", "3",
                                 "--fraction", "0.1"], "--fraction"),
    ("plot-missing-graph", ["plot", "{d}/none.json"], "none.json"),
    ("run-missing-sweep", ["run", "{d}/no-sweep.toml", "--dry-run"], "no-sweep"),
    ("run-set-n", ["run", "{d}/sweep.toml", "--dry-run", "--set", "n=abc"], "n"),
    ("run-set-threshold", ["run", "{d}/sweep.toml", "--dry-run", "--set", "methods=acdc",
                           "--set", "params.acdc.threshold=abc"], "params.acdc.threshold"),
    ("run-set-steps", ["run", "{d}/sweep.toml", "--dry-run", "--set", "methods=eap-ig",
                       "--set", "params.eap-ig.steps=0"], "params.eap-ig.steps"),
    ("run-set-device", ["run", "{d}/sweep.toml", "--dry-run", "--set", "device=tpu"], "device"),
    ("run-set-dtype", ["run", "{d}/sweep.toml", "--dry-run", "--set", "dtype=float13"], "dtype"),
    ("eap-rule", ["discover", *SMALL, "--method", "eap", "--param", "rule=lrp"], "rule"),
    ("ensemble-combine", ["discover", *SMALL, "--method", "ensemble", "--param", "combine=median"], "combine"),
    ("ensemble-unknown-member", ["discover", *SMALL, "--method", "ensemble", "--param", "members=eap,nosuch"],
     "nosuch"),
    ("gim-temperature", ["discover", *SMALL, "--method", "gim", "--param", "softmax_temperature=0"],
     "softmax_temperature"),
    ("relp-attention", ["discover", *SMALL, "--method", "relp", "--param", "attention=full"], "attention"),
    ("mattr-steps", ["discover", *SMALL, "--method", "mattr", "--param", "steps=0"], "steps"),
    ("discover-memory-negative", ["discover", *SMALL, "--memory-budget=-3GB"], "--memory-budget"),
    ("discover-memory-text", ["discover", *SMALL, "--memory-budget", "lots"], "--memory-budget"),
    ("discover-memory-too-small", ["discover", *SMALL, "--method", "eap", "--memory-budget", "1KB"],
     "--memory-budget"),
    ("discover-examples-per-pass", ["discover", *SMALL, "--examples-per-pass", "0"], "--examples-per-pass"),
    ("discover-position-chunk", ["discover", *SMALL, "--position-chunk", "-2"], "--position-chunk"),
    ("evaluate-memory-text", ["evaluate", "--model", ZOO, "--task", "ioi", "--graph", "x.json",
                              "--memory-budget", "lots"], "--memory-budget"),
    ("view-missing-graph", ["view", "{d}/none.json"], "none.json"),
    ("view-not-html", ["view", "{d}/planted.json", "--out", "{d}/page.png"], ".html"),
    ("view-max-edges", ["view", "{d}/planted.json", "--max-edges", "0"], "max_edges"),
    ("export-mib-task", ["export-mib", "{d}/planted.json", "--task", "greater-than", "--model", "gpt2",
                         "--out", "{d}/sub"], "greater-than"),
    ("export-mib-wrong-model", ["export-mib", "{d}/planted.json", "--task", "ioi", "--model", "gpt2",
                                "--out", "{d}/sub"], "12 x 12"),
]


@pytest.mark.parametrize("argv, needle", [pytest.param(a, n, id=i) for i, a, n in CLI])
def test_cli_bad_input_is_one_clear_line(argv, needle, files, capsys):
    argv = [a.replace("{d}", str(files)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "unexpected" not in err, err
    assert "error:" in err.splitlines()[-1] or any(line.startswith("circuits ") and "error:" in line
                                                    for line in err.splitlines()), err
    assert needle in err, err


def test_debug_flag_shows_the_traceback():
    from circuits.models.options import ModelOptionError

    with pytest.raises(ModelOptionError, match="--device"):
        main(["info", ZOO, "--device", "cuda", "--debug"])
    with pytest.raises(ModelOptionError, match="--device"):
        main(["--debug", "info", ZOO, "--device", "cuda"])


@pytest.fixture(scope="module")
def planted():
    model = circuits.load_model(ZOO)
    return model, circuits.load_task(str(circuits.zoo.model_dir(ZOO) / "task.toml"), model, n=8, seed=0)


# (id, call(model, task), text the error must contain)
API = [
    ("load-cuda", lambda m, t: circuits.load_model(ZOO, device="cuda"), "device"),
    ("load-dtype", lambda m, t: circuits.load_model(ZOO, dtype="float13"), "dtype"),
    ("load-dtype-int", lambda m, t: circuits.load_model("random:gpt2-small", dtype=torch.int64), "dtype"),
    ("load-not-a-spec", lambda m, t: circuits.load_model(42), "42"),
    ("task-unknown", lambda m, t: circuits.load_task("no-such-task", m), "no-such-task"),
    ("discover-threshold-text", lambda m, t: circuits.discover(m, t, "acdc", threshold="abc"), "threshold"),
    ("discover-threshold-inf-type", lambda m, t: circuits.discover(m, t, "acdc", threshold=[0.1]), "threshold"),
    ("discover-steps", lambda m, t: circuits.discover(m, t, "eap-ig", steps=0), "steps"),
    ("discover-steps-bool", lambda m, t: circuits.discover(m, t, "eap-ig", steps=True), "steps"),
    ("discover-metric", lambda m, t: circuits.discover(m, t, "edge-pruning", metric="mse"), "metric"),
    ("discover-unknown-param", lambda m, t: circuits.discover(m, t, "eap", steps=5), "steps"),
    ("discover-unknown-method", lambda m, t: circuits.discover(m, t, "eap-xl"), "eap-xl"),
    ("discover-ablation", lambda m, t: circuits.discover(m, t, "eap", ablation="resample"), "ablation"),
    ("discover-split", lambda m, t: circuits.discover(m, t, "eap", split="test"), "split"),
    ("discover-batch-size", lambda m, t: circuits.discover(m, t, "eap", batch_size=0), "batch_size"),
    ("evaluate-ablation", lambda m, t: circuits.evaluate(m, t, m.graph, ablation="resample"), "ablation"),
    ("graph-load-missing", lambda m, t: circuits.Graph.load("/no/such/graph.json", model=m), "graph.json"),
    ("graph-top-fraction", lambda m, t: m.graph.top_fraction(1.5), "1.5"),
    ("graph-threshold-nan", lambda m, t: m.graph.threshold(math.nan), "nan"),
    ("ensemble-no-members", lambda m, t: circuits.discover(m, t, "ensemble", members=[]), "members"),
    ("ensemble-members-number", lambda m, t: circuits.discover(m, t, "ensemble", members=3), "members"),
    ("eap-ig-rule", lambda m, t: circuits.discover(m, t, "eap-ig", rule="lrp"), "rule"),
    ("discover-memory-text", lambda m, t: circuits.discover(m, t, "eap", memory_budget="lots"), "memory_budget"),
    ("discover-memory-too-small", lambda m, t: circuits.discover(m, t, "eap-ig", memory_budget="1KB"),
     "memory budget"),
    ("discover-examples-per-pass", lambda m, t: circuits.discover(m, t, "eap", examples_per_pass=0),
     "examples_per_pass"),
    ("evaluate-memory-negative", lambda m, t: circuits.evaluate(m, t, m.graph, memory_budget=-3), "memory_budget"),
    ("view-not-html", lambda m, t: circuits.view(m.graph, "circuit.png"), ".html"),
    ("view-no-path", lambda m, t: circuits.view(m.graph), "path"),
]


@pytest.mark.parametrize("call, needle", [pytest.param(c, n, id=i) for i, c, n in API])
def test_api_bad_input_raises_the_package_error(call, needle, planted):
    with pytest.raises(CircuitsError) as info:
        call(*planted)
    assert needle in str(info.value)


def test_the_table_is_large():
    assert len(CLI) + len(API) >= 40
