"""Normalising by the full model and the empty circuit: f = (M(C) - M(empty)) / (M(full) - M(empty)).

The one tolerance under which M(full) and M(empty) count as equal lives here, so discovery (which refuses to
attribute nothing), evaluation and curves (which report f as NaN then) agree on when f is undefined.
"""

from __future__ import annotations

import math
import warnings
from typing import overload

import torch
from torch import Tensor


class FaithfulnessWarning(UserWarning):
    """A faithfulness number that should not be trusted as is (undefined, or an empty circuit)."""


UNDEFINED_ATOL, UNDEFINED_RTOL = 1e-6, 1e-5  # |M(full) - M(empty)| below this: nothing to normalise by


@overload
def undefined(full: float, empty: float) -> bool: ...
@overload
def undefined(full: Tensor, empty: Tensor) -> Tensor: ...
def undefined(full, empty):  # noqa: E301
    """True when M(full) and M(empty) are too close (or not finite) for faithfulness, or attribution, to mean
    anything; elementwise for tensors (per-example values)."""
    if isinstance(full, Tensor):
        close = (full - empty).abs() <= UNDEFINED_ATOL + UNDEFINED_RTOL * torch.maximum(full.abs(), empty.abs())
        return close | ~(torch.isfinite(full) & torch.isfinite(empty))
    return not (math.isfinite(full) and math.isfinite(empty)) or \
        abs(full - empty) <= UNDEFINED_ATOL + UNDEFINED_RTOL * max(abs(full), abs(empty))


def normalized(metric: float, full: float, empty: float) -> float:
    """``(M(C) - M(empty)) / (M(full) - M(empty))``, NaN when the denominator is (numerically) zero."""
    if undefined(full, empty):
        return math.nan
    return (metric - empty) / (full - empty) + 0.0  # + 0.0: no -0.0 for the empty circuit


def warn_undefined(full: float, empty: float, task: str, ablation: str, stacklevel: int = 3) -> None:
    """Say, once per computation, that f is NaN because the corruption does not move the metric."""
    warnings.warn(
        f"faithfulness is undefined (NaN) on task {task!r}: the full model and the empty circuit give the same "
        f"mean metric (M(full) = {full:.6g}, M(empty) = {empty:.6g}, ablation {ablation!r}), so "
        "(M(C) - M(empty)) / (M(full) - M(empty)) divides by ~0. The corruption does not change what the metric "
        "measures: check that the corrupted prompts differ where it matters, use another ablation, or another "
        "metric (task.with_metric('kl')).", FaithfulnessWarning, stacklevel=stacklevel)
