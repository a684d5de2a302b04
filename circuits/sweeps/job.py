"""One sweep job: load the model and task, discover, evaluate, and return one tidy row.

:func:`run_job` never raises for a problem of the job itself: the row then has ``status = "error"`` with the
error and its traceback, and the sweep goes on. What a row holds (one column each; NaN where it does not apply,
with the reason in ``notes``):

* the job's spec: ``job_id``, ``model``, ``task``, ``method``, ``params`` (JSON), ``ablation``, ``seed``, ``n``,
  ``batch_size``, ``split``;
* the graph: ``graph_edges`` (edges of the model's graph), ``circuit_edges`` (edges of the circuit the method
  chose itself, ACDC and edge pruning), ``graph_file``;
* faithfulness (on ``[evaluation].split``): ``cpr`` (area under f of the signed-score curve, MIB), ``cmd`` (area
  under |1 - f| of the absolute-score curve, MIB), ``metric_full``, ``metric_empty``, ``curve_fractions``,
  ``curve_signed``, ``curve_absolute`` (JSON lists of f); ``minimal_k`` / ``minimal_edges`` /
  ``minimal_faithfulness``: the smallest top-k circuit reaching ``minimal_target`` (edge methods);
* against a ground truth (planted zoo models): ``auroc`` (ranking ``|score|``, MIB's InterpBench convention;
  node AUROC for node methods), ``auroc_signed`` (raw scores), ``precision_at_size`` / ``recall_at_size`` (top
  as many edges by ``|score|`` as the truth has);
* ``discover_s``, ``evaluate_s``, ``wall_s``, ``threads``, ``host``, ``pid``, ``started``, ``finished``,
  ``version``, ``status``, ``error``, ``traceback``, ``notes`` (warnings raised during the job);
* ``failure``: why a job failed: ``"error"`` (it raised), ``"oom"`` (out of memory: killed by Ray's memory monitor or
  the kernel, or an allocation failed), ``"crashed"`` (its worker died otherwise); ``attempts``: executions the
  row's result took; ``memory_gb``: the memory the job declared to Ray.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from circuits.sweeps.memory import failure_reason, is_out_of_memory
from circuits.sweeps.spec import SHIPPED, JobSpec

# A hook called with the job as each execution of it starts, in the worker (see execute).
JobHook = Callable[[JobSpec], None]

_MODEL_CACHE: dict[tuple, Any] = {}  # one model per worker process, reused by the jobs that worker runs next


def resolve_model(spec: str, device: str | None = None, dtype: str | None = None):
    """``circuits.load_model(spec, device=, dtype=)``, kept for the jobs this worker process runs next."""
    key = (spec, device, dtype)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        from circuits.models.loading import load_model

        _MODEL_CACHE[key] = load_model(spec, device=device, dtype=dtype)
    return _MODEL_CACHE[key]


def resolve_task(job: JobSpec, model):
    from circuits.tasks import load_task

    name = job.task
    if name == SHIPPED:
        from circuits.zoo import task_file

        name = str(task_file(job.model))
    return load_task(name, model, n=job.n, seed=job.seed)


def ground_truth(job: JobSpec, model):
    """The planted circuit shipped with a zoo model, or None."""
    if not job.model.startswith("zoo:"):
        return None
    from circuits.models.loading import ZOO_DIR

    if not (ZOO_DIR / job.model[4:] / "ground_truth.json").is_file():
        return None
    from circuits.zoo import ground_truth as load_truth

    return load_truth(job.model[4:], model)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def empty_row(job: JobSpec) -> dict:
    return {"job_id": job.job_id, "model": job.model, "task": job.task, "method": job.method,
            "params": json.dumps(job.params_dict, sort_keys=True), "ablation": job.ablation, "seed": job.seed,
            "selection": job.evaluation_dict.get("selection", "top_k"),
            "n": job.n, "batch_size": job.batch_size, "split": job.split, "status": "running", "failure": "",
            "attempts": 1, "memory_gb": math.nan, "error": "",
            "traceback": "", "notes": "", "graph_edges": math.nan, "circuit_edges": math.nan, "cpr": math.nan,
            "cmd": math.nan, "metric_full": math.nan, "metric_empty": math.nan, "curve_fractions": "",
            "curve_signed": "", "curve_absolute": "", "minimal_k": math.nan, "minimal_edges": math.nan,
            "minimal_faithfulness": math.nan, "auroc": math.nan, "auroc_signed": math.nan,
            "precision_at_size": math.nan, "recall_at_size": math.nan, "discover_s": math.nan, "evaluate_s": math.nan,
            "wall_s": math.nan,
            "threads": math.nan, "graph_file": "", "host": socket.gethostname(), "pid": os.getpid(),
            "started": _now(), "finished": "", "version": ""}


def execute(job: JobSpec, cpus: float | None = None, on_job_start: JobHook | None = None,
            gpus: float | None = None) -> tuple[dict, bytes | None]:
    """Run ``job``; return ``(row, graph file bytes)`` (the bytes travel back to the driver, which writes them,
    so workers on other machines need no shared file system). Never raises for the job's own errors.
    ``cpus`` / ``gpus``: the job's allocation (torch threads follow ``cpus``; evaluation actors get the same).
    ``on_job_start``: called as ``on_job_start(job)`` in the process that runs the job, as each execution of it
    starts (every attempt: Ray's retries of a dead worker too), before anything is loaded: to log, monitor or
    inject faults (the sweep tests count executions, kill the worker, slow jobs down). An exception it raises is
    the job's error. On Ray it travels with cloudpickle, so it must be picklable and, unless registered by value
    (``cloudpickle.register_pickle_by_value``), importable by the workers."""
    import torch

    from circuits import __version__
    from circuits.discovery import discover

    start = time.perf_counter()
    row = empty_row(job)
    row["version"] = __version__
    notes: list[str] = []
    graph_bytes = None
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))  # from the job's CPU allocation (fractions: one thread)
    row["threads"] = torch.get_num_threads()
    try:
        if on_job_start is not None:
            on_job_start(job)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = resolve_model(job.model, job.device, job.dtype)
            task = resolve_task(job, model)
            row["graph_edges"] = model.structure.n_edges
            t0 = time.perf_counter()
            ev = job.evaluation_dict
            if str(ev.get("selection", "top_k")).startswith("sign_consistent"):  # needs the bootstrap's agreement
                from circuits.discovery.bootstrap import discover_with_sign_agreement

                graph = discover_with_sign_agreement(model, task, job.method, resamples=int(ev.get("resamples", 20)),
                                                     seed=job.seed, ablation=job.ablation, split=job.split,
                                                     batch_size=job.batch_size, **job.params_dict)
            else:
                graph = discover(model, task, job.method, ablation=job.ablation, split=job.split,
                                 batch_size=job.batch_size, **job.params_dict)
            row["discover_s"] = time.perf_counter() - t0
            graph.metadata["job_id"] = job.job_id
            graph.metadata["job"] = job.to_dict()
            if not bool(graph.in_graph.all()) or job.method in ("acdc", "edge-pruning", "edge-pruning-eap-ig"):
                row["circuit_edges"] = int(graph.n_edges)
            with tempfile.TemporaryDirectory() as tmp:
                path = graph.save(Path(tmp) / f"{job.job_id}.json")
                graph_bytes = Path(path).read_bytes()
            t0 = time.perf_counter()
            evaluate_into(row, notes, job, model, task, graph, {"cpus": cpus or 1, "gpus": gpus or 0})
            row["evaluate_s"] = time.perf_counter() - t0
        for w in caught:
            text = f"{w.category.__name__}: {w.message}"
            if text not in notes:
                notes.append(text)
        row["status"] = "ok"
    except Exception as err:  # noqa: BLE001 - the job's error is its result
        row["status"] = "error"
        # "oom": out of memory here, or an evaluation actor killed for memory (the runner retries those)
        row["failure"] = "oom" if is_out_of_memory(err) or _killed_for_memory(err) else "error"
        row["error"] = f"{type(err).__name__}: {err}"
        row["traceback"] = traceback.format_exc()
    row["notes"] = "\n".join(notes)
    row["wall_s"] = time.perf_counter() - start
    row["finished"] = _now()
    return row, graph_bytes


def _killed_for_memory(err: BaseException) -> bool:
    """A Ray error raised inside the job (an evaluation actor's worker) that says memory ran out."""
    try:
        from ray.exceptions import RayError
    except ImportError:  # pragma: no cover - no Ray, no actors
        return False
    return isinstance(err, RayError) and failure_reason(err) == "oom"


def evaluate_into(row: dict, notes: list[str], job: JobSpec, model, task, graph, resources: dict | None = None) -> None:
    """Faithfulness curves (CPR, CMD), the minimal circuit and ground-truth scores, into ``row``."""
    try:
        from circuits.evaluation import mib_scores, minimal_circuit
    except ImportError as err:  # evaluation not available in this version: leave the columns NaN
        notes.append(f"evaluation unavailable ({err}); faithfulness columns left NaN")
        return
    ev = job.evaluation_dict
    level = graph.metadata.get("level", "edge")
    selection = ev.get("selection", "top_k")
    opts = dict(fractions=ev["fractions"], ablation=job.ablation, split=ev["split"], batch_size=ev["batch_size"],
                level=level, selection=selection)
    if ev.get("actors", 0) > 0:  # a large job: its curve points are split over a pool of model replicas
        scores = _pooled_mib_scores(job, model, task, graph, ev, level, resources or {})
        if scores.get("actors"):
            notes.append(f"faithfulness curves evaluated on {scores['actors']} Ray actors")
    else:
        scores = mib_scores(model, task, graph, **opts)
    row["cpr"], row["cmd"] = float(scores["cpr"]), float(scores["cmd"])
    signed, absolute = scores["signed"], scores["absolute"]
    row["metric_full"], row["metric_empty"] = float(signed.metric_full), float(signed.metric_empty)
    row["curve_fractions"] = json.dumps(list(signed.fractions))
    row["curve_signed"] = json.dumps([_num(x) for x in signed.faithfulness])
    row["curve_absolute"] = json.dumps([_num(x) for x in absolute.faithfulness])
    target = float(ev["minimal_target"])
    if target > 0 and level == "edge":
        try:
            small = minimal_circuit(model, task, graph, target=target, ablation=job.ablation, split=ev["split"],
                                    batch_size=ev["batch_size"], selection=selection)
            m = small.metadata["minimal"]
            row["minimal_k"], row["minimal_edges"] = int(m["k"]), int(m["n_edges"])
            row["minimal_faithfulness"] = float(m["faithfulness"])
        except ValueError as err:  # faithfulness undefined on this task: no circuit can reach a target
            notes.append(f"minimal circuit: {err}")
    elif level != "edge":
        notes.append("minimal circuit: node-level method (edge top-k does not apply)")
    truth = ground_truth(job, model)
    if truth is not None:
        from circuits.evaluation import auroc, node_auroc, node_precision_recall_at_size, precision_recall_at_size

        # |score| ranks (MIB's InterpBench convention: an edge matters whichever way it pushes), and signed
        if level == "edge":
            row["auroc"] = float(auroc(graph, truth, absolute=True))
            row["auroc_signed"] = float(auroc(graph, truth))
            pr = precision_recall_at_size(graph, truth, absolute=True)
        else:
            row["auroc"] = float(node_auroc(graph, truth, absolute=True))
            row["auroc_signed"] = float(node_auroc(graph, truth))
            pr = node_precision_recall_at_size(graph, truth, absolute=True)
        row["precision_at_size"], row["recall_at_size"] = float(pr["precision"]), float(pr["recall"])


def _pooled_mib_scores(job: JobSpec, model, task, graph, ev: dict, level: str, res: dict) -> dict:
    import ray

    from circuits.sweeps.actors import EvaluatorPool

    if not ray.is_initialized():  # run_job outside a sweep: evaluate in this process
        from circuits.evaluation import mib_scores

        return mib_scores(model, task, graph, fractions=ev["fractions"], ablation=job.ablation, split=ev["split"],
                          batch_size=ev["batch_size"], level=level, selection=ev.get("selection", "top_k"))
    # each actor loads its own replica from the model's spec (one per GPU where the job's resources name GPUs)
    with EvaluatorPool(job.model, task, n_actors=int(ev["actors"]), ablation=job.ablation, split=ev["split"],
                       batch_size=ev["batch_size"], cpus=res.get("cpus", 1), gpus=res.get("gpus", 0),
                       device=job.device, dtype=job.dtype) as pool:
        return {**pool.mib_scores(graph, fractions=ev["fractions"], level=level,
                                  selection=ev.get("selection", "top_k")), "actors": len(pool)}


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def run_job(job: JobSpec, graphs_dir: str | Path | None = None, cpus: float | None = None,
            on_job_start: JobHook | None = None) -> dict:
    """Run ``job`` in this process; write its graph to ``graphs_dir/<job_id>.json`` when given; return the row.
    ``on_job_start``: as in :func:`execute`."""
    row, graph = execute(job, cpus, on_job_start)
    if graphs_dir is not None and graph is not None:
        from circuits.sweeps.results import atomic_write

        path = Path(graphs_dir) / f"{job.job_id}.json"
        atomic_write(path, graph)
        row["graph_file"] = str(path)
    return row
