"""Running a sweep on Ray: one Ray task per job, results saved the moment each job finishes.

* **Where**: with no ``address`` a local Ray starts with no set-up (the machine's CPUs and GPUs, no dashboard, no
  usage stats, no auth token, every temp/log file under one short run folder ``/tmp/circuits-ray-<pid>`` that is
  removed at the end); ``address="auto"`` or ``"ray://host:10001"`` joins an existing cluster (its workers need
  ``circuits`` installed). If Ray is already initialised in this process it is used as is.
* **Resources**: each job asks for ``[resources].cpus`` CPUs and ``gpus`` GPUs (fractions share a GPU between
  small-model jobs; ``gpus = "auto"``, the default, means one GPU per job when the cluster has GPUs, else none).
  Torch threads in a job follow its CPUs.
* **Memory**: each job declares its memory to Ray (``[resources].memory``, estimated by default; see
  :mod:`circuits.sweeps.memory`), so Ray does not start more jobs than a node's memory holds.
* **Nothing is lost**: a job that raises returns a row with ``status = "error"``, its error and traceback, and
  the sweep goes on; a worker that dies (killed, node lost) is retried by Ray up to ``[resources].max_retries``
  times, after which the job's row records the crash (``failure = "crashed"``). A job that runs out of memory
  (killed by Ray's memory monitor or the kernel, or an allocation that failed) is retried by the runner, at most
  ``max_retries`` times, each time with half as many jobs in flight, then recorded with ``failure = "oom"``
  (Ray's own OOM retries, unbounded by default, are off in the local Ray a sweep starts). Each row is written to
  ``results/<sweep>/rows/<job_id>.json`` atomically as soon as it arrives, and ``results.parquet`` / ``.csv`` are
  rebuilt from the rows (atomically) as the sweep goes and at the end.
* **Resume**: running the same sweep again skips every job whose row says ``ok`` (jobs are identified by a hash
  of their full spec, so a changed parameter is a new job) and runs the rest; jobs that ended in ``error`` are
  run again (their new row replaces the old one) unless ``retry_failed=False``. Ctrl-C stops cleanly: finished
  rows stay, and the same command resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from circuits.sweeps.job import JobHook, empty_row, execute
from circuits.sweeps.memory import GB, RAY_SYSTEM_CONFIG, failure_reason, job_memory
from circuits.sweeps.results import ResultStore, atomic_write
from circuits.sweeps.spec import JobSpec, SweepSpec

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1", "RAY_DEDUP_LOGS": "0",
             "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
REBUILD_EVERY_S = 5.0  # the parquet/CSV are rebuilt at most this often while jobs finish (rows are immediate)


@dataclass
class SweepResult:
    frame: pd.DataFrame  # one row per job of the sweep (finished ones)
    summary: pd.DataFrame  # per model x task x method
    results_dir: Path
    graphs_dir: Path
    ran: int  # jobs executed in this call
    skipped: int  # jobs already finished before this call
    failed: int
    interrupted: bool = False
    oom_retries: int = 0  # executions rerun after running out of memory
    max_parallel: int = 0  # jobs in flight at once at the end (lowered after each out-of-memory failure)


def _short_temp_dir() -> str:
    # Ray puts unix sockets under the temp dir and their paths must stay under ~107 characters.
    return os.path.join("/tmp" if os.path.isdir("/tmp") else os.path.abspath("."), f"circuits-ray-{os.getpid()}")


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
                temp_dir: str | None = None):
    """Ray for the length of a sweep: reuse an initialised one, join ``address``, or start a quiet local one."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        yield ray
        return
    started_temp = None
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster needs no token (none is written)
        started_temp = temp_dir or _short_temp_dir()
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, _temp_dir=started_temp,
                 log_to_driver=False, configure_logging=False, _system_config=RAY_SYSTEM_CONFIG)
    try:
        yield ray
    finally:
        ray.shutdown()
        if started_temp and not temp_dir:
            shutil.rmtree(started_temp, ignore_errors=True)


_REMOTE_EXECUTE: Any = None  # ray.remote(execute), made once per process


def _remote_execute(ray):
    global _REMOTE_EXECUTE
    if _REMOTE_EXECUTE is None:
        _REMOTE_EXECUTE = ray.remote(execute)
    return _REMOTE_EXECUTE


def job_resources(spec: SweepSpec, cluster: dict) -> tuple[float, float]:
    """``(cpus, gpus)`` per job; ``gpus = "auto"``: one per job when the cluster has GPUs."""
    cpus = float(spec.resources["cpus"])
    gpus = spec.resources["gpus"]
    if gpus == "auto":
        gpus = 1.0 if cluster.get("GPU", 0) >= 1 else 0.0
    return cpus, float(gpus)


def _declared_memory(spec: SweepSpec, job: JobSpec, cluster: dict) -> int:
    """Bytes ``job`` declares to Ray; an estimate larger than the cluster's memory is capped to it (the job could
    never be scheduled otherwise), a declared amount larger than it is an error."""
    from circuits.sweeps.spec import SweepError

    wanted = job_memory(spec.resources["memory"], job)
    available = int(cluster.get("memory", 0))
    if available and wanted > available:
        if spec.resources["memory"] != "auto":
            raise SweepError(f"{spec.source}: key 'resources.memory': each job declares {wanted / GB:.2f} GB but the "
                             f"Ray cluster has {available / GB:.2f} GB of memory; fix: declare less, or join a larger "
                             "cluster (--address)")
        wanted = available
    return wanted


def summarize(frame):
    """Per model x task x method: jobs, ok, failed, mean CPR / CMD / AUROC / minimal edges / time."""
    import pandas as pd

    if frame is None or len(frame) == 0:
        return pd.DataFrame()
    f = frame.copy()
    for col in ("cpr", "cmd", "auroc", "minimal_edges", "wall_s"):
        if col not in f:
            f[col] = float("nan")
        f[col] = pd.to_numeric(f[col], errors="coerce")
    f["ok"] = f["status"].eq("ok")
    f["failed"] = f["status"].eq("error")
    g = f.groupby(["model", "task", "method"], sort=False)
    return g.agg(jobs=("job_id", "size"), ok=("ok", "sum"), failed=("failed", "sum"), cpr=("cpr", "mean"),
                 cmd=("cmd", "mean"), auroc=("auroc", "mean"), minimal_edges=("minimal_edges", "mean"),
                 wall_s=("wall_s", "mean")).reset_index()


def run_sweep(spec: SweepSpec, *, address: str | None = None, max_parallel: int | None = None,
              retry_failed: bool = True, num_cpus: int | None = None, progress: bool = True,
              on_job_start: JobHook | None = None, stop_after: int | None = None,
              out: Callable[[str], None] | None = print) -> SweepResult:
    """Run every unfinished job of ``spec`` on Ray; return the results (see the module docstring).

    ``max_parallel``: jobs in flight at once (default: as many as the cluster's resources fit; Ray queues the
    rest). ``on_job_start``: a picklable callable, called with the job in its worker as each execution of it
    starts (see :func:`circuits.sweeps.job.execute`). ``stop_after``: stop as if interrupted after this many
    jobs finished (tests).
    """
    say = out or (lambda s: None)
    jobs = spec.expand()
    order = [j.job_id for j in jobs]
    store = ResultStore(spec.results_dir)
    graphs_dir = spec.graphs_dir
    atomic_write(store.dir / "sweep.json", json.dumps(
        {"name": spec.name, "source": spec.source, "jobs": [{"job_id": j.job_id, **j.to_dict()} for j in jobs],
         "skipped_combinations": spec.skipped}, indent=1, default=str))
    status = store.status()
    finished = {j for j, s in status.items() if s == "ok" or (s == "error" and not retry_failed)}
    todo = [j for j in jobs if j.job_id not in finished]
    skipped = len(jobs) - len(todo)
    if skipped:
        say(f"resume: {skipped} of {len(jobs)} jobs already finished in {store.rows_dir}; running the other "
            f"{len(todo)}")
    ran = failed = oom_retries = 0
    limit = 0
    interrupted = False
    if todo:
        with ray_session(address, num_cpus=num_cpus) as ray:
            from ray.exceptions import RayError

            cluster = ray.cluster_resources()
            cpus, gpus = job_resources(spec, cluster)
            fits = [cluster.get("CPU", 0) / cpus if cpus else float("inf"),
                    cluster.get("GPU", 0) / gpus if gpus else float("inf")]
            slots = max(1, int(min(fits))) if min(fits) != float("inf") else 1
            limit = max_parallel or len(todo)
            max_retries = int(spec.resources["max_retries"])
            options = dict(num_cpus=cpus, num_gpus=gpus, max_retries=max_retries, retry_exceptions=False)
            memory = {j.job_id: _declared_memory(spec, j, cluster) for j in todo}
            say(f"sweep {spec.name}: {len(todo)} job(s) on Ray ({cluster.get('CPU', 0):g} CPUs, "
                f"{cluster.get('GPU', 0):g} GPUs, {cluster.get('memory', 0) / GB:.1f} GB; {cpus:g} CPU / {gpus:g} "
                f"GPU / up to {max(memory.values()) / GB:.2f} GB per job, {min(slots, limit)} at once)")
            queue = list(todo)
            pending: dict = {}
            oom_failures: dict[str, int] = {}
            bar = _bar(len(jobs), skipped, progress)
            last_rebuild = time.monotonic()
            try:
                while queue or pending:
                    while queue and len(pending) < limit:
                        job = queue.pop(0)
                        remote = _remote_execute(ray).options(**options, memory=memory[job.job_id] or None)
                        pending[remote.remote(job, cpus, on_job_start, gpus)] = job
                    bar.set_postfix_str(f"running {min(len(pending), slots)}, queued "
                                        f"{len(queue) + max(0, len(pending) - slots)}, failed {failed}")
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                    for ref in ready:
                        job = pending.pop(ref)
                        try:
                            row, graph = ray.get(ref)
                        except RayError as err:  # killed for memory, or died more often than max_retries allows
                            row, graph = empty_row(job), None
                            reason = failure_reason(err)
                            died = ("was killed for memory" if reason == "oom" else
                                    f"died {max_retries + 1} time(s)")
                            row.update(status="error", failure=reason, traceback=str(err), finished=row["started"],
                                       error=f"{type(err).__name__}: the job's worker {died}: {str(err)[:500]}")
                        if row.get("failure") == "oom":
                            n_oom = oom_failures[job.job_id] = oom_failures.get(job.job_id, 0) + 1
                            if n_oom <= max_retries:  # again, once fewer jobs share the memory
                                limit = max(1, min(limit, len(pending) + 1) // 2)
                                queue.insert(0, job)
                                oom_retries += 1
                                say(f"job {job.job_id} ran out of memory (attempt {n_oom} of {max_retries + 1}); "
                                    f"retrying it with at most {limit} job(s) at once")
                                continue
                            row["error"] = (f"out of memory in {n_oom} attempt(s), the last with at most {limit} "
                                            f"job(s) at once; declare more memory ([resources].memory, "
                                            f"{memory[job.job_id] / GB:.2f} GB now) or lower batch_size. "
                                            f"{row['error']}")
                        row["attempts"] = oom_failures.get(job.job_id, 0) + (row.get("failure") != "oom")
                        row["memory_gb"] = round(memory[job.job_id] / GB, 3)
                        _save(row, graph, job, spec, store)
                        ran += 1
                        failed += row["status"] != "ok"
                        bar.update(1)
                    if ready and time.monotonic() - last_rebuild > REBUILD_EVERY_S:
                        store.rebuild(order)
                        last_rebuild = time.monotonic()
                    if stop_after is not None and ran >= stop_after and (queue or pending):
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                interrupted = True
                for ref in pending:
                    ray.cancel(ref, force=True)
            finally:
                bar.set_postfix_str(f"running 0, failed {failed}")
                bar.close()
    frame = store.rebuild(order)
    summary = summarize(frame)
    result = SweepResult(frame, summary, store.dir, graphs_dir, ran, skipped, failed, interrupted, oom_retries, limit)
    if out:
        report(result, spec, say, n_jobs=len(jobs))
    return result


def _save(row: dict, graph: bytes | None, job: JobSpec, spec: SweepSpec, store: ResultStore) -> None:
    row["sweep"] = spec.name
    if graph is not None:
        path = atomic_write(spec.graphs_dir / f"{job.job_id}.json", graph)
        row["graph_file"] = str(path)
    store.write_row(row)


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...


def _bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="job", desc="jobs done", file=sys.stderr, dynamic_ncols=True)


def report(result: SweepResult, spec: SweepSpec, say: Callable[[str], None], n_jobs: int) -> None:
    import pandas as pd

    frame = result.frame
    ok = int((frame["status"] == "ok").sum()) if len(frame) else 0
    bad = frame[frame["status"] != "ok"] if len(frame) else frame
    say("")
    if len(result.summary):
        with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
            say(result.summary.to_string(index=False))
    say(f"\n{ok} of {n_jobs} jobs ok, {len(bad)} failed ({result.ran} run now, {result.skipped} finished before)"
        + ("; INTERRUPTED: run the same command again to finish the rest" if result.interrupted else ""))
    for _, r in bad.head(5).iterrows():
        say(f"  failed {r['job_id']} {r['model']} {r['task']} {r['method']}: {str(r['error']).splitlines()[0][:160]}")
    if len(bad) > 5:
        say(f"  ... {len(bad) - 5} more (column 'error' / 'traceback' in the results)")
    say(f"results  {store_paths(result)}")
    say(f"graphs   {result.graphs_dir}/<job_id>.json (MIB JSON; circuits.Graph.load)")


def store_paths(result: SweepResult) -> str:
    d = result.results_dir
    return f"{d / 'results.parquet'}, {d / 'results.csv'} (one row per job; rows/ holds each job's row)"
