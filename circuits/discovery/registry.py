"""The discovery methods, by name: each method module registers its functions here when it is imported, and
:mod:`circuits.discovery` imports them all, so :data:`METHODS` is complete as soon as the package is.

Each method declares its parameters: their types come from the function's signature, their ranges and choices
from ``register(..., ranges=...)``. :meth:`Method.check_params` is the one check every entry point applies
(``circuits.discover``, ``circuits discover --param``, sweep files), so a bad value fails before any work starts.
"""

from __future__ import annotations

import builtins
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from circuits.session import SessionError

#: Raised when discovery cannot run as asked (the session's own errors are the same type).
DiscoveryError = SessionError

_TYPES = (bool, int, float, str)  # the parameter types a method may declare (bool before int: bool is an int)
_SEQUENCES = (list, tuple)  # list[str] / tuple[str, ...]: a list of names (comma-separated on the command line)


@dataclass(frozen=True)
class Param:
    """One declared method parameter: its type (bool, int, float or str), default, whether None is allowed,
    and its range (``low``/``high``, ``low_open``: ``low`` itself excluded) or its ``choices``."""

    name: str
    type: type
    default: Any
    optional: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple = ()
    sequence: bool = False  # a list of ``type`` values (``members=eap-ig,eap``); ranges and choices apply to each
    objects: "tuple[builtins.type, ...]" = ()  # Python-only alternatives, passed as they are (a BackwardRule)

    def describe(self) -> str:
        """``"a number > 0"``, ``"an integer >= 1 or None"``, ``"one of 'kl', 'task'"``."""
        if self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[self.type]
            if self.low is not None and self.high is not None:
                text += f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
            elif self.low is not None:
                text += f" {'>' if self.low_open else '>='} {self.low:g}"
            elif self.high is not None:
                text += f" <= {self.high:g}"
        if self.sequence:
            text = "a list of " + (text.replace("one of", "names from") if self.choices else text.replace("a ", "", 1)
                                   + "s")
        return text + (" or None" if self.optional else "")

    def parse(self, text: str) -> Any:
        """A value from the command line's text (``--param steps=10``), converted by the declared type; a value
        that does not convert is returned as text, for :meth:`check` to reject with the full message."""
        raw = text.strip()
        if self.optional and raw.lower() in ("none", "null", ""):
            return None
        if self.sequence:
            return [Param(self.name, self.type, None).parse(part) for part in raw.split(",") if part.strip()]
        if self.type is bool:
            return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(raw.lower(), raw)
        if self.type in (int, float):
            try:
                return self.type(raw)
            except ValueError:
                try:
                    as_float = float(raw)  # "1e3" for an integer parameter
                except ValueError:
                    return raw
                return int(as_float) if self.type is int and as_float.is_integer() else raw
        return raw

    def check(self, value: Any, where: str) -> Any:
        """``value`` as this parameter's type (an integer is a valid float), or a :class:`DiscoveryError` that
        names ``where`` (the method and option), the value and what is accepted."""
        if value is None and self.optional:
            return None
        if self.objects and isinstance(value, self.objects):
            return value
        if self.sequence:
            if isinstance(value, str):  # "eap-ig,eap", as on the command line
                value = self.parse(value)
            if not isinstance(value, _SEQUENCES) or not value:
                raise DiscoveryError(f"{where}{self.name}={value!r}: expected {self.describe()}")
            item = Param(self.name, self.type, None, low=self.low, high=self.high, low_open=self.low_open,
                         choices=self.choices)
            return type(value)(item.check(v, where) for v in value)
        ok = False
        if self.type is bool:
            ok = isinstance(value, bool)
        elif self.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, str)
        if ok and self.choices:
            ok = value in self.choices
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value <= self.high
        if not ok:
            example = "" if self.default is None else f" (default {self.default!r})"
            raise DiscoveryError(f"{where}{self.name}={value!r}: expected {self.describe()}{example}")
        return value


@dataclass(frozen=True)
class Method:
    """A discovery method: ``fn(session, **params)`` returns ``[S, R]`` edge scores or ``[n_nodes]`` node scores,
    or ``(scores [S, R], in_graph [S, R] bool)`` when the method chooses its circuit itself (ACDC, edge pruning)."""

    name: str
    fn: Callable[..., Any]
    level: str  # "edge" | "node"
    description: str
    ablations: tuple[str, ...] = ("corrupted", "mean", "zero")
    why_not: str = ""  # why the other ablations are ruled out
    checkpoints: bool = False  # the method accepts checkpoint=Checkpoint
    # Spreading one run over workers: ``units(session, **params)`` is the length of the method's fixed work list
    # (attribution: the session's batches; exact patching: its passes), whose parts run wherever
    # ``session.share`` says and whose outputs add up to the whole run's (``EvaluatorPool``). None: one process.
    units: Callable[..., int] | None = None
    defaults: dict = field(default_factory=dict)
    parameters: dict[str, Param] = field(default_factory=dict)  # declared by register(): types, ranges, choices
    # params -> CircuitSession.fit's arguments (the pass the method runs; a list: several kinds of pass);
    # None: patched passes of circuits
    memory: Callable[[dict], dict | list[dict]] | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The method's parameters and their defaults (read from its signature)."""
        return {name: p.default for name, p in self.parameters.items()}

    def memory_plans(self, params: dict[str, Any]) -> list[dict]:
        """The passes :meth:`CircuitSession.fit` sizes before the method runs with ``params`` (its defaults fill
        the rest): :attr:`memory`'s plans as a list, or one patched pass when it declares none."""
        if self.memory is None:
            return [{"kind": "patched"}]
        plans = self.memory({**self.params, **params})
        return plans if isinstance(plans, list) else [plans]

    def check_params(self, params: dict[str, Any], where: str = "") -> dict[str, Any]:
        """``params`` checked against the declared parameters (unknown names, types, ranges) and converted;
        ``where`` prefixes each message with the option they came from (``"--param "``)."""
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            known = ", ".join(f"{k}={p.default!r} ({p.describe()})" for k, p in self.parameters.items())
            raise DiscoveryError(f"method {self.name!r} has no parameter(s) {where}{', '.join(unknown)}; its "
                                 f"parameters: {known or 'none'}")
        return {k: self.parameters[k].check(v, f"{where}{self.name} ") for k, v in params.items()}


METHODS: dict[str, Method] = {}


def declared_parameters(fn: Callable, ranges: dict[str, dict[str, Any]]) -> dict[str, Param]:
    """The parameters of ``fn`` after its session (``checkpoint`` and ``on_progress`` are the runner's): types
    from the annotations, ``ranges[name]`` the :class:`Param` fields beyond them (low, high, low_open, choices)."""
    out = {}
    for name, p in list(inspect.signature(fn).parameters.items())[1:]:
        if name in ("checkpoint", "on_progress"):
            continue
        # annotations are text (postponed evaluation), read in the method's module: "int | None", "str | BackwardRule"
        hint = (eval(p.annotation, {**fn.__globals__, "__builtins__": builtins}) if isinstance(p.annotation, str)
                else p.annotation)
        members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        optional = type(None) in members
        kinds = [m for m in members if m in _TYPES]
        sequences = [typing.get_args(m)[0] for m in members if typing.get_origin(m) in _SEQUENCES]
        objects = tuple(m for m in members if isinstance(m, type) and typing.get_origin(m) is None
                        and m not in _TYPES and m is not type(None))
        if sequences and not kinds and set(sequences) <= set(_TYPES) and len(set(sequences)) == 1:
            kinds, sequence = [sequences[0]], True
        else:
            sequence = False
        typed = len(sequences) if sequence else len(kinds)
        if len(kinds) != 1 or len(members) != typed + optional + len(objects):
            raise TypeError(f"{fn.__name__}: parameter {name} must be annotated bool, int, float or str, or a list "
                            f"of one of them (optionally | None, | a Python-only class), not {hint}")
        out[name] = Param(name, kinds[0], p.default, optional=optional, sequence=sequence, objects=objects,
                          **ranges.get(name, {}))
    unknown = sorted(set(ranges) - set(out))
    if unknown:
        raise TypeError(f"{fn.__name__}: ranges for parameters it does not take: {', '.join(unknown)}")
    return out


def register(name: str, level: str, description: str, *, ranges: dict[str, dict[str, Any]] | None = None,
             **kwargs: Any) -> Callable[[Callable], Callable]:
    """Add a method to :data:`METHODS`. Its parameters' types are read from the function's signature; ``ranges``
    declares the rest, e.g. ``{"steps": {"low": 1}, "metric": {"choices": ("kl", "task")}}``."""

    def wrap(fn: Callable) -> Callable:
        METHODS[name] = Method(name, fn, level, description, parameters=declared_parameters(fn, ranges or {}),
                               **kwargs)
        return fn

    return wrap
