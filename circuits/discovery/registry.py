"""The discovery methods, by name: each method module registers its functions here when it is imported, and
:mod:`circuits.discovery` imports them all, so :data:`METHODS` is complete as soon as the package is."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from circuits.session import SessionError

#: Raised when discovery cannot run as asked (the session's own errors are the same type).
DiscoveryError = SessionError


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
    defaults: dict = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        """The method's parameters and their defaults (read from its signature)."""
        sig = inspect.signature(self.fn)
        return {k: p.default for k, p in list(sig.parameters.items())[1:] if k not in ("checkpoint", "on_progress")}


METHODS: dict[str, Method] = {}


def register(name: str, level: str, description: str, **kwargs: Any) -> Callable[[Callable], Callable]:
    """Add a method to :data:`METHODS` (its parameters are read from the function's signature)."""

    def wrap(fn: Callable) -> Callable:
        METHODS[name] = Method(name, fn, level, description, **kwargs)
        return fn

    return wrap
