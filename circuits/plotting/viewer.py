"""An interactive circuit viewer: one self-contained HTML file (inline SVG and plain JavaScript) that opens offline.

    circuits.view(scored, "ioi.html")             # or: circuits view graphs/ioi.json --out ioi.html

The page draws the layered graph of :func:`circuits.plotting.circuit.layout` (input at the bottom, logits at the top,
heads with their q / k / v ports, the MLP to their right), edges coloured by the sign of their score (blue helps,
red hurts) and wider with ``|score|``. Controls: top-k by ``|score|`` or by signed score, a ``|score|`` threshold,
or the file's own circuit; hover shows names and scores; clicking a node highlights every drawn path through it;
a search box finds nodes by name; a panel shows the graph's metadata (method, task, model, faithfulness when known).

Large graphs stay responsive because the page never holds them whole: it embeds the ``max_edges`` edges that any
control can reach (largest ``|score|``, largest signed score, and the file's circuit), draws only the selected ones,
and summarises the rest in numbers (how many, their largest ``|score|``, their share of the total ``|score|``).
The drawing is hand-written SVG rather than a graph library: the layout is fixed by the model's structure (no
layout search is needed), and a library would have to be fetched from a CDN (not offline) or copied into the
package (vendoring); SVG is drawn by the browser itself and needs nothing installed.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from circuits.errors import CircuitsError
from circuits.graph.grouped import expand_grouped
from circuits.plotting.circuit import layout
from circuits.plotting.style import HEAD_EDGE, HEAD_FILL, MLP_EDGE, MLP_FILL, NEGATIVE, POSITIVE, QKV_STYLE

if TYPE_CHECKING:  # pragma: no cover
    from circuits.graph import Graph

__all__ = ["view", "to_html", "viewer_data", "DEFAULT_MAX_EDGES"]

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "viewer"  # page.html, viewer.css, viewer.js


class ViewerError(CircuitsError, ValueError):
    """A viewer that cannot be written as asked (where to, how many edges): names the argument and the fix."""


DEFAULT_MAX_EDGES = 5000  # edges embedded in the page; the slider reaches any of them
DEFAULT_TOP_K = 200  # edges drawn on opening when the file's circuit is the whole graph
_META_KEYS = ("method", "task", "model", "ablation", "metric", "split", "n_examples", "faithfulness", "cpr", "cmd",
              "selection", "wall_time_s", "version")


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgb)


def _number(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _metadata(graph: Graph, faithfulness: Any) -> dict[str, Any]:
    """Metadata as shown: the known keys first (faithfulness also from a nested result), then the rest."""
    md = dict(graph.metadata or {})
    if faithfulness is not None:
        md["faithfulness"] = faithfulness
    for nested in ("evaluation", "result"):
        inner = md.get(nested)
        if isinstance(inner, Mapping):
            for key in ("faithfulness", "cpr", "cmd"):
                if key in inner and key not in md:
                    md[key] = inner[key]
    ordered = {k: md[k] for k in _META_KEYS if k in md}
    ordered.update({k: v for k, v in md.items() if k not in ordered})
    return _jsonable(ordered)


def _jsonable(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (JSON has no NaN), unknown objects their ``str``."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)


def viewer_data(graph: Graph, *, max_edges: int = DEFAULT_MAX_EDGES, faithfulness: Any = None) -> dict[str, Any]:
    """What the page embeds (a JSON-ready dict): nodes and ports with positions, the reachable edges, a summary."""
    import torch

    if max_edges < 1:
        raise ViewerError(f"max_edges must be at least 1, got {max_edges}")
    graph = expand_grouped(graph)  # grouped k/v receivers shown at each head's k/v port (score shares)
    st = graph.structure
    order = st.edge_order  # [E, 2] (sender, receiver), MIB order
    scores = graph.scores.detach().cpu().double()[order[:, 0], order[:, 1]]  # [E]
    in_circuit = graph.in_graph.detach().cpu()[order[:, 0], order[:, 1]]  # [E] bool
    n_total = int(order.shape[0])
    nan = torch.isnan(scores)
    mags = torch.where(nan, torch.full_like(scores, -1.0), scores.abs())  # unscored edges rank last
    signed = torch.where(nan, torch.full_like(scores, -math.inf), scores)
    cap = min(max_edges, n_total)
    keep = torch.zeros(n_total, dtype=torch.bool)
    keep[torch.argsort(mags, descending=True, stable=True)[:cap]] = True  # top-k by |score| reaches these
    keep[torch.argsort(signed, descending=True, stable=True)[:cap]] = True  # signed top-k these
    circuit_idx = in_circuit.nonzero().flatten()
    if circuit_idx.numel() > cap:  # the file's circuit, its largest |score| edges first
        circuit_idx = circuit_idx[torch.argsort(mags[circuit_idx], descending=True, stable=True)[:cap]]
    keep[circuit_idx] = True
    idx = keep.nonzero().flatten()
    idx = idx[torch.argsort(mags[idx], descending=True, stable=True)]  # the page's order: |score| descending
    rest = ~keep & ~nan
    finite_abs = scores[~nan].abs()
    total_abs = float(finite_abs.sum()) if finite_abs.numel() else 0.0

    pos = layout(st)
    nodes = [[n.name, n.kind, round(pos[n.name][0], 3), round(pos[n.name][1], 3)] for n in st.nodes]
    node_index = {n.name: i for i, n in enumerate(st.nodes)}
    receivers = []
    for r in st.receivers:
        x, y = pos[r.name] if r.kind == "qkv" else pos[r.node]
        receivers.append([r.name, node_index[r.node], r.qkv, round(x, 3), round(y, 3)])
    sel = order[idx]
    return {
        "title": _title(graph),
        "metadata": _metadata(graph, faithfulness),
        "structure": {"n_layers": st.n_layers, "n_heads": st.n_heads, "has_mlp": st.has_mlp,
                      "n_nodes": st.n_nodes, "n_edges": n_total},
        "nodes": nodes,
        "senders": [node_index[n.name] for n in st.senders],
        "receivers": receivers,
        "edges": {"s": sel[:, 0].tolist(), "r": sel[:, 1].tolist(),
                  "score": [_number(x) for x in scores[idx].tolist()],
                  "in": [int(b) for b in in_circuit[idx].tolist()]},
        "summary": {"total": n_total, "embedded": int(idx.numel()), "unscored": int(nan.sum()),
                    "positive": int((scores > 0).sum()), "negative": int((scores < 0).sum()),
                    "in_circuit": int(in_circuit.sum()),
                    "rest": int(rest.sum()), "rest_max_abs": float(scores[rest].abs().max()) if rest.any() else 0.0,
                    "rest_sum_abs": float(scores[rest].abs().sum()) if rest.any() else 0.0, "total_abs": total_abs},
        "colors": {"positive": _hex(POSITIVE), "negative": _hex(NEGATIVE), "head_fill": _hex(HEAD_FILL),
                   "head_edge": _hex(HEAD_EDGE), "mlp_fill": _hex(MLP_FILL), "mlp_edge": _hex(MLP_EDGE),
                   **{q: _hex(QKV_STYLE[q]["color"]) for q in "qkv"}},
    }


def _title(graph: Graph) -> str:
    md = graph.metadata or {}
    parts = [str(md[k]) for k in ("method", "task", "model") if md.get(k)]
    return " / ".join(parts) if parts else "circuit"


def to_html(graph: Graph, *, max_edges: int = DEFAULT_MAX_EDGES, title: str | None = None,
            faithfulness: Any = None) -> str:
    """The viewer page for ``graph`` as one HTML string (no external resources)."""
    data = viewer_data(graph, max_edges=max_edges, faithfulness=faithfulness)
    if title:
        data["title"] = title
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    page, style, script = ((ASSETS / name).read_text(encoding="utf-8")
                           for name in ("page.html", "viewer.css", "viewer.js"))
    # the data last: it may hold any text, which must not be read as a placeholder
    return (page.replace("__TITLE__", html.escape(data["title"])).replace("__STYLE__", style)
            .replace("__SCRIPT__", script).replace("__DATA__", payload))


def view(graph: Graph | str | os.PathLike, path: str | os.PathLike | None = None, *,
         max_edges: int = DEFAULT_MAX_EDGES, title: str | None = None, faithfulness: Any = None) -> Path:
    """Write the interactive viewer of ``graph`` (a Graph or a graph file) to ``path`` (default: next to the file,
    ``.html``); returns the path. ``faithfulness``: a number (or dict) to show when the metadata has none."""
    from circuits.graph import Graph

    source = None
    if not isinstance(graph, Graph):
        source = Path(graph)
        graph = Graph.load(source)
    if path is None:
        if source is None:
            raise ViewerError("give a path to write the viewer to, e.g. circuits.view(graph, 'circuit.html')")
        path = source.with_suffix(".html")
    out = Path(path)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ViewerError(f"cannot write the viewer to {out}: the file name must end in .html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_html(graph, max_edges=max_edges, title=title, faithfulness=faithfulness), encoding="utf-8")
    return out


