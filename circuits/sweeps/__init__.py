"""Sweeps: tasks x models x methods x parameters x seeds, run as Ray tasks, with resumable results.

    spec = circuits.sweeps.load_sweep("discovery/quick.toml", overrides={"n": 16})
    jobs = spec.expand()                       # JobSpec, each with a job_id (hash of its full spec)
    result = circuits.sweeps.run_sweep(spec)   # results/<name>/results.parquet, graphs/<name>/<job_id>.json
    row = circuits.sweeps.run_job(jobs[0])     # one job in this process (no Ray)

``circuits run discovery/quick.toml`` is the command line. Large single jobs spread over Ray actors with
:class:`circuits.sweeps.actors.EvaluatorPool`.
"""

from circuits.sweeps.job import execute, run_job
from circuits.sweeps.results import ResultStore, atomic_write
from circuits.sweeps.runner import SweepResult, ray_session, run_sweep, summarize
from circuits.sweeps.spec import JobSpec, SweepError, SweepSpec, apply_overrides, load_sweep

__all__ = ["load_sweep", "SweepSpec", "JobSpec", "SweepError", "apply_overrides", "run_sweep", "SweepResult",
           "ray_session", "summarize", "run_job", "execute", "ResultStore", "atomic_write"]
