// The circuit viewer's page script (circuits/plotting/viewer.py fills in the data): plain JavaScript, no library.
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
