"""Progress bars for long discovery work (tqdm; silent when output is not a terminal or when asked)."""

from __future__ import annotations

import os
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], description: str, total: int | None = None, **kwargs) -> Iterable[T]:
    """``items`` with a progress bar; ``CIRCUITS_PROGRESS=0`` silences every bar, ``=1`` forces them."""
    setting = os.environ.get("CIRCUITS_PROGRESS")
    disable = None if setting is None else setting in ("0", "false", "no")
    return tqdm(items, desc=description, total=total, disable=disable, leave=False, dynamic_ncols=True, **kwargs)
