"""What the commands share about their options: the command line's own error, and ``--param NAME=VALUE`` read by
the method's declared parameter types (so ``threshold=abc`` fails here, naming the option, before a model loads)."""

from __future__ import annotations

from typing import Any

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
