"""Shared look of every figure: colours, the Agg backend, saving by suffix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import matplotlib

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Signed scores: blue helps, red hurts (ColorBrewer RdBu ends); grey where there is no score.
POSITIVE = (0.129, 0.400, 0.675)  # #2166ac
NEGATIVE = (0.698, 0.094, 0.169)  # #b2182b
NEUTRAL = (0.55, 0.55, 0.55)
HEAD_FILL = (0.871, 0.922, 0.969)  # #deebf7
HEAD_EDGE = (0.192, 0.510, 0.741)  # #3182bd
MLP_FILL = (0.898, 0.961, 0.878)  # #e5f5e0
MLP_EDGE = (0.192, 0.639, 0.329)  # #31a354
IO_FILL = (0.25, 0.25, 0.25)
GRID = "0.93"


class PortStyle(TypedDict):
    """How a q / k / v input is drawn: marker (matplotlib), shape (graphviz) and colour."""

    marker: str
    dot: str
    color: tuple[float, float, float]


# q / k / v inputs: marker (matplotlib), shape (graphviz) and colour.
QKV_STYLE: dict[str, PortStyle] = {
    "q": {"marker": "v", "dot": "invtriangle", "color": (0.902, 0.333, 0.051)},  # orange
    "k": {"marker": "s", "dot": "square", "color": (0.459, 0.420, 0.694)},  # purple
    "v": {"marker": "D", "dot": "diamond", "color": (0.106, 0.620, 0.467)},  # teal
}
# Methods get stable colours across figures (tab10, in order of first appearance otherwise).
METHOD_COLOURS = {"eap": 0, "eap-ig": 1, "eap-ig-inputs": 1, "eap-ig-activations": 2, "acdc": 3,
                  "edge-pruning": 4, "exact": 7, "node-ap": 5, "node-patching": 6, "random": 8}


def use_agg() -> None:
    """Select the non-interactive Agg backend unless a figure-capable backend was chosen explicitly."""
    if matplotlib.get_backend().lower() not in ("agg", "svg", "pdf", "cairo", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg", force=True)


def figure(width: float, height: float, **kwargs) -> tuple[Figure, Axes]:
    """A figure that is not registered with pyplot (so nothing leaks or pops up) and one axes."""
    from matplotlib.figure import Figure

    use_agg()
    fig = Figure(figsize=(width, height), **kwargs)
    ax = fig.add_subplot(1, 1, 1)
    return fig, ax


def subplots(nrows: int, ncols: int, width: float, height: float, **kwargs):
    from matplotlib.figure import Figure

    use_agg()
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def method_colour(method: str, index: int):
    """One hue per method (tab20's dark shade). A method shown with settings (``"acdc threshold=0.1"``) takes the
    dark or light shade of its hue by the parity of ``index`` (its position in the figure's sorted labels), so
    two settings of one method, adjacent in that order, differ."""
    import matplotlib as mpl

    name, _, settings = str(method).lower().partition(" ")
    hue = METHOD_COLOURS.get(name, index) % 10
    shade = index % 2 if settings else 0
    return mpl.colormaps["tab20"](2 * hue + shade)


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    from circuits.plotting.provenance import save
    return save(fig, path, dpi=dpi)
