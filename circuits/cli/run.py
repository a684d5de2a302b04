"""``circuits run SWEEP.toml``: expand a sweep into jobs and run them on Ray (resumable)."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  circuits run discovery/quick.toml                  # every method on the bundled models, a local Ray, no set-up
  circuits run quick --dry-run                       # list the jobs (discovery/quick.toml), run nothing
  circuits run discovery/benchmark.toml --address auto        # join a running Ray cluster (ray start --head)
  circuits run quick --set n=16 --set methods=eap,random      # override any key of the file
  circuits run quick --set params.eap-ig.steps=[3,5] --set resources.gpus=0.25
  circuits run quick --max-parallel 2 --num-cpus 2

Interrupt (Ctrl-C) and run the same command again: finished jobs (identified by a hash of their full spec) are
skipped, the rest run. Jobs that failed are run again unless --keep-failed. Results: one row per job in
results/<name>/results.parquet and .csv (rows/<job_id>.json written atomically as each job ends); scored graphs
in graphs/<name>/<job_id>.json. Sweep files are documented in circuits/sweeps/spec.py; discovery/quick.toml is
a complete example.
"""


def run(args: argparse.Namespace, on_job_start=None) -> int:
    """``circuits run``; ``on_job_start``: passed to :func:`circuits.sweeps.run_sweep` (a hook called in the worker
    as each job starts)."""
    from circuits.sweeps import load_sweep

    spec = load_sweep(args.sweep, overrides=args.set or [])  # every error here, before any job starts
    if args.name:
        spec.name = args.name
    jobs = spec.expand()
    if args.dry_run:
        import pandas as pd

        from circuits.sweeps import ResultStore

        status = ResultStore(spec.results_dir).status()
        frame = pd.DataFrame([{"job_id": j.job_id, "model": j.model, "task": j.task, "method": j.method,
                               "params": ",".join(f"{k}={v}" for k, v in j.params) or "-", "ablation": j.ablation,
                               "seed": j.seed, "done": status.get(j.job_id, "")} for j in jobs])
        with pd.option_context("display.width", 200, "display.max_rows", 500, "display.max_colwidth", 60):
            print(frame.to_string(index=False))
        print(f"\n{len(jobs)} job(s) in sweep {spec.name!r} from {spec.source}; "
              f"{sum(s == 'ok' for s in status.values())} already done; per job {spec.resources['cpus']} CPU, "
              f"gpus {spec.resources['gpus']}, memory {_memory(spec.resources['memory'])}; "
              f"results -> {spec.results_dir}, graphs -> {spec.graphs_dir}")
        for note in spec.skipped:
            print(f"left out: {note}")
        return 0
    from circuits.sweeps import run_sweep

    result = run_sweep(spec, address=args.address, max_parallel=args.max_parallel, num_cpus=args.num_cpus,
                       retry_failed=not args.keep_failed, progress=not args.quiet, on_job_start=on_job_start)
    if result.interrupted:
        return 130
    return 1 if result.failed and args.strict else 0


def _memory(setting) -> str:
    return "estimated per model" if setting == "auto" else f"{setting} GB" if setting else "not declared"


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a sweep (tasks x models x methods x params x seeds) on Ray, resumably",
                       description="Expand a sweep file into jobs (discover, evaluate: faithfulness curve, CPR, CMD, "
                                   "minimal circuit, AUROC against a shipped ground truth) and run them as Ray "
                                   "tasks: one GPU per job where GPUs exist, CPUs otherwise.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="a sweep TOML file, or the name of one in discovery/ (quick, benchmark)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key of the file (TOML value): n=16, methods=eap,random, "
                        "params.acdc.threshold=[0.01,0.1], resources.gpus=0.5, evaluation.minimal_target=0")
    p.add_argument("--address", help="join a Ray cluster: auto, or ray://HOST:10001 (default: start a local Ray)")
    p.add_argument("--max-parallel", dest="max_parallel", type=int, help="jobs in flight at once (default: all "
                   "that the cluster's resources fit)")
    p.add_argument("--num-cpus", dest="num_cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument("--name", help="the sweep's name (output folders; default: the file's name key or file name)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="list the jobs and what is done; run nothing")
    p.add_argument("--keep-failed", dest="keep_failed", action="store_true",
                   help="on resume, do not rerun jobs that ended in an error")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when any job failed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

