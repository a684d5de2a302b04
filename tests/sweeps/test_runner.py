"""Sweeps on a real local Ray cluster (2 CPUs): results, errors, a worker killed mid-job, interrupt and resume.

Every test checks that each job's row is present exactly once; the trace hook (``JobHook(trace=...)``, given as
``on_job_start``) counts how often each job actually executed, so a finished job that was recomputed would show.
On a loaded machine a worker may be killed mid-job (Ray's memory monitor) and its job run again: that is not a
finished job recomputed, so the checks compare executions before and after a resume, and wait without tight
timeouts.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("ray")

from circuits.sweeps import load_sweep, run_sweep  # noqa: E402
from tests.sweeps.hooks import JobHook  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def sweep(tmp_path: Path, name: str, **changes):
    config = {"name": name, "models": ["tiny-random"], "tasks": ["ioi"], "methods": ["eap", "random"], "n": 8,
              "batch_size": 8, "evaluation": {"fractions": [0.01, 0.1, 0.5, 1.0], "minimal_target": 0.8},
              "resources": {"cpus": 1, "gpus": 0, "max_retries": 2},
              "output": {"graphs": str(tmp_path / "graphs"), "results": str(tmp_path / "results")}}
    config.update(changes)
    return load_sweep(config)


def executions(trace: Path) -> dict[str, int]:
    return {p.name: len(p.read_text().splitlines()) for p in trace.iterdir()} if trace.is_dir() else {}


def check_complete(spec, frame: pd.DataFrame) -> None:
    ids = [j.job_id for j in spec.expand()]
    assert sorted(frame["job_id"]) == sorted(ids)  # every job exactly once
    on_disk = pd.read_parquet(spec.results_dir / "results.parquet")
    assert sorted(on_disk["job_id"]) == sorted(ids)
    assert sorted(pd.read_csv(spec.results_dir / "results.csv")["job_id"]) == sorted(ids)
    assert sorted(p.stem for p in (spec.results_dir / "rows").glob("*.json")) == sorted(ids)
    assert not list((spec.results_dir / "rows").glob(".*.tmp"))  # no temp files left behind


def test_sweep_rows_graphs_errors_and_rerun(ray_cluster, tmp_path):
    trace = tmp_path / "trace"
    hook = JobHook(trace=str(trace), fail_method="acdc")
    spec = sweep(tmp_path, "basic", methods=["eap", "random", "acdc"])
    result = run_sweep(spec, progress=False, out=None, on_job_start=hook)
    frame = result.frame
    check_complete(spec, frame)
    before = executions(trace)
    assert sorted(before) == sorted(frame["job_id"]) and min(before.values()) >= 1
    ok = frame[frame["status"] == "ok"]
    assert set(ok["method"]) == {"eap", "random"}
    assert ok["cpr"].notna().all() and ok["cmd"].notna().all() and ok["minimal_k"].notna().all()
    assert ok["threads"].eq(1).all()  # torch threads follow the job's one CPU
    for path in ok["graph_file"]:
        graph = json.loads(Path(path).read_text())
        assert graph  # the scored graph (MIB JSON) written under graphs/<sweep>/
    bad = frame[frame["status"] == "error"].iloc[0]  # the job that raised: recorded, the sweep went on
    assert "planted failure" in bad["error"] and "Traceback" in bad["traceback"] and bad["failure"] == "error"
    assert result.failed == 1 and result.ran == 3
    assert len(result.summary) == 3

    # the same sweep again: the finished jobs are skipped, the failed one runs again and replaces its row
    again = run_sweep(spec, progress=False, out=None, on_job_start=hook)
    assert again.skipped == 2 and again.ran == 1
    check_complete(spec, again.frame)
    after = executions(trace)
    assert {j: after[j] - before[j] for j in ok["job_id"]} == dict.fromkeys(ok["job_id"], 0)  # not recomputed
    assert after[bad["job_id"]] > before[bad["job_id"]]  # the failed one ran again
    # and with --keep-failed nothing runs
    assert run_sweep(spec, progress=False, out=None, retry_failed=False, on_job_start=hook).ran == 0


def test_worker_killed_mid_job_is_retried(ray_cluster, tmp_path):
    trace, crash = tmp_path / "trace", tmp_path / "crash"
    hook = JobHook(trace=str(trace), crash_once=str(crash))  # each job's first attempt: os._exit(1)
    spec = sweep(tmp_path, "crash")
    result = run_sweep(spec, progress=False, out=None, on_job_start=hook)
    check_complete(spec, result.frame)
    assert (result.frame["status"] == "ok").all(), result.frame[["status", "error"]]
    counts = executions(trace)
    assert sorted(counts) == sorted(j.job_id for j in spec.expand())
    assert all(c >= 2 for c in counts.values())  # died once, succeeded on a retry (more under memory pressure)
    assert len(list(crash.iterdir())) == 2


def test_worker_that_always_dies_is_recorded(ray_cluster, tmp_path):
    hook = JobHook(crash_once=str(tmp_path / "crash"))
    spec = sweep(tmp_path, "dies", methods=["eap"], resources={"cpus": 1, "gpus": 0, "max_retries": 0})
    result = run_sweep(spec, progress=False, out=None, on_job_start=hook)
    check_complete(spec, result.frame)
    row = result.frame.iloc[0]
    assert row["status"] == "error" and "worker died" in row["error"]
    # resumed: the crash marker exists now, so the job succeeds, and replaces its error row
    again = run_sweep(spec, progress=False, out=None, on_job_start=hook)
    check_complete(spec, again.frame)
    assert (again.frame["status"] == "ok").all()


def test_interrupt_and_resume_in_process(ray_cluster, tmp_path):
    trace = tmp_path / "trace"
    hook = JobHook(trace=str(trace))
    spec = sweep(tmp_path, "resume", seeds=[0, 1])  # 4 jobs
    first = run_sweep(spec, progress=False, out=None, max_parallel=1, stop_after=2, on_job_start=hook)
    assert first.interrupted and first.ran == 2 and len(first.frame) == 2
    done = {r["job_id"]: r["started"] for _, r in first.frame.iterrows()}
    before = executions(trace)
    second = run_sweep(spec, progress=False, out=None, on_job_start=hook)
    assert second.skipped == 2 and second.ran == 2 and not second.interrupted
    check_complete(spec, second.frame)
    for job_id, started in done.items():  # finished rows untouched
        assert second.frame.set_index("job_id").loc[job_id, "started"] == started
    after = executions(trace)
    assert all(after[j] == before[j] for j in done)  # no finished job computed again
    assert sorted(after) == sorted(j.job_id for j in spec.expand())


def test_cli_interrupted_by_signal_then_resumed(ray_cluster, tmp_path):
    """`circuits run` in a subprocess (its own local Ray), interrupted (SIGINT) after a job finished, then
    resumed: each job's row exactly once, and no finished job recomputed."""
    spec = sweep(tmp_path, "sigint", seeds=[0, 1, 2])  # 6 jobs
    sweep_file = tmp_path / "sigint.toml"
    lines = [f'name = "sigint"', 'models = ["tiny-random"]', 'tasks = ["ioi"]', 'methods = ["eap", "random"]',
             "seeds = [0, 1, 2]", "n = 8", "batch_size = 8",
             "[evaluation]", "fractions = [0.01, 0.1, 0.5, 1.0]", "minimal_target = 0.8",
             "[resources]", "cpus = 1", "gpus = 0", "max_retries = 2",
             "[output]", f'graphs = "{tmp_path / "graphs"}"', f'results = "{tmp_path / "results"}"']
    sweep_file.write_text("\n".join(lines) + "\n")
    trace = tmp_path / "trace"
    # `circuits run` with the trace hook, and 3 s of sleep per job (time to interrupt), given to the command's
    # run function as on_job_start: the command line's own parser and exit status, as `circuits run` has them
    driver = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from circuits.cli import build_parser, run; "
              "from tests.sweeps.hooks import JobHook; args = build_parser().parse_args(sys.argv[2:]); "
              "sys.exit(run.run(args, on_job_start=JobHook(trace=sys.argv[1], sleep=3)))")
    proc = subprocess.Popen([sys.executable, "-c", driver, str(ROOT), str(trace), "run", str(sweep_file),
                             "--quiet", "--max-parallel", "1", "--num-cpus", "1"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # a child inherits an ignored SIGINT (earlier tests' Ray set-up can leave the
                            # test process ignoring it); Ctrl-C at a terminal is what this test stands for
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    rows = tmp_path / "results" / "sigint" / "rows"
    deadline = time.monotonic() + 900  # a loaded machine: generous (the loop ends as soon as 2 rows exist)
    while time.monotonic() < deadline and proc.poll() is None and len(list(rows.glob("*.json"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 130, output
    assert "INTERRUPTED" in output
    finished = {p.stem: json.loads(p.read_text())["started"] for p in rows.glob("*.json")}
    assert 2 <= len(finished) < 6
    before = executions(trace)

    result = run_sweep(spec, progress=False, out=None, on_job_start=JobHook(trace=str(trace)))
    check_complete(spec, result.frame)
    assert (result.frame["status"] == "ok").all()
    assert result.skipped == len(finished)
    after = executions(trace)
    for job_id, started in finished.items():
        assert after[job_id] == before[job_id] >= 1  # finished jobs were not recomputed
        assert result.frame.set_index("job_id").loc[job_id, "started"] == started


def test_job_with_evaluation_actors(ray_cluster, tmp_path):
    """A job whose curve points run on 2 actors (model replicas): the same row as the job alone, same job id."""
    alone = sweep(tmp_path, "alone", methods=["eap"])
    spread = sweep(tmp_path, "spread", methods=["eap"], resources={"cpus": 0.5, "gpus": 0, "max_retries": 0},
                   evaluation={"fractions": [0.01, 0.1, 0.5, 1.0], "minimal_target": 0.8, "actors": 2})
    assert [j.job_id for j in alone.expand()] == [j.job_id for j in spread.expand()]
    a = run_sweep(alone, progress=False, out=None).frame.iloc[0]
    b = run_sweep(spread, progress=False, out=None).frame.iloc[0]
    assert a["status"] == b["status"] == "ok", b["error"]
    assert "evaluated on 2 Ray actors" in b["notes"]
    assert b["cpr"] == pytest.approx(a["cpr"], abs=1e-5) and b["cmd"] == pytest.approx(a["cmd"], abs=1e-5)
    assert json.loads(b["curve_signed"]) == pytest.approx(json.loads(a["curve_signed"]), abs=1e-5)


def test_quick_sweep_first_job_runs(tmp_path):
    from circuits.sweeps import run_job

    spec = load_sweep(ROOT / "discovery" / "quick.toml")
    job = spec.expand()[0]
    row = run_job(job, graphs_dir=tmp_path, cpus=1)
    assert row["status"] == "ok", row["traceback"]
    assert math.isfinite(row["cpr"]) and math.isfinite(row["cmd"]) and math.isfinite(row["auroc"])
    assert (tmp_path / f"{job.job_id}.json").is_file()
