"""Position-aware scores on a position axis: which edges matter at which token (issue 20).

A position-aware graph (scores ``[S, R, L]``) is drawn as a heat map, one row per edge (the edges with the largest
summed ``|score|``), one column per position, colour = the signed score; the edge-positions of the circuit are
marked. A strip above it sums ``|score|`` over every edge per position: where in the prompt the task happens.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from circuits.plotting.style import save_figure, subplots

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from circuits.graph import Graph


def plot_position_scores(graph: Graph, path: str | os.PathLike | None = None, *, top: int = 30,
                         tokens: list[str] | None = None, title: str | None = None, dpi: int = 150) -> Figure:
    """Heat map of a position-aware graph's scores: the ``top`` edges (by summed ``|score|``) x positions.

    ``tokens``: labels of the positions (e.g. one example's tokens); default their indices. Dots mark the
    edge-positions in the circuit (``in_graph``) when it is not the full graph. Raises ``ValueError`` for a
    position-free graph (draw it with ``plot_score_distribution`` or ``draw_circuit``).
    """
    if graph.scores.dim() != 3:
        raise ValueError("plot_position_scores draws position-aware graphs (scores [S, R, L]); this graph has no "
                         "position axis: discover with positions=True (CLI --positions)")
    st = graph.structure
    order = st.edge_order
    scores = graph.scores.detach().cpu().double()[order[:, 0], order[:, 1]].nan_to_num(0.0).numpy()  # [E, L]
    flags = graph.in_graph.detach().cpu()[order[:, 0], order[:, 1]].numpy()  # [E, L]
    E, L = scores.shape
    if tokens is not None and len(tokens) != L:
        raise ValueError(f"tokens has {len(tokens)} labels for {L} positions")
    rows = np.argsort(-np.abs(scores).sum(1), kind="stable")[:max(1, min(top, E))]
    names = [st.edge_name(int(order[i, 0]), int(order[i, 1])) for i in rows]
    values = scores[rows]
    span = float(np.abs(values).max()) or 1.0
    height = 1.6 + 0.22 * len(rows)
    fig, axes = subplots(2, 1, max(6.0, 2.0 + 0.3 * L), height + 1.2,
                         gridspec_kw={"height_ratios": [1.0, max(2.0, len(rows) / 4)]}, sharex=True)
    strip, heat = axes[0, 0], axes[1, 0]
    strip.bar(np.arange(L), np.abs(scores).sum(0), color="0.45", width=0.8)
    strip.set_ylabel("sum |score|")
    strip.set_title(title or f"{graph.metadata.get('method', 'scores')}: score per edge and position "
                             f"(top {len(rows)} of {E:,} edges)")
    image = heat.imshow(values, aspect="auto", cmap="RdBu", vmin=-span, vmax=span, interpolation="nearest")
    if not flags.all():
        ys, xs = np.nonzero(flags[rows])
        heat.scatter(xs, ys, s=9, c="black", marker="o", label="in circuit")
        heat.legend(loc="lower right", fontsize=7, framealpha=0.8)
    heat.set_yticks(np.arange(len(rows)))
    heat.set_yticklabels(names, fontsize=7)
    heat.set_xticks(np.arange(L))
    heat.set_xticklabels(tokens if tokens is not None else [str(p) for p in range(L)], fontsize=7,
                         rotation=90 if tokens is not None else 0)
    heat.set_xlabel("position")
    # the colour bar takes its width from both panels, so their columns stay aligned
    fig.colorbar(image, ax=[strip, heat], label="score (positive = helps)", fraction=0.04, pad=0.02)
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig
