"""Draw a circuit: a layered picture computed from the graph's structure (no graph-layout search), and DOT text.

Layout (data coordinates): ``input`` at the bottom, ``logits`` at the top, one row per layer in between; head
``a{l}.h{h}`` at ``x = h`` in row ``l``, the MLP ``m{l}`` to the right of the heads (a little above them in
sequential blocks, where it reads its own layer's heads). Each head's q, k and v inputs are three small ports
just under it, told apart by marker and colour; an edge into ``a5.h1<k>`` ends at the k port of ``a5.h1``.
Edges are coloured by sign (blue: positive, the edge helps the task; red: negative) and get wider and darker
with ``|score|``. Positions depend only on the structure, so two circuits of one model line up head for head.

>>> import torch, circuits
>>> s = circuits.GraphStructure(n_layers=2, n_heads=4)
>>> g = circuits.Graph.full(s, scores=torch.randn(s.n_senders, s.n_receivers))
>>> fig = draw_circuit(g.top_k(40, absolute=True))       # or draw_circuit(circuit, "circuit.png" / ".svg")
>>> to_dot(g.top_k(40, absolute=True)).splitlines()[0]
'digraph circuit {'
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from circuits.graph.grouped import expand_grouped
from circuits.plotting.style import (
    GRID,
    HEAD_EDGE,
    HEAD_FILL,
    IO_FILL,
    MLP_EDGE,
    MLP_FILL,
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    QKV_STYLE,
    figure,
    save_figure,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from circuits.graph import Graph, GraphStructure

DEFAULT_MAX_EDGES = 1500
_PORT_DY = 0.30  # ports sit this far under their head
_PORT_DX = 0.22  # q, k, v spacing


def layout(structure: GraphStructure) -> dict[str, tuple[float, float]]:
    """``{name: (x, y)}`` for every node (``input``, ``a{l}.h{h}``, ``m{l}``, ``logits``) and every q/k/v port
    (``a{l}.h{h}<q>``): the positions :func:`draw_circuit` uses. ``y`` = layer + 1 (input 0, logits n_layers+1).
    """
    st = structure
    pos: dict[str, tuple[float, float]] = {}
    width = st.n_heads + (1 if st.has_mlp else 0)
    centre = (width - 1) / 2
    pos["input"] = (centre, 0.0)
    pos["logits"] = (centre, st.n_layers + 1.0)
    mlp_dy = 0.0 if st.parallel_attn_mlp else 0.42
    for layer in range(st.n_layers):
        y = layer + 1.0
        for h in range(st.n_heads):
            pos[f"a{layer}.h{h}"] = (float(h), y)
            for i, q in enumerate("qkv"):
                pos[f"a{layer}.h{h}<{q}>"] = (h + (i - 1) * _PORT_DX, y - _PORT_DY)
        if st.has_mlp:
            pos[f"m{layer}"] = (st.n_heads + 0.25, y + mlp_dy)
    return pos


def _edge_table(graph: Graph, circuit_only: bool, max_edges: int | None) -> tuple[Any, int]:
    """The edges to draw (a frame: sender, receiver, name, score; MIB order) and how many there were before the
    cap. Works on the tensors, so capping the 1.6M edges of Llama-8B to a few hundred costs no name building."""
    import pandas as pd
    import torch

    st = graph.structure
    order = st.edge_order  # [E, 2]
    scores = graph.scores.detach().cpu().double()[order[:, 0], order[:, 1]]
    if circuit_only:
        keep = graph.in_graph.detach().cpu()[order[:, 0], order[:, 1]].nonzero().flatten()
    else:
        keep = torch.arange(order.shape[0])
    total = int(keep.numel())
    if max_edges is not None and total > max_edges:
        mags = torch.nan_to_num(scores[keep].abs(), nan=-1.0)
        best = torch.sort(torch.argsort(mags, descending=True, stable=True)[:max_edges]).values
        keep = keep[best]
    pairs = order[keep].tolist()
    senders = [st.senders[a].name for a, _ in pairs]
    receivers = [st.receivers[b].name for _, b in pairs]
    return pd.DataFrame({"sender": senders, "receiver": receivers,
                         "name": [f"{a}->{b}" for a, b in zip(senders, receivers)],
                         "score": scores[keep].numpy()}), total


def _curve(p0: np.ndarray, p1: np.ndarray, bend: float, n: int = 14) -> np.ndarray:
    """A quadratic Bezier from p0 to p1 bowed sideways by ``bend`` x its length (separates parallel edges)."""
    d = p1 - p0
    normal = np.array([-d[1], d[0]])
    ctrl = (p0 + p1) / 2 + bend * normal
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ctrl + t ** 2 * p1


def _title(graph: Graph, n_drawn: int, n_total: int) -> str:
    md = graph.metadata or {}
    what = [str(md[k]) for k in ("method", "task", "model") if md.get(k)]
    sel = md.get("selection") or {}
    rule = ""
    if sel.get("rule") == "top_k":
        rule = f"top-{sel.get('k')}{' |score|' if sel.get('absolute') else ''}"
    elif sel.get("rule"):
        rule = str(sel["rule"])
    size = (f"{graph.n_edges:,} of {graph.structure.n_edges:,} edges, {graph.n_nodes} of {graph.structure.n_nodes} "
            f"nodes ({graph.structure.describe()})")
    shown = f" (showing the {n_drawn:,} with largest |score| of {n_total:,})" if n_drawn < n_total else ""
    head = " · ".join(what + ([rule] if rule else []))
    return (head + "\n" if head else "") + size + shown


def draw_circuit(graph: Graph, path: str | os.PathLike | None = None, *, circuit_only: bool = True,
                 max_edges: int | None = DEFAULT_MAX_EDGES, title: str | None = None,
                 provenance: Mapping[str, Any] | None = None, show_grid: bool = True,
                 labels: bool | None = None, dpi: int = 150) -> Figure:
    """Draw ``graph``'s circuit with matplotlib; write it to ``path`` (``.png``, ``.svg``, ``.pdf``) if given.

    Parameters
    ----------
    graph : Graph
        A selected circuit (``scored.top_k(200)``) or a loaded graph file; its ``in_graph`` edges are drawn.
    circuit_only : bool
        ``True`` (default): only the circuit's edges and nodes. ``False``: every edge of the graph (capped by
        ``max_edges``), e.g. to see a scored graph's strongest edges before selection.
    max_edges : int or None
        Draw at most this many edges, those with the largest ``|score|`` (the title says so when it cuts).
    title : str, optional
        Default: method / task / model from the metadata, the selection rule and the circuit's size.
    provenance : mapping, optional
        ``{commit, machine, date, settings, command}`` (:func:`circuits.plotting.provenance.provenance`):
        printed in a footer and stored in the file's metadata.
    show_grid : bool
        Faint dots where the heads that are not in the circuit sit, so the layer x head grid stays readable.
    labels : bool, optional
        Name every node (``a9.h9``, ``m0``). Default: when at most 400 nodes are drawn; beyond that nodes are
        plain markers (the axes still give layer and head) and the drawing stays fast.

    A position-aware graph is drawn as its summed view (an edge at any position, scores summed over positions;
    the title says so): the position axis is :func:`~circuits.plotting.positions.plot_position_scores`'s.

    Returns the matplotlib ``Figure`` (Agg backend; nothing is displayed).
    """
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    summed = graph.n_positions
    if summed is not None:
        graph = graph.summed()
    graph = expand_grouped(graph)  # grouped k/v receivers are drawn at each head's k/v port (score shares)
    st = graph.structure
    pos = layout(st)
    frame, n_total = _edge_table(graph, circuit_only, max_edges)
    n_cols = st.n_heads + (1 if st.has_mlp else 0)

    # Which nodes and ports to draw.
    if circuit_only:
        node_flags = graph.node_in_graph.detach().cpu().tolist()
        nodes = {n.name for n, f in zip(st.nodes, node_flags) if f}
    else:
        nodes = {n.name for n in st.nodes}
    nodes |= set(frame["sender"])
    nodes |= {r.split("<")[0] for r in frame["receiver"]}
    nodes |= {"input", "logits"}
    ports = {r for r in frame["receiver"] if "<" in r}

    # Size: about 0.95 in per head column and 1 in per layer, so GPT-2 small's labels stay readable.
    width = float(np.clip(0.95 * n_cols + 2.4, 7.0, 34.0))
    height = float(np.clip(1.0 * (st.n_layers + 2) + 1.6, 5.5, 40.0))
    fig, ax = figure(width, height)
    label_size = float(np.clip(8.5 - 0.12 * max(0, st.n_heads - 12), 4.5, 8.5))

    # Layer bands and axes.
    for layer in range(st.n_layers):
        ax.axhline(layer + 1.0, color=GRID, lw=0.8, zorder=0)
    ax.set_yticks([0] + [layer + 1 for layer in range(st.n_layers)] + [st.n_layers + 1])
    ax.set_yticklabels(["input"] + [f"layer {layer}" for layer in range(st.n_layers)] + ["logits"],
                       fontsize=label_size + 0.5)
    xt = list(range(st.n_heads)) + ([st.n_heads + 0.25] if st.has_mlp else [])
    ax.set_xticks(xt)
    ax.set_xticklabels([f"h{h}" for h in range(st.n_heads)] + (["MLP"] if st.has_mlp else []),
                       fontsize=label_size + 0.5)
    ax.tick_params(length=0, colors="0.35")
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_xlim(-0.75, n_cols - 0.1)
    ax.set_ylim(-0.55, st.n_layers + 1.55)

    if show_grid:
        ghosts = [pos[n.name] for n in st.senders if n.kind in ("head", "mlp") and n.name not in nodes]
        if ghosts:
            gx, gy = zip(*ghosts)
            ax.scatter(gx, gy, s=9, color="0.86", zorder=1, linewidths=0)

    # Edges: one LineCollection, weakest first so the strongest lie on top.
    scores = frame["score"].to_numpy(dtype=float)
    mags = np.abs(scores)
    finite = np.isfinite(mags)
    top = float(mags[finite].max()) if finite.any() else 0.0
    rel = np.where(finite, np.sqrt(mags / top) if top > 0 else 1.0, 0.0)
    if frame.shape[0]:
        segs, colours, widths = [], [], []
        # Alternate the bow direction per receiver so fans of edges into one port separate a little.
        for i in np.argsort(np.where(finite, mags, -1.0), kind="stable"):
            s, r, sc = frame["sender"][i], frame["receiver"][i], scores[i]
            p0, p1 = np.array(pos[s]), np.array(pos[r])
            bend = 0.06 if st.sender_index(s) % 2 else -0.06
            segs.append(_curve(p0, p1, bend))
            w = float(rel[i])
            base = NEUTRAL if not np.isfinite(sc) or top == 0 else POSITIVE if sc >= 0 else NEGATIVE
            alpha = 0.25 + 0.65 * w if top > 0 else 0.5
            colours.append((*base, alpha))
            widths.append(0.35 + 3.4 * w if top > 0 else 0.8)
        ax.add_collection(LineCollection(segs, colors=colours, linewidths=widths, capstyle="round", zorder=2))

    # Ports under heads: structural tick to the head, then a marker per q/k/v.
    for q, style in QKV_STYLE.items():
        pts = [pos[p] for p in ports if p.endswith(f"<{q}>")]
        for x, y in pts:
            hx = x - ({"q": -1, "k": 0, "v": 1}[q]) * _PORT_DX
            ax.plot([x, hx], [y, y + _PORT_DY], color="0.6", lw=0.6, zorder=3)
        if pts:
            px, py = zip(*pts)
            ax.scatter(px, py, marker=style["marker"], s=26, color=style["color"], edgecolors="white",
                       linewidths=0.5, zorder=4)

    # Nodes with their labels (or plain markers for very large drawings).
    if labels is None:
        labels = len(nodes) <= 400
    box = dict(boxstyle="round,pad=0.28", linewidth=0.9)
    if not labels:
        for kind, fc, ec, marker in (("a", HEAD_FILL, HEAD_EDGE, "o"), ("m", MLP_FILL, MLP_EDGE, "s")):
            pts = [pos[n] for n in nodes if n[0] == kind and n not in ("input", "logits")]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(xs, ys, s=22, marker=marker, facecolors=fc, edgecolors=ec, linewidths=0.7, zorder=6)
    for name in nodes:
        if not labels and name not in ("input", "logits"):
            continue
        x, y = pos[name]
        if name in ("input", "logits"):
            ax.text(x, y, name, ha="center", va="center", fontsize=label_size + 1.5, color="white",
                    fontweight="bold", zorder=6, bbox=dict(boxstyle="round,pad=0.45", fc=IO_FILL, ec=IO_FILL))
        elif name.startswith("m"):
            ax.text(x, y, name, ha="center", va="center", fontsize=label_size, zorder=6,
                    bbox=dict(box, boxstyle="square,pad=0.35", fc=MLP_FILL, ec=MLP_EDGE))
        else:
            ax.text(x, y, name, ha="center", va="center", fontsize=label_size, zorder=6,
                    bbox=dict(box, fc=HEAD_FILL, ec=HEAD_EDGE))

    # Legend, two rows read left to right: node kinds and ports / what colour and width mean.
    nodes_row = [Line2D([], [], marker="o", ls="", ms=9, mfc=HEAD_FILL, mec=HEAD_EDGE, label="head a{layer}.h{head}")]
    if st.has_mlp:
        nodes_row.append(Line2D([], [], marker="s", ls="", ms=9, mfc=MLP_FILL, mec=MLP_EDGE, label="MLP m{layer}"))
    nodes_row += [Line2D([], [], marker=s["marker"], ls="", ms=7, color=s["color"], label=f"{q} input of a head")
                  for q, s in QKV_STYLE.items()]
    if top > 0:
        edges_row = [Line2D([], [], color=POSITIVE, lw=3.0, label="score > 0 (helps)"),
                     Line2D([], [], color=NEGATIVE, lw=3.0, label="score < 0 (hurts)"),
                     Line2D([], [], color="0.3", lw=0.35 + 3.4, label=f"|score| {top:.3g}"),
                     Line2D([], [], color="0.3", lw=0.35 + 3.4 * 0.5, label=f"|score| {top / 4:.3g}"),
                     Line2D([], [], color="0.3", lw=0.35 + 3.4 * 0.1, label=f"|score| {top / 100:.3g}")]
    else:
        edges_row = [Line2D([], [], color=NEUTRAL, lw=1.5, label="edge (no scores)")]
    ncol = max(len(nodes_row), len(edges_row))
    blank = Line2D([], [], ls="", label=" ")
    nodes_row += [blank] * (ncol - len(nodes_row))
    edges_row += [blank] * (ncol - len(edges_row))
    handles = [h for pair in zip(nodes_row, edges_row) for h in pair]  # legend fills column by column
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=ncol,
              fontsize=label_size, frameon=False, handlelength=2.2, columnspacing=1.4, borderaxespad=0.2)
    title = title if title is not None else _title(graph, len(frame), n_total)
    if summed is not None:
        title += f"\n(position-aware graph, summed over its {summed} positions)"
    ax.set_title(title, fontsize=label_size + 3,
                 pad=40, loc="left")
    ax.text(1.0, -0.045, "edges run upward: sender -> receiver", transform=ax.transAxes, ha="right", va="top",
            fontsize=label_size - 0.5, color="0.45")

    if provenance:
        from circuits.plotting.provenance import stamp
        stamp(fig, provenance)
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


# ---- graphviz DOT ----------------------------------------------------------------------------------------------

def _hex(rgb: tuple[float, float, float], alpha: float = 1.0) -> str:
    vals = [int(round(255 * c)) for c in (*rgb, alpha)]
    return "#" + "".join(f"{v:02x}" for v in vals)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph: Graph, *, circuit_only: bool = True, max_edges: int | None = None,
           title: str | None = None) -> str:
    """The circuit as graphviz DOT text (``dot -Tsvg circuit.dot > circuit.svg``); no graphviz needed to write it.

    Bottom-to-top like :func:`draw_circuit`: ``input`` at the bottom, one rank per layer, ``logits`` on top.
    Each head's q/k/v inputs are small nodes of their own (``"a3.h2<q>"``, shapes and colours as in the
    matplotlib legend) joined to their head by a dashed structural edge, so every circuit edge appears literally
    as ``"SENDER" -> "RECEIVER"`` with MIB's names, coloured by sign, ``penwidth`` by ``|score|``, and the name
    and score in its ``tooltip``. Grouped k/v receivers are drawn as MIB's per-head ones (score shares).
    """
    graph = expand_grouped(graph.summed() if graph.n_positions is not None else graph)  # positions: summed view
    st = graph.structure
    frame, n_total = _edge_table(graph, circuit_only, max_edges)
    if circuit_only:
        flags = graph.node_in_graph.detach().cpu().tolist()
        nodes = {n.name for n, f in zip(st.nodes, flags) if f}
    else:
        nodes = {n.name for n in st.nodes}
    nodes |= set(frame["sender"]) | {r.split("<")[0] for r in frame["receiver"]} | {"input", "logits"}
    ports = sorted({r for r in frame["receiver"] if "<" in r}, key=lambda r: st.receiver_index(r))

    label = title if title is not None else _title(graph, len(frame), n_total)
    out = ["digraph circuit {",
           f"  // {st.describe()}; {len(frame):,} edges drawn. Render: dot -Tsvg circuit.dot -o circuit.svg",
           f"  graph [rankdir=BT, splines=true, nodesep=0.15, ranksep=0.45, fontname=\"Helvetica\", "
           f"labelloc=t, label={_q(label)}];",
           '  node [fontname="Helvetica", fontsize=10, style=filled];',
           '  edge [arrowsize=0.5];',
           f'  "input" [shape=box, fillcolor="{_hex(IO_FILL)}", fontcolor=white];',
           f'  "logits" [shape=box, fillcolor="{_hex(IO_FILL)}", fontcolor=white];']
    order = {n.name: i for i, n in enumerate(st.nodes)}
    for layer in range(st.n_layers):
        heads = sorted((n for n in nodes if n.startswith(f"a{layer}.")), key=order.__getitem__)
        layer_ports = [p for p in ports if p.startswith(f"a{layer}.")]
        if heads:
            out.append(f"  subgraph layer_{layer} {{ rank=same; "
                       + " ".join(f'{_q(h)} [shape=ellipse, fillcolor="{_hex(HEAD_FILL)}", color="{_hex(HEAD_EDGE)}"];'
                                  for h in heads) + " }")
        if layer_ports:
            out.append(f"  subgraph layer_{layer}_inputs {{ rank=same; " + " ".join(
                f'{_q(p)} [shape={QKV_STYLE[p[-2]]["dot"]}, label="{p[-2]}", width=0.22, height=0.22, '
                f'fixedsize=true, fontsize=7, fillcolor="{_hex(QKV_STYLE[p[-2]]["color"])}", fontcolor=white];'
                for p in layer_ports) + " }")
        if f"m{layer}" in nodes:
            out.append(f'  "m{layer}" [shape=box, fillcolor="{_hex(MLP_FILL)}", color="{_hex(MLP_EDGE)}"];')
    for p in ports:
        out.append(f'  {_q(p)} -> {_q(p.split("<")[0])} [style=dashed, color="#999999", arrowhead=none];')

    mags = np.abs(frame["score"].to_numpy(dtype=float))
    finite = np.isfinite(mags)
    top = float(mags[finite].max()) if finite.any() else 0.0
    for s, r, name, sc in zip(frame["sender"], frame["receiver"], frame["name"], frame["score"]):
        if top > 0 and math.isfinite(sc):
            w = math.sqrt(abs(sc) / top)
            colour = _hex(POSITIVE if sc >= 0 else NEGATIVE, 0.3 + 0.7 * w)
            width = 0.4 + 3.6 * w
        else:
            colour, width = _hex(NEUTRAL), 1.0
        out.append(f'  {_q(s)} -> {_q(r)} [color="{colour}", penwidth={width:.2f}, '
                   f'tooltip={_q(f"{name} {sc:.4g}")}];')
    out.append("}")
    return "\n".join(out) + "\n"


def write_dot(graph: Graph, path: str | os.PathLike, **kwargs: Any) -> Path:
    """:func:`to_dot` written to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_dot(graph, **kwargs))
    return path
