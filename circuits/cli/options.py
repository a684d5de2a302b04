"""What the commands share about their options: the command line's own error, and ``--param NAME=VALUE`` read by
the method's declared parameter types (so ``threshold=abc`` fails here, naming the option, before a model loads)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from circuits.errors import CircuitsError


class UsageError(CircuitsError, ValueError):
    """A command line (or its --config file) that cannot run as written; the message names the option."""


def parse_params(items: list[str], method: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """``--param NAME=VALUE`` items (over ``config``, a --config file's [params] table) for ``method``, converted
    by its declared parameter types and checked against their ranges."""
    from circuits.discovery import METHODS

    if method not in METHODS:
        raise UsageError(f"--method {method!r}: no such method; choose one of {', '.join(sorted(METHODS))}")
    m = METHODS[method]
    if not isinstance(config or {}, dict):
        raise UsageError(f"[params] in the config must be a table of NAME = VALUE, got {config!r}")
    params = m.check_params(dict(config or {}), where="[params] ")
    texts = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--param takes NAME=VALUE, got {item!r} (e.g. --param steps=10)")
        key, raw = (part.strip() for part in item.split("=", 1))
        texts[key] = raw
    unknown = {k: raw for k, raw in texts.items() if k not in m.parameters}
    m.check_params(unknown, where="--param ")  # raises for any unknown name, listing the method's parameters
    parsed = {k: m.parameters[k].parse(raw) for k, raw in texts.items()}
    return {**params, **m.check_params(parsed, where="--param ")}


def model_options(device: str | None, dtype: str | None) -> dict[str, Any]:
    """``--device`` and ``--dtype`` checked, under their option names, before a model loads: the keyword arguments
    of :func:`circuits.load_model`."""
    from circuits.models.options import resolve_device, resolve_dtype

    return {"device": None if device is None else resolve_device(device, "--device"),
            "dtype": resolve_dtype(dtype, "--dtype")}


def add_worker_options(p) -> None:
    """``--workers N`` and ``--address``: one run spread over Ray actors, each a model replica."""
    p.add_argument("--workers", type=int, help="spread the run over N Ray actors, each a model replica (one GPU each "
                   "where the cluster has GPUs, else one CPU); the results are one process's")
    p.add_argument("--address", help="with --workers: join a running Ray cluster (auto, or ray://HOST:10001; "
                   "default: start a local Ray)")


def check_workers(workers: Any, address: Any) -> None:
    """``--workers`` / ``--address`` checked before a model loads."""
    if workers is None:
        if address is not None:
            raise UsageError("--address joins a Ray cluster for --workers; add --workers N")
        return
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"--workers {workers!r}: expected an integer >= 1 (Ray actors, one model replica each)")


@contextmanager
def worker_pool(workers: int | None, address: str | None, model_spec: str, task: Any, *, ablation: str,
                split: str, batch_size: int, dtype: str | None, grouped_kv: bool | None = None) -> Iterator[Any]:
    """None without ``--workers``; else an :class:`~circuits.sweeps.actors.EvaluatorPool` of ``workers`` actors on
    Ray (local, or the cluster at ``address``), each loading ``model_spec`` itself (on its own GPU where there
    is one), shut down on exit."""
    check_workers(workers, address)
    if workers is None:
        yield None
        return
    from circuits.sweeps import ray_session
    from circuits.sweeps.actors import EvaluatorPool

    with ray_session(address=address):
        print(f"ray    {workers} actor(s), each loading {model_spec}" + (f" (cluster {address})" if address else ""))
        with EvaluatorPool(str(model_spec), task, n_actors=workers, ablation=ablation, split=split,
                           batch_size=batch_size, dtype=dtype, grouped_kv=grouped_kv) as pool:
            yield pool


def memory_options(memory_budget: str | None, examples_per_pass: int | None = None,
                   position_chunk: int | None = None) -> dict[str, Any]:
    """``--memory-budget`` (a size: 4GB, 512MB, or bytes), ``--examples-per-pass`` and ``--position-chunk``
    checked under their option names before a model loads: the keyword arguments of ``discover`` / ``evaluate``."""
    from circuits.session.memory import parse_memory

    out: dict[str, Any] = {"memory_budget": None, "examples_per_pass": examples_per_pass}
    if memory_budget is not None:
        try:
            out["memory_budget"] = parse_memory(memory_budget, "--memory-budget")
        except ValueError as err:
            raise UsageError(str(err)) from None
    for flag, value in (("--examples-per-pass", examples_per_pass), ("--position-chunk", position_chunk)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: expected an integer >= 1 (or leave it out: from the memory budget)")
    if position_chunk is not None:
        out["position_chunk"] = position_chunk
    return out


def add_memory_arguments(p, positions: bool = True) -> None:
    """The memory options of a command that runs circuits (``discover``, ``evaluate``)."""
    p.add_argument("--memory-budget", dest="memory_budget", metavar="SIZE",
                   help="activation memory a pass may use, e.g. 4GB: passes are chunked over examples (and "
                        "positions) to fit, or the run stops before it starts (default: half the free GPU memory; "
                        "on CPU no chunking)")
    p.add_argument("--examples-per-pass", dest="examples_per_pass", type=int, metavar="N",
                   help="examples of a batch per pass (default: from --memory-budget)")
    if positions:
        p.add_argument("--position-chunk", dest="position_chunk", type=int, metavar="N",
                       help="positions per chunk of the attribution backward (default: from --memory-budget)")
