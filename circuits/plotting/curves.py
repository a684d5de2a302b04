"""Faithfulness curves: f against the fraction of edges kept, one line per method, CPR / CMD in the legend.

Anything curve-like is accepted: a ``FaithfulnessCurve`` (``.to_frame()``, ``.cpr``, ``.cmd``), a DataFrame with
``fraction`` and ``faithfulness`` columns, ``curve.to_dict()`` (or its JSON), a list of ``{fraction,
faithfulness}`` rows, or a list of f values at MIB's ten fractions. A *list of curves* (seeds) is drawn as its
mean with a band of +- one standard deviation, and the legend gives CPR / CMD as mean +- std.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from circuits.plotting.style import figure, method_colour, save_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass
class CurvePoints:
    """One curve reduced to what is drawn: sorted fractions, f, and its CPR / CMD."""

    fractions: np.ndarray
    faithfulness: np.ndarray
    cpr: float
    cmd: float


def curve_points(curve: Any) -> CurvePoints:
    """Normalise any curve-like object (see the module docstring) to :class:`CurvePoints`."""
    cpr = cmd = None
    if isinstance(curve, (str, bytes)):
        curve = json.loads(curve)
    if hasattr(curve, "to_frame") and not hasattr(curve, "columns"):
        cpr, cmd = getattr(curve, "cpr", None), getattr(curve, "cmd", None)
        curve = curve.to_frame()
    if isinstance(curve, Mapping) and "faithfulness" not in curve and "signed" in curve:
        # mib_scores()-style {cpr, cmd, signed, absolute}: draw the signed curve, keep MIB's CPR and CMD
        cpr, cmd = curve.get("cpr"), curve.get("cmd")
        inner = curve_points(curve["signed"])
        return CurvePoints(inner.fractions, inner.faithfulness, float(cpr) if cpr is not None else inner.cpr,
                           float(cmd) if cmd is not None else inner.cmd)
    if isinstance(curve, Mapping):
        cpr, cmd = curve.get("cpr", cpr), curve.get("cmd", cmd)
        fr = curve.get("fractions", curve.get("fraction"))
        f = curve.get("faithfulness")
        if f is None:
            raise ValueError("a curve given as a mapping needs 'faithfulness' (and 'fractions'); "
                             f"got keys {list(curve)}")
        if fr is None:
            fr = MIB_FRACTIONS if len(f) == len(MIB_FRACTIONS) else None
        if fr is None:
            raise ValueError(f"a curve of {len(f)} points needs its 'fractions'")
        x, y = np.asarray(fr, dtype=float), np.asarray(f, dtype=float)
    elif hasattr(curve, "columns"):  # DataFrame
        cols = {c.lower(): c for c in curve.columns}
        if "faithfulness" not in cols or not ({"fraction", "fractions"} & set(cols)):
            raise ValueError(f"a curve frame needs 'fraction' and 'faithfulness' columns, got {list(curve.columns)}")
        x = curve[cols.get("fraction", cols.get("fractions"))].to_numpy(dtype=float)
        y = curve[cols["faithfulness"]].to_numpy(dtype=float)
    elif isinstance(curve, Sequence) or isinstance(curve, np.ndarray):
        seq = list(curve)
        if seq and isinstance(seq[0], Mapping):
            x = np.asarray([r.get("fraction", r.get("fractions")) for r in seq], dtype=float)
            y = np.asarray([r["faithfulness"] for r in seq], dtype=float)
        elif len(seq) == len(MIB_FRACTIONS):
            x, y = np.asarray(MIB_FRACTIONS), np.asarray(seq, dtype=float)
        else:
            raise ValueError(f"a bare list of {len(seq)} f values is ambiguous; give fractions too "
                             "(a frame, a dict with 'fractions' and 'faithfulness', or rows)")
    else:
        raise TypeError(f"not a faithfulness curve: {type(curve).__name__}")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if cpr is None or cmd is None:  # MIB's areas, as circuits.evaluation computes them; NaN for a partial curve
        from circuits.evaluation import area_under_curve

        complete = len(y) >= 2 and bool(np.isfinite(y).all())
        if cpr is None:
            cpr = area_under_curve(x.tolist(), y.tolist()) if complete else math.nan
        if cmd is None:
            cmd = area_under_curve(x.tolist(), np.abs(1.0 - y).tolist()) if complete else math.nan
    return CurvePoints(x, y, float(cpr), float(cmd))


def _is_group(value: Any) -> bool:
    """A list of curves (seeds), as opposed to one curve given as a list of points or values."""
    if isinstance(value, (str, bytes, Mapping)) or hasattr(value, "columns") or hasattr(value, "to_frame"):
        return False
    if isinstance(value, (list, tuple)) and value:
        first = value[0]
        return (hasattr(first, "to_frame") or hasattr(first, "columns")
                or isinstance(first, (str, bytes, list, tuple, np.ndarray))
                or (isinstance(first, Mapping) and ("signed" in first or (
                    "faithfulness" in first and not np.isscalar(first["faithfulness"])))))
    return False


def _fmt(values: Sequence[float]) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}"


def plot_faithfulness_curves(curves: Mapping[str, Any], path: str | os.PathLike | None = None, *,
                             title: str | None = None, log_x: bool = True, target: float | None = 0.9,
                             provenance: Mapping[str, Any] | None = None, show: str = "both",
                             dpi: int = 150) -> Figure:
    """One line per entry of ``curves`` (``{label: curve or list of curves}``): f against the fraction of edges.

    ``log_x`` (default) spaces MIB's fractions 0.001 .. 1 evenly; CPR and CMD are still MIB's areas on the
    linear axis (as reported everywhere else). ``show``: ``"both"`` (default), ``"cpr"`` or ``"cmd"`` in the
    legend -- MIB reads CPR off signed-score curves and CMD off absolute-score curves. ``target`` draws the
    f = 0.9 line of the minimal-circuit criterion (``None`` to omit). Writes ``path`` (.png/.svg/.pdf) if given.
    """
    if not curves:
        raise ValueError("no curves to plot")
    fig, ax = figure(7.2, 4.6)
    for i, (label, value) in enumerate(curves.items()):
        group = [curve_points(c) for c in value] if _is_group(value) else [curve_points(value)]
        colour = method_colour(str(label), i)
        xs = group[0].fractions
        if all(len(g.fractions) == len(xs) and np.allclose(g.fractions, xs) for g in group):
            ys = np.vstack([g.faithfulness for g in group])
            mean = np.nanmean(ys, axis=0) if np.isfinite(ys).any() else ys[0]
            if len(group) > 1:
                sd = np.nanstd(ys, axis=0, ddof=1)
                ax.fill_between(xs, mean - sd, mean + sd, color=colour, alpha=0.15, linewidth=0)
        else:  # seeds on different fractions: draw each thinly and no mean
            for g in group[1:]:
                ax.plot(g.fractions, g.faithfulness, color=colour, alpha=0.4, lw=0.8)
            xs, mean = group[0].fractions, group[0].faithfulness
        parts = []
        if show in ("both", "cpr"):
            parts.append(f"CPR {_fmt([g.cpr for g in group])}")
        if show in ("both", "cmd"):
            parts.append(f"CMD {_fmt([g.cmd for g in group])}")
        seeds = f", {len(group)} runs" if len(group) > 1 else ""
        ax.plot(xs, mean, marker="o", ms=3.5, lw=1.8, color=colour,
                label=f"{label}{seeds}: " + ", ".join(parts))
    ax.axhline(1.0, color="0.35", lw=0.9, ls="--")
    ax.axhline(0.0, color="0.35", lw=0.9, ls=":")
    if target is not None:
        ax.axhline(target, color="0.6", lw=0.8, ls="-.")
    trans = ax.get_yaxis_transform()
    ax.text(1.005, 1.0, "full model", transform=trans, fontsize=7, color="0.35", va="center", ha="left")
    ax.text(1.005, 0.0, "empty", transform=trans, fontsize=7, color="0.35", va="center", ha="left")
    if target is not None:
        ax.text(1.005, target, f"f = {target:g}", transform=trans, fontsize=7, color="0.5", va="top", ha="left")
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_percent_formatter())
    ax.set_xlabel("fraction of edges in the circuit (log scale)" if log_x else "fraction of edges in the circuit")
    ax.set_ylabel("faithfulness f")
    ax.grid(True, which="major", color="0.92", lw=0.7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(0.0, -0.13), ncol=1)
    ax.set_title(title or "Faithfulness against circuit size (CPR: higher is better, CMD: lower is better)",
                 fontsize=10, loc="left")
    if provenance:
        from circuits.plotting.provenance import stamp
        stamp(fig, provenance)
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


def _percent_formatter() -> FuncFormatter:
    """0.001 -> 0.1%, 0.5 -> 50% (a plain callable formatter, no pyplot)."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{100 * v:.3g}%")
