"""Edge-score distributions and agreement between methods (overlap of their top-k edges)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Literal, Mapping

import numpy as np

from circuits.plotting.style import NEGATIVE, POSITIVE, method_colour, save_figure, subplots

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

    from circuits.graph import Graph

Agreement = Literal["jaccard", "overlap"]


def _as_dict(graphs: Graph | Mapping[str, Graph]) -> dict[str, Graph]:
    if isinstance(graphs, Mapping):
        return dict(graphs)
    md = getattr(graphs, "metadata", {}) or {}
    return {str(md.get("method", "scores")): graphs}


def _edge_scores(graph: Graph) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every edge (MIB order) and whether each is in the circuit (of every edge-position, edge by edge,
    for a position-aware graph)."""
    st = graph.structure
    order = st.edge_order
    scores = graph.scores.detach().cpu().double()[order[:, 0], order[:, 1]].numpy()
    flags = graph.in_graph.detach().cpu()[order[:, 0], order[:, 1]].numpy()
    return scores.reshape(-1), flags.reshape(-1)


def plot_score_distribution(graphs: Graph | Mapping[str, Graph], path: str | os.PathLike | None = None, *,
                            bins: int = 80, symlog: bool = True, title: str | None = None,
                            provenance: Mapping[str, Any] | None = None, dpi: int = 150) -> Figure:
    """Histogram of signed edge scores, log count axis, one panel per graph (methods' scales differ).

    Every edge's score is counted in grey; when a graph holds a proper circuit (not every edge), its circuit's
    edges are overlaid in colour (blue positive, red negative) so one sees where the selection cut. NaN
    (unscored) edges are counted in the panel's note.

    ``symlog`` (default): a signed-log score axis (linear within the 10th percentile of ``|score|``), because
    attribution scores are heavy-tailed: most edges sit near 0 and the few that matter lie decades away.
    """
    graphs = _as_dict(graphs)
    if not graphs:
        raise ValueError("no graphs to plot")
    n = len(graphs)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = subplots(nrows, ncols, 4.3 * ncols, 3.1 * nrows + 0.6)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for i, (label, graph) in enumerate(graphs.items()):
        ax = axes.flat[i]
        scores, flags = _edge_scores(graph)
        finite = np.isfinite(scores)
        vals = scores[finite]
        if vals.size == 0 or np.all(vals == vals[0]):
            lo, hi = (float(vals[0]) - 1, float(vals[0]) + 1) if vals.size else (-1.0, 1.0)
        else:
            lo, hi = float(vals.min()), float(vals.max())
        span = max(abs(lo), abs(hi))
        nonzero = np.abs(vals[vals != 0])
        lin = max(float(np.percentile(nonzero, 10)), span * 1e-6) if nonzero.size else 0.0
        if symlog and lin > 0 and span / lin > 100:  # heavy-tailed; near-Gaussian scores stay linear
            half = max(bins // 2 - 2, 4)
            pos_edges = np.geomspace(lin, span * 1.0001, half + 1)
            edges = np.concatenate([-pos_edges[::-1], np.linspace(-lin, lin, 5)[1:-1], pos_edges])
            ax.set_xscale("symlog", linthresh=lin, linscale=0.4)
            lo_dec, hi_dec = math.ceil(math.log10(lin)), math.floor(math.log10(span))
            step = max(1, math.ceil((hi_dec - lo_dec + 1) / 3))
            decades = [10.0 ** d for d in range(hi_dec, lo_dec - 1, -step)][::-1]
            ax.set_xticks([-d for d in decades[::-1]] + [0.0] + decades)
            ax.set_xticklabels([f"-1e{round(math.log10(d))}" for d in decades[::-1]] + ["0"]
                               + [f"1e{round(math.log10(d))}" for d in decades])
            ax.xaxis.set_minor_locator(_NullLocator())
        else:
            edges = np.linspace(-span, span, bins + 1) if lo < 0 < hi else np.linspace(lo, hi, bins + 1)
        ax.hist(vals, bins=edges, color="0.72", label="all edges", log=True)
        partial = flags.sum() < flags.size and flags.any()
        if partial:
            sel = scores[flags & finite]
            ax.hist(sel[sel >= 0], bins=edges, color=POSITIVE, alpha=0.85, log=True, label="in circuit, > 0")
            ax.hist(sel[sel < 0], bins=edges, color=NEGATIVE, alpha=0.85, log=True, label="in circuit, < 0")
        ax.axvline(0.0, color="0.3", lw=0.8)
        pos = float((vals > 0).mean()) if vals.size else float("nan")
        note = f"{vals.size:,} edges, {100 * pos:.0f}% > 0"
        if (~finite).any():
            note += f", {int((~finite).sum()):,} unscored"
        if partial:
            note += f"\ncircuit: {int(flags.sum()):,} edges"
        ax.text(0.98, 0.97, note, transform=ax.transAxes, ha="right", va="top", fontsize=7, color="0.25")
        ax.set_title(str(label), fontsize=9, loc="left", color=method_colour(str(label), i))
        ax.set_xlabel("edge score (> 0: helps the task)" + (", signed log scale" if ax.get_xscale() == "symlog"
                                                             else ""), fontsize=8)
        ax.set_ylabel("edges (log)", fontsize=8)
        ax.tick_params(labelsize=7)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if partial and i == 0:
            ax.legend(fontsize=6.5, frameon=False, loc="upper left")
    fig.suptitle(title or "Edge-score distributions", fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    if provenance:
        from circuits.plotting.provenance import stamp
        stamp(fig, provenance)
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


def _NullLocator():
    from matplotlib.ticker import NullLocator

    return NullLocator()


def top_k_sets(graphs: Mapping[str, Graph], k: int, absolute: bool = False) -> dict[str, np.ndarray]:
    """``{label: bool [n_edges]}``: each graph's ``k`` best edges by score (``|score|`` if ``absolute``), before
    pruning, ties to the first edge in MIB order (as :meth:`Graph.top_k`)."""
    out = {}
    first = None
    for label, g in graphs.items():
        if first is None:
            first = g.structure
        elif not first.same_shape(g.structure):
            raise ValueError(f"graph {label!r} has a different shape ({g.structure.describe()}) from the first "
                             f"({first.describe()}); agreement needs graphs of one model")
        sel = g.top_k(k, absolute, prune=False)
        order = g.structure.edge_order
        out[str(label)] = sel.in_graph.detach().cpu()[order[:, 0], order[:, 1]].numpy()
    return out


def method_agreement(graphs: Mapping[str, Graph], k: int, *, absolute: bool = False,
                     metric: Agreement = "jaccard") -> pd.DataFrame:
    """Square frame of top-``k`` edge-set agreement between every pair of graphs.

    ``jaccard``: |A & B| / |A | B|; ``overlap``: |A & B| / k (the fraction of one method's top-k the other
    also ranks in its top-k). The diagonal is 1.
    """
    import pandas as pd

    if metric not in ("jaccard", "overlap"):
        raise ValueError(f"metric must be 'jaccard' or 'overlap', got {metric!r}")
    sets = top_k_sets(graphs, k, absolute)
    labels = list(sets)
    mat = np.ones((len(labels), len(labels)))
    for i, a in enumerate(labels):
        for j, b in enumerate(labels):
            inter = float((sets[a] & sets[b]).sum())
            if metric == "jaccard":
                union = float((sets[a] | sets[b]).sum())
                mat[i, j] = inter / union if union else 1.0
            else:
                size = max(float(sets[a].sum()), 1.0)
                mat[i, j] = inter / size
    return pd.DataFrame(mat, index=labels, columns=labels)


def plot_method_agreement(graphs: Mapping[str, Graph], k: int, path: str | os.PathLike | None = None, *,
                          absolute: bool = False, metric: Agreement = "jaccard", title: str | None = None,
                          provenance: Mapping[str, Any] | None = None, dpi: int = 150) -> Figure:
    """Heatmap of :func:`method_agreement` (annotated with the values); writes ``path`` if given."""
    frame = method_agreement(graphs, k, absolute=absolute, metric=metric)
    n = len(frame)
    size = 1.6 + 0.75 * n
    fig, axes = subplots(1, 1, size + 1.4, size + 0.4)
    ax = axes[0, 0]
    values = frame.to_numpy()
    im = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="Blues")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(frame.columns, rotation=35, ha="right", fontsize=8)
    ax.set_yticklabels(frame.index, fontsize=8)
    for i in range(n):
        for j in range(n):
            v = values[i, j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if v > 0.6 else "0.15")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.ax.tick_params(labelsize=7)
    what = "Jaccard |A∩B| / |A∪B|" if metric == "jaccard" else "overlap |A∩B| / k"
    ax.set_title(title or f"Top-{k:,} edges{' by |score|' if absolute else ''}: {what}", fontsize=9, loc="left")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    if provenance:
        from circuits.plotting.provenance import stamp
        stamp(fig, provenance)
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig
