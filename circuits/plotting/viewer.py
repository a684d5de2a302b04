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

from circuits.plotting.circuit import layout
from circuits.plotting.style import HEAD_EDGE, HEAD_FILL, MLP_EDGE, MLP_FILL, NEGATIVE, POSITIVE, QKV_STYLE

if TYPE_CHECKING:  # pragma: no cover
    from circuits.graph import Graph

__all__ = ["view", "to_html", "viewer_data", "DEFAULT_MAX_EDGES"]

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
        raise ValueError(f"max_edges must be at least 1, got {max_edges}")
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
    return (_PAGE.replace("__TITLE__", html.escape(data["title"]))
            .replace("__DATA__", payload).replace("__SCRIPT__", _SCRIPT).replace("__STYLE__", _STYLE))


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
            raise ValueError("give a path to write the viewer to, e.g. circuits.view(graph, 'circuit.html')")
        path = source.with_suffix(".html")
    out = Path(path)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"cannot write the viewer to {out}: the file name must end in .html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_html(graph, max_edges=max_edges, title=title, faithfulness=faithfulness), encoding="utf-8")
    return out


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>__STYLE__</style>
</head><body>
<header><h1 id="title">__TITLE__</h1>
<div id="controls">
 <label>show <select id="mode">
  <option value="abs">top-k by |score|</option><option value="signed">top-k by score (signed)</option>
  <option value="threshold">|score| &ge; threshold</option><option value="circuit">the file's circuit</option>
 </select></label>
 <label id="k-label">k <input id="topk" type="range" min="1" max="1" value="1">
  <input id="topk-number" type="number" min="1" max="1" value="1"></label>
 <label id="t-label">threshold <input id="threshold" type="number" step="any" min="0" value="0"></label>
 <label>search <input id="search" type="search" placeholder="a9.h9, m3, logits ..." autocomplete="off"></label>
 <button id="clear" type="button">clear highlight</button>
</div>
<div id="status"><span id="drawn-count">0</span> edges drawn &middot; <span id="summary"></span></div>
</header>
<main>
<div id="canvas"><svg id="graph" xmlns="http://www.w3.org/2000/svg"><g id="viewport"><g id="edges"></g>
<g id="nodes"></g></g></svg><div id="tooltip" hidden></div></div>
<aside id="side"><h2>graph</h2><table id="meta"></table>
<h2>legend</h2><div id="legend"></div>
<h2>selection</h2><div id="selection">click a node to highlight every drawn path through it</div></aside>
</main>
<script type="application/json" id="circuit-data">__DATA__</script>
<script>__SCRIPT__</script>
</body></html>
"""

_STYLE = """
body{margin:0;font:13px/1.4 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;color:#222;background:#fff}
header{padding:8px 14px;border-bottom:1px solid #ddd;background:#fafafa}
h1{font-size:16px;margin:0 0 6px}h2{font-size:13px;margin:12px 0 4px;color:#555}
#controls{display:flex;flex-wrap:wrap;gap:14px;align-items:center}
#controls input[type=range]{width:220px;vertical-align:middle}#topk-number{width:70px}#threshold{width:90px}
#status{margin-top:6px;color:#444}
main{display:flex;height:calc(100vh - 92px)}
#canvas{flex:1;position:relative;overflow:hidden}
svg{width:100%;height:100%;cursor:grab;user-select:none}
#side{width:300px;overflow:auto;padding:4px 12px;border-left:1px solid #ddd;background:#fcfcfc}
#meta td{padding:1px 6px 1px 0;vertical-align:top;word-break:break-word}#meta td:first-child{color:#666;white-space:nowrap}
.edge{fill:none;stroke-linecap:round}.edge:hover{stroke-opacity:1!important}
.node rect{stroke-width:1.2}.node text{font-size:9px;pointer-events:none;text-anchor:middle;dominant-baseline:middle}
.node.idle{opacity:.35}.node.match rect{stroke:#f0a500;stroke-width:3}
.node.picked rect{stroke:#000;stroke-width:2.5}
.dim{opacity:.08}.port{stroke:#fff;stroke-width:.6}
#tooltip{position:absolute;pointer-events:none;background:rgba(30,30,30,.92);color:#fff;padding:4px 7px;
border-radius:4px;font-size:12px;white-space:pre;z-index:5}
.swatch{display:inline-block;width:22px;height:4px;margin-right:6px;vertical-align:middle}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("circuit-data").textContent);
  const SVGNS = "http://www.w3.org/2000/svg";
  const C = D.colors, E = D.edges, S = D.summary;
  const nE = E.s.length, X0 = 50, DX = 58, DY = 74, TOP = 30;
  const top = D.structure.n_layers + 1;
  const px = (x) => X0 + x * DX, py = (y) => TOP + (top - y) * DY;
  const $ = (id) => document.getElementById(id);
  const fmt = (v) => v === null || v === undefined ? "unscored" :
    (Math.abs(v) >= 1e-3 && Math.abs(v) < 1e4 ? v.toFixed(4) : v.toExponential(3));
  const absOf = (i) => E.score[i] === null ? -1 : Math.abs(E.score[i]);

  // orders the controls select from (indices into the embedded edges, which come sorted by |score|)
  const byAbs = [...Array(nE).keys()];
  const bySigned = byAbs.slice().sort((a, b) => (E.score[b] ?? -Infinity) - (E.score[a] ?? -Infinity));
  const rankAbs = new Int32Array(nE); byAbs.forEach((e, r) => { rankAbs[e] = r + 1; });

  // ---- static layer: nodes and q/k/v ports --------------------------------------------------------------
  const nodeG = $("nodes"), edgeG = $("edges");
  const nodeEls = [];
  const W = {head: 40, mlp: 44, input: 90, logits: 90}, H = 20;
  D.nodes.forEach(([name, kind, x, y], i) => {
    const g = document.createElementNS(SVGNS, "g");
    g.setAttribute("class", "node"); g.dataset.node = i;
    const r = document.createElementNS(SVGNS, "rect");
    const w = W[kind] || 40;
    r.setAttribute("x", px(x) - w / 2); r.setAttribute("y", py(y) - H / 2);
    r.setAttribute("width", w); r.setAttribute("height", H); r.setAttribute("rx", 4);
    const io = kind === "input" || kind === "logits";
    r.setAttribute("fill", io ? "#444" : kind === "mlp" ? C.mlp_fill : C.head_fill);
    r.setAttribute("stroke", io ? "#222" : kind === "mlp" ? C.mlp_edge : C.head_edge);
    const t = document.createElementNS(SVGNS, "text");
    t.setAttribute("x", px(x)); t.setAttribute("y", py(y)); t.textContent = name;
    if (io) t.setAttribute("fill", "#fff");
    g.appendChild(r); g.appendChild(t); nodeG.appendChild(g); nodeEls.push(g);
  });
  const portShape = {q: "M-3,-2.5L3,-2.5L0,3Z", k: "M-2.6,-2.6H2.6V2.6H-2.6Z", v: "M0,-3.4L3.4,0L0,3.4L-3.4,0Z"};
  D.receivers.forEach(([name, node, qkv, x, y]) => {
    if (!qkv) return;
    const p = document.createElementNS(SVGNS, "path");
    p.setAttribute("d", portShape[qkv]); p.setAttribute("class", "port");
    p.setAttribute("fill", C[qkv]); p.setAttribute("transform", `translate(${px(x)},${py(y)})`);
    p.dataset.receiver = name; nodeG.appendChild(p);
  });
  const width = px(D.structure.n_heads + 1.6), height = py(-0.6);
  const svg = $("graph");
  let vb = [0, 0, width, height];
  const setVB = () => svg.setAttribute("viewBox", vb.join(" "));
  setVB();

  // ---- the selection --------------------------------------------------------------------------------------
  const mode = $("mode"), slider = $("topk"), number = $("topk-number"), thr = $("threshold");
  let drawn = [];            // embedded-edge indices currently drawn
  let picked = null;         // node index whose paths are highlighted
  const circuitEdges = byAbs.filter((i) => E.in[i]);
  slider.max = number.max = String(nE);

  function selection() {
    const m = mode.value;
    if (m === "circuit") return circuitEdges;
    if (m === "threshold") { const t = Math.max(0, Number(thr.value) || 0); return byAbs.filter((i) => absOf(i) >= t && E.score[i] !== null); }
    const k = Math.max(1, Math.min(nE, Math.round(Number(slider.value) || 1)));
    return (m === "signed" ? bySigned : byAbs).slice(0, k);
  }

  function edgePath(i) {
    const s = D.nodes[D.senders[E.s[i]]], r = D.receivers[E.r[i]];
    const x0 = px(s[2]), y0 = py(s[3]) - H / 2, x1 = px(r[3]), y1 = r[2] ? py(r[4]) + 3 : py(r[4]) + H / 2;
    const bend = (x1 - x0) * 0.15 + (E.r[i] % 7 - 3) * 2;
    const cx = (x0 + x1) / 2 - bend * 0.3, cy = (y0 + y1) / 2 + Math.abs(x1 - x0) * 0.05 - bend;
    return `M${x0.toFixed(1)},${y0.toFixed(1)}Q${cx.toFixed(1)},${cy.toFixed(1)} ${x1.toFixed(1)},${y1.toFixed(1)}`;
  }

  function render() {
    drawn = selection();
    let maxAbs = 0;
    for (const i of drawn) maxAbs = Math.max(maxAbs, absOf(i));
    const parts = [];
    for (const i of drawn) {
      const v = E.score[i], rel = maxAbs > 0 && v !== null ? Math.abs(v) / maxAbs : 0;
      const col = v === null ? "#999" : v >= 0 ? C.positive : C.negative;
      parts.push(`<path class="edge" data-e="${i}" d="${edgePath(i)}" stroke="${col}" ` +
        `stroke-width="${(0.5 + 4.5 * rel).toFixed(2)}" stroke-opacity="${(0.25 + 0.7 * rel).toFixed(2)}"/>`);
    }
    edgeG.innerHTML = parts.join("");
    const touched = new Uint8Array(D.nodes.length);
    for (const i of drawn) { touched[D.senders[E.s[i]]] = 1; touched[D.receivers[E.r[i]][1]] = 1; }
    nodeEls.forEach((g, n) => g.classList.toggle("idle", !touched[n]));
    $("drawn-count").textContent = String(drawn.length);
    document.body.dataset.drawnEdges = String(drawn.length);
    let drawnAbs = 0; for (const i of drawn) drawnAbs += Math.max(0, absOf(i));
    const share = S.total_abs > 0 ? ` (${(100 * drawnAbs / S.total_abs).toFixed(1)}% of the total |score|)` : "";
    $("summary").textContent = `of ${S.total.toLocaleString()}${share}; ` +
      `${S.embedded.toLocaleString()} embedded in this page` +
      (S.rest > 0 ? `, the other ${S.rest.toLocaleString()} have |score| \u2264 ${fmt(S.rest_max_abs)} ` +
        `(${(100 * S.rest_sum_abs / (S.total_abs || 1)).toFixed(1)}% of the total |score|)` : "") +
      (S.unscored ? `; ${S.unscored.toLocaleString()} unscored` : "");
    highlight(picked);
  }

  // ---- paths through a node ------------------------------------------------------------------------------
  function highlight(n) {
    picked = n;
    const edgeEls = edgeG.children;
    nodeEls.forEach((g) => g.classList.remove("picked"));
    if (n === null) {
      for (const el of edgeEls) el.classList.remove("dim");
      nodeEls.forEach((g) => g.classList.remove("dim"));
      $("selection").textContent = "click a node to highlight every drawn path through it";
      return;
    }
    const into = new Map(), out = new Map();   // node -> drawn edges
    for (const i of drawn) {
      const a = D.senders[E.s[i]], b = D.receivers[E.r[i]][1];
      (out.get(a) || out.set(a, []).get(a)).push(i); (into.get(b) || into.set(b, []).get(b)).push(i);
    }
    const onEdge = new Set(), onNode = new Set([n]);
    const walk = (start, adj, end) => {
      const stack = [start], seen = new Set([start]);
      while (stack.length) {
        const v = stack.pop();
        for (const i of adj.get(v) || []) {
          onEdge.add(i); const w = end(i);
          if (!seen.has(w)) { seen.add(w); onNode.add(w); stack.push(w); }
        }
      }
    };
    walk(n, out, (i) => D.receivers[E.r[i]][1]);
    walk(n, into, (i) => D.senders[E.s[i]]);
    for (const el of edgeEls) el.classList.toggle("dim", !onEdge.has(Number(el.dataset.e)));
    nodeEls.forEach((g, m) => g.classList.toggle("dim", !onNode.has(m)));
    nodeEls[n].classList.add("picked");
    $("selection").textContent = `${D.nodes[n][0]}: ${onEdge.size} drawn edges on paths through it, ` +
      `${onNode.size - 1} other nodes (in ${(into.get(n) || []).length}, out ${(out.get(n) || []).length})`;
  }

  // ---- hover ---------------------------------------------------------------------------------------------
  const tip = $("tooltip"), canvas = $("canvas");
  function describe(target) {
    if (target.classList && target.classList.contains("edge")) {
      const i = Number(target.dataset.e);
      const name = `${D.nodes[D.senders[E.s[i]]][0]}->${D.receivers[E.r[i]][0]}`;
      return `${name}\nscore ${fmt(E.score[i])}\nrank ${rankAbs[i]} by |score|${E.in[i] ? "\nin the file's circuit" : ""}`;
    }
    const g = target.closest && target.closest(".node");
    if (g) {
      const n = Number(g.dataset.node), [name, kind] = D.nodes[n];
      let din = 0, dout = 0;
      for (const i of drawn) { if (D.senders[E.s[i]] === n) dout++; if (D.receivers[E.r[i]][1] === n) din++; }
      return `${name} (${kind})\ndrawn edges: ${din} in, ${dout} out`;
    }
    if (target.dataset && target.dataset.receiver) return `${target.dataset.receiver} (input port)`;
    return null;
  }
  svg.addEventListener("mousemove", (ev) => {
    const text = describe(ev.target);
    if (!text) { tip.hidden = true; return; }
    const box = canvas.getBoundingClientRect();
    tip.textContent = text; tip.hidden = false;
    tip.style.left = `${ev.clientX - box.left + 14}px`; tip.style.top = `${ev.clientY - box.top + 10}px`;
  });
  svg.addEventListener("mouseleave", () => { tip.hidden = true; });

  // ---- click, pan and zoom -------------------------------------------------------------------------------
  let drag = null;
  svg.addEventListener("mousedown", (ev) => { drag = {x: ev.clientX, y: ev.clientY, vb: vb.slice(), moved: false}; });
  window.addEventListener("mousemove", (ev) => {
    if (!drag) return;
    const k = vb[2] / svg.clientWidth, dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    vb = [drag.vb[0] - dx * k, drag.vb[1] - dy * k, vb[2], vb[3]]; setVB();
  });
  window.addEventListener("mouseup", (ev) => {
    if (drag && !drag.moved) {
      const g = ev.target.closest && ev.target.closest(".node");
      highlight(g ? (Number(g.dataset.node) === picked ? null : Number(g.dataset.node)) : null);
    }
    drag = null;
  });
  svg.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const f = ev.deltaY > 0 ? 1.15 : 1 / 1.15, box = svg.getBoundingClientRect();
    const mx = vb[0] + (ev.clientX - box.left) / box.width * vb[2], my = vb[1] + (ev.clientY - box.top) / box.height * vb[3];
    vb = [mx - (mx - vb[0]) * f, my - (my - vb[1]) * f, vb[2] * f, vb[3] * f]; setVB();
  }, {passive: false});

  // ---- search ----------------------------------------------------------------------------------------------
  $("search").addEventListener("input", (ev) => {
    const q = ev.target.value.trim().toLowerCase();
    let hits = [];
    nodeEls.forEach((g, n) => {
      const hit = q !== "" && D.nodes[n][0].toLowerCase().includes(q);
      g.classList.toggle("match", hit); if (hit) hits.push(n);
    });
    const exact = hits.filter((n) => D.nodes[n][0].toLowerCase() === q);
    if (exact.length === 1) hits = exact;
    if (hits.length === 1) highlight(hits[0]);
    else $("selection").textContent = q ? `${hits.length} nodes match "${q}"` : "click a node to highlight every drawn path through it";
  });
  $("clear").addEventListener("click", () => { $("search").value = ""; nodeEls.forEach((g) => g.classList.remove("match")); highlight(null); });

  // ---- controls --------------------------------------------------------------------------------------------
  const showControls = () => {
    $("k-label").style.display = mode.value === "abs" || mode.value === "signed" ? "" : "none";
    $("t-label").style.display = mode.value === "threshold" ? "" : "none";
  };
  slider.addEventListener("input", () => { number.value = slider.value; render(); });
  number.addEventListener("input", () => { slider.value = number.value; render(); });
  thr.addEventListener("input", render);
  mode.addEventListener("change", () => { showControls(); render(); });

  // ---- metadata and legend -------------------------------------------------------------------------------
  const meta = $("meta");
  const row = (k, v) => { const tr = meta.insertRow(); tr.insertCell().textContent = k; tr.insertCell().textContent = v; };
  for (const [k, v] of Object.entries(D.metadata)) {
    row(k, typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) :
      typeof v === "object" && v !== null ? JSON.stringify(v).slice(0, 300) : String(v));
  }
  if (!("faithfulness" in D.metadata)) row("faithfulness", "not measured (circuits evaluate --graph ...)");
  row("graph", `${D.structure.n_layers} layers x ${D.structure.n_heads} heads, ${D.structure.n_nodes} nodes, ` +
    `${S.total.toLocaleString()} edges; file's circuit ${S.in_circuit.toLocaleString()} edges`);
  $("legend").innerHTML =
    `<div><span class="swatch" style="background:${C.positive}"></span>positive score: the edge helps</div>` +
    `<div><span class="swatch" style="background:${C.negative}"></span>negative score: the edge hurts</div>` +
    `<div>width and opacity grow with |score|</div>` +
    `<div><span style="color:${C.q}">&#9660;</span> q &nbsp;<span style="color:${C.k}">&#9632;</span> k ` +
    `&nbsp;<span style="color:${C.v}">&#9670;</span> v: a head's inputs, under it</div>`;

  // ---- opening view: the file's circuit when it is a proper subgraph, else the top edges ------------------
  const proper = S.in_circuit > 0 && S.in_circuit < S.total && circuitEdges.length > 0;
  const k0 = Math.min(nE, proper ? circuitEdges.length : 200);
  slider.value = number.value = String(k0);
  thr.value = nE ? fmt(Math.max(0, absOf(byAbs[Math.min(nE, k0) - 1]))) : "0";
  mode.value = proper ? "circuit" : "abs";
  showControls(); render();
})();
"""
