"""Sweep files: parsing, validation errors (file, key, fix) before any job starts, expansion and job ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from circuits.sweeps.spec import SweepError, apply_overrides, load_sweep, parse_value

ROOT = Path(__file__).resolve().parents[2]
BASE = {"name": "t", "models": ["tiny-random"], "tasks": ["ioi"], "methods": ["eap", "random"], "n": 8}


def test_expand_grid_and_ids():
    spec = load_sweep({**BASE, "methods": ["eap-ig", "random"], "params": {"eap-ig": {"steps": [2, 3]}},
                       "seeds": [0, 1], "ablations": ["corrupted", "zero"]})
    jobs = spec.expand()
    assert len(jobs) == (2 + 1) * 2 * 2  # (2 steps + random) x 2 ablations x 2 seeds
    ids = [j.job_id for j in jobs]
    assert len(set(ids)) == len(ids) and all(len(i) == 16 for i in ids)
    assert ids == [j.job_id for j in load_sweep({**BASE, "methods": ["eap-ig", "random"],
                                                  "params": {"eap-ig": {"steps": [2, 3]}}, "seeds": [0, 1],
                                                  "ablations": ["corrupted", "zero"]}).expand()]
    rnd = [j for j in jobs if j.method == "random"]
    assert {j.params_dict["seed"] for j in rnd} == {0, 1}  # the sweep's seed drives the method's seed
    # the id depends on what determines the result, not on the sweep's name or resources
    renamed = load_sweep({**BASE, "name": "other", "resources": {"cpus": 2}}).expand()
    assert [j.job_id for j in renamed] == [j.job_id for j in load_sweep(BASE).expand()]
    assert load_sweep({**BASE, "n": 9}).expand()[0].job_id != load_sweep(BASE).expand()[0].job_id


def test_models_tables_and_shipped_task():
    spec = load_sweep({**BASE, "models": [{"model": "tiny-random", "tasks": ["ioi", "greater-than"]},
                                          "zoo:planted-induction"], "tasks": ["shipped"], "methods": ["eap"]},
                      check_models=False)
    assert [(j.model, j.task) for j in spec.expand()] == [("tiny-random", "ioi"), ("tiny-random", "greater-than"),
                                                          ("zoo:planted-induction", "shipped")]


@pytest.mark.parametrize("change, key, words", [
    ({"methods": ["eapp"]}, "methods[0]", "use one of"),
    ({"bogus": 1}, "bogus", "use one of"),
    ({"n": 0}, "n", "integer >= 2"),
    ({"seeds": ["a"]}, "seeds[0]", "int"),
    ({"ablations": ["resample"]}, "ablations[0]", "corrupted"),
    ({"params": {"eap": {"steps": [1]}}}, "params.eap.steps", "eap has no parameter"),
    ({"params": {"acdc": {"tau": [0.1]}}}, "params.acdc.tau", "threshold (default 0.01)"),
    ({"params": {"random": {"seed": ["x"]}}}, "params.random.seed", "an integer"),
    ({"tasks": ["nope"]}, "tasks[0]", "unknown task"),
    ({"tasks": ["shipped"]}, "tasks[0]", "not a zoo model"),
    ({"models": ["zoo:no-such"]}, "models[0]", "circuits zoo list"),
    ({"models": ["random:gpt9"]}, "models[0]", "preset"),
    ({"resources": {"gpus": 1.5}}, "resources.gpus", "fractions only below 1"),
    ({"resources": {"cpu": 1}}, "resources.cpu", "use one of cpus"),
    ({"evaluation": {"fractions": [0.5, 0.1]}}, "evaluation.fractions", "increasing"),
    ({"name": "a/b"}, "name", "folder name"),
])
def test_errors_name_key_and_fix(change, key, words):
    with pytest.raises(SweepError) as err:
        load_sweep({**BASE, **change})
    msg = str(err.value)
    assert f"key {key!r}" in msg and "fix:" in msg and words in msg, msg


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nmodels = ["tiny-random"]\nmethods = [eap]\n')
    with pytest.raises(SweepError, match="bad.toml: not valid TOML"):
        load_sweep(bad)
    with pytest.raises(SweepError, match="no such sweep file"):
        load_sweep(tmp_path / "missing.toml")
    ok = tmp_path / "mine.toml"
    ok.write_text('models = ["tiny-random"]\ntasks = ["ioi"]\nmethods = ["eap"]\n[params.eap]\n')
    assert load_sweep(ok).name == "mine"  # the file's name when the file has none


def test_overrides():
    assert parse_value("16") == 16 and parse_value("[1, 2]") == [1, 2] and parse_value("eap,random") == ["eap", "random"]
    assert parse_value("eap") == "eap" and parse_value("0.25") == 0.25
    cfg = apply_overrides(BASE, ["n=4", "methods=eap-ig", "params.eap-ig.steps=[2,3]", "resources.gpus=0.5"])
    assert cfg["n"] == 4 and cfg["params"]["eap-ig"]["steps"] == [2, 3] and cfg["resources"]["gpus"] == 0.5
    assert BASE["n"] == 8  # the original is untouched
    spec = load_sweep(BASE, overrides={"methods": ["eap-ig"], "params.eap-ig.steps": [2, 3]})
    assert len(spec.expand()) == 2
    with pytest.raises(SweepError, match="KEY=VALUE"):
        apply_overrides(BASE, ["n"])
    with pytest.raises(SweepError, match="unknown key 'nn'"):
        apply_overrides(BASE, ["nn=3"])


@pytest.mark.parametrize("name", ["quick", "benchmark"])
def test_shipped_sweeps_parse_and_expand(name):
    spec = load_sweep(ROOT / "discovery" / f"{name}.toml")
    jobs = spec.expand()
    from circuits.sweeps.spec import sweepable_methods

    assert {j.method for j in jobs} == set(sweepable_methods())  # every method a sweep runs (not neuron-level)
    assert len({j.job_id for j in jobs}) == len(jobs)
    if name == "benchmark":
        assert len({j.seed for j in jobs}) >= 3


def test_cli_dry_run_and_error(capsys):
    from circuits.cli import main

    assert main(["run", str(ROOT / "discovery" / "quick.toml"), "--dry-run", "--set", "methods=eap,random"]) == 0
    out = capsys.readouterr().out
    assert "job(s) in sweep 'quick'" in out and "zoo:planted-ioi" in out
    assert main(["run", str(ROOT / "discovery" / "quick.toml"), "--set", "n=1"]) == 2
    assert "key 'n'" in capsys.readouterr().err


def test_offline_hub_model_not_cached(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SweepError, match=r"key 'models\[0\]'.*not in the local cache.*fix:"):
        load_sweep({**BASE, "models": ["someone/not-a-cached-model"]})


def test_results_table_holds_the_current_jobs_only(tmp_path):
    from circuits.sweeps.results import ResultStore

    store = ResultStore(tmp_path)
    for job_id, status in (("a", "ok"), ("b", "error"), ("old", "ok")):
        store.write_row({"job_id": job_id, "status": status, "cpr": float("nan")})
    frame = store.rebuild(["b", "a"])
    assert list(frame["job_id"]) == ["b", "a"]
    assert list(__import__("pandas").read_parquet(store.parquet)["job_id"]) == ["b", "a"]
    assert store.status() == {"a": "ok", "b": "error", "old": "ok"}  # the old row stays on disk


def test_neuron_level_methods_are_refused_by_sweeps_with_the_way_to_run_them():
    with pytest.raises(SweepError, match="'eap-neurons' is a neuron-level method.*circuits discover"):
        load_sweep(BASE, overrides={"methods": ["eap", "eap-neurons"]})
    assert "eap-neurons" not in {j.method for j in load_sweep(BASE, overrides={"methods": ["all"]}).expand()}
