"""Progress bars for long discovery work (tqdm)."""

from __future__ import annotations

from typing import Any, Iterable, TypeVar

from tqdm.auto import tqdm

from circuits.session import CircuitSession

T = TypeVar("T")


def progress(items: Iterable[T], description: str, session: CircuitSession, total: int | None = None,
             **kwargs: Any) -> Iterable[T]:
    """``items`` with a progress bar, shown as the session asks (``show_progress``; None: when stderr is a
    terminal, tqdm's rule)."""
    shown = session.show_progress
    return tqdm(items, desc=description, total=total, disable=None if shown is None else not shown, leave=False,
                dynamic_ncols=True, **kwargs)
