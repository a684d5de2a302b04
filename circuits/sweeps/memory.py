"""Sweeps and memory: what a job declares to Ray, and how a job killed for memory is told from other failures.

* **Declared memory**: each job asks Ray for ``memory`` bytes (Ray's memory-aware scheduling: a node runs only as
  many jobs as its memory resource fits, so jobs on a loaded machine queue instead of overcommitting it).
  ``[resources].memory`` gives it in GB; ``"auto"`` (the default) estimates it from the model's shape
  (:func:`estimate_job_memory`); 0 declares none.
* **Out of memory**: Ray's memory monitor kills a task's worker when the node runs low, and by default retries such
  a task forever (``task_oom_retries = -1``), which on a loaded machine is a sweep that never ends. A local Ray
  started by a sweep sets :data:`RAY_SYSTEM_CONFIG` (no Ray retries of OOM kills); the runner retries the job
  itself, a bounded number of times (``[resources].max_retries``) and with fewer jobs at once, and then records it
  with ``failure = "oom"``. :func:`failure_reason` tells an OOM kill from other deaths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from circuits.sweeps.spec import JobSpec

GB = 1024**3
#: A worker with torch, transformers and circuits imported, before any model: about this much resident memory.
WORKER_BASE_BYTES = int(0.75 * GB)
#: Ray's own OOM retries off: the runner retries OOM kills itself, bounded, with fewer concurrent jobs.
RAY_SYSTEM_CONFIG = {"task_oom_retries": 0}
ASSUMED_POSITIONS = 64  # prompt length for the activation estimate (the tasks' prompts are shorter)


def _model_shape(model: str) -> dict[str, int] | None:
    """``{"layers", "heads", "d", "vocab"}`` of a model spec from its config (no weights read), or None."""
    from circuits.models.loading import parse_model_spec
    from circuits.models.random import PRESETS

    try:
        kind, name = parse_model_spec(model)
    except (ValueError, OSError):
        return None
    if kind == "random" and name in PRESETS:
        p = PRESETS[name]
        return {"layers": p["n_layers"], "heads": p["n_heads"], "d": p["d_model"], "vocab": p["vocab_size"]}
    if kind in ("random", "tiny-random"):
        return {"layers": 2, "heads": 4, "d": 32, "vocab": 1000}
    config: Any = None
    if kind in ("zoo", "local"):
        from circuits.models.loading import ZOO_DIR

        folder = ZOO_DIR / name if kind == "zoo" else Path(name)
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            return None
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
            config = json.loads(Path(cached).read_text()) if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001 - not cached, or not a repo id: no estimate
            config = None
    if not isinstance(config, dict):
        return None

    def first(*keys: str) -> int | None:
        values = [config.get(k) for k in keys]
        return next((int(v) for v in values if isinstance(v, int)), None)

    shape = {"layers": first("n_layer", "num_hidden_layers"), "heads": first("n_head", "num_attention_heads"),
             "d": first("n_embd", "hidden_size", "d_model"), "vocab": first("vocab_size")}
    return shape if all(shape.values()) else None  # type: ignore[return-value]


def estimate_job_memory(job: JobSpec) -> int:
    """Bytes a job needs, roughly: the worker, the weights (float32) with their gradients and optimizer state,
    and the sender activations of one batch (``[senders, batch, positions, d]``, clean, ablated and gradients).
    An unknown model gets the worker's base plus 1 GB."""
    shape = _model_shape(job.model)
    if shape is None:
        return WORKER_BASE_BYTES + GB
    layers, heads, d, vocab = shape["layers"], shape["heads"], shape["d"], shape["vocab"]
    weight_bytes = 4 * (12 * layers * d * d + 2 * vocab * d)
    senders = 1 + layers * (heads + 1)
    activation_bytes = 4 * 3 * senders * job.batch_size * ASSUMED_POSITIONS * d
    return int(WORKER_BASE_BYTES + 4 * weight_bytes + activation_bytes)


def job_memory(setting: Any, job: JobSpec) -> int:
    """The bytes ``job`` declares to Ray: ``[resources].memory`` in GB, ``"auto"``: the estimate, 0: none."""
    if setting == "auto":
        return estimate_job_memory(job)
    return int(float(setting) * GB)


def failure_reason(err: BaseException) -> str:
    """``"oom"`` when a job's worker was killed for memory (Ray's memory monitor, the kernel's OOM killer) or the
    job ran out of memory itself; ``"crashed"`` for any other death of the worker."""
    from ray.exceptions import OutOfMemoryError

    cause = getattr(err, "cause", None)  # a RayTaskError carries the exception raised in the task
    if isinstance(err, (OutOfMemoryError, MemoryError)) or isinstance(cause, OutOfMemoryError) \
            or is_out_of_memory(cause):
        return "oom"
    text = str(err).lower()
    if "out of memory" in text or "oom kill" in text or "memory pressure" in text:
        return "oom"  # a worker the kernel's OOM killer took (Ray reports the SIGKILL and names memory)
    return "crashed"


def is_out_of_memory(err: BaseException | None) -> bool:
    """Whether an exception raised inside a job means memory ran out (Python's, torch's CPU or CUDA allocator)."""
    if err is None:
        return False
    import torch

    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(err, RuntimeError) and ("can't allocate memory" in str(err) or "out of memory" in str(err))
