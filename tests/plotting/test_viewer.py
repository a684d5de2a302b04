"""The interactive viewer: what the page embeds, that it is self-contained, and (in headless Chromium, when installed)
that it loads without a JavaScript error and redraws when the top-k control moves."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

import circuits
from circuits.cli import main
from circuits.graph import Graph, GraphStructure
from circuits.plotting.browser import dump_dom, find_chromium, screenshot
from circuits.plotting.viewer import to_html, view, viewer_data

from .conftest import check_png


def _random_gpt2_graph(seed: int = 0) -> Graph:
    st = GraphStructure(n_layers=12, n_heads=12)
    scores = torch.randn(st.n_senders, st.n_receivers, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64)
    return Graph.full(st, scores=scores)


def _embedded(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="circuit-data">(.*?)</script>', html, re.S)
    assert m, "no embedded data"
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_embeds_the_reachable_edges_and_summarises_the_rest():
    g = _random_gpt2_graph()
    data = viewer_data(g, max_edges=500)
    s, e = data["summary"], data["edges"]
    assert s["total"] == g.structure.n_edges == 32_491
    # top 500 by |score| and top 500 by signed score: at least 500, at most 1000 (their union)
    assert 500 <= s["embedded"] == len(e["score"]) <= 1000
    assert s["rest"] == 32_491 - s["embedded"]
    mags = [abs(v) for v in e["score"]]
    assert mags == sorted(mags, reverse=True), "embedded edges come sorted by |score|"
    every = torch.tensor(list(g.edge_scores().values()), dtype=torch.float64)
    best = torch.sort(every.abs(), descending=True).values
    assert mags[0] == pytest.approx(float(best[0]))
    assert mags[499] == pytest.approx(float(best[499]))  # the 500th by |score| is the 500th embedded
    assert s["rest_max_abs"] <= mags[499] + 1e-12
    assert s["rest_sum_abs"] + sum(mags) == pytest.approx(float(every.abs().sum()), rel=1e-9)
    assert s["positive"] + s["negative"] == 32_491
    # names and scores agree with the graph
    nodes, receivers = data["nodes"], data["receivers"]
    for i in (0, 17, len(e["s"]) - 1):
        name = f"{nodes[data['senders'][e['s'][i]]][0]}->{receivers[e['r'][i]][0]}"
        assert g.score(name) == pytest.approx(e["score"][i])
    assert len(nodes) == 158 and len(receivers) == 12 * (3 * 12 + 1) + 1


def test_the_file_circuit_is_always_embedded(mib_graph):
    data = viewer_data(mib_graph, max_edges=100)
    assert data["summary"]["in_circuit"] == 756
    # the circuit is larger than the cap: its 100 largest-|score| edges are in, with those the rankings bring
    embedded = {abs(v) for v, flag in zip(data["edges"]["score"], data["edges"]["in"]) if flag}
    circuit = sorted((abs(v) for v in mib_graph.edge_scores(circuit_only=True).values()), reverse=True)
    assert set(circuit[:100]) <= embedded and 100 <= len(embedded) < 756
    data = viewer_data(mib_graph, max_edges=1000)
    assert sum(data["edges"]["in"]) == 756


def test_page_is_self_contained_and_small_for_gpt2(mib_graph):
    html = to_html(mib_graph)
    assert "<script src" not in html and "<link" not in html and "@import" not in html
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls  # the SVG namespace is a name, never fetched
    assert len(html) < 1_000_000, len(html)  # 32,491 edges, 5,000+ embedded
    data = _embedded(html)
    assert data["summary"]["total"] == 32_491 and data["summary"]["embedded"] >= 5000


def test_metadata_nan_and_faithfulness_are_json_safe():
    g = _random_gpt2_graph()
    g.scores[-1, 0] = math.nan  # m11 -> a0.h0<q> is not an edge: ignored
    edge = g.structure.edge_order[3].tolist()
    g.scores[edge[0], edge[1]] = math.nan  # an unscored edge
    g.metadata = {"method": "eap", "task": "ioi", "model": "gpt2", "curve": {"cpr": float("nan")}}
    data = _embedded(to_html(g, faithfulness=0.875))
    assert data["summary"]["unscored"] == 1
    assert data["metadata"]["faithfulness"] == 0.875
    assert list(data["metadata"])[:4] == ["method", "task", "model", "faithfulness"]
    assert data["metadata"]["curve"] == {"cpr": None}
    assert data["title"] == "eap / ioi / gpt2"


def test_view_python_and_command_line(tmp_path, mib_graph):
    out = view(mib_graph, tmp_path / "a.html")
    assert out.exists() and out.read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(ValueError, match=r"\.html"):
        view(mib_graph, tmp_path / "a.png")
    src = tmp_path / "g.json"
    mib_graph.save(src)
    assert circuits.view(src) == src.with_suffix(".html")
    assert main(["view", str(src), "--out", str(tmp_path / "cli.html"), "--max-edges", "300"]) == 0
    data = _embedded((tmp_path / "cli.html").read_text())
    assert data["title"] == "g.json" and 300 <= data["summary"]["embedded"] <= 900  # three rankings of 300


# ---- in a real browser ------------------------------------------------------------------------------------------
# CI (.ci/run sets CIRCUITS_REQUIRE_BROWSER) must run these: there a missing Chromium fails instead of skipping.
needs_chromium = pytest.mark.skipif(find_chromium() is None and not os.environ.get("CIRCUITS_REQUIRE_BROWSER"),
                                    reason="no Chromium installed (Debian: apt-get install -y chromium); .ci/run "
                                    "installs it")

# Injected by the test only: record every JavaScript error from the first script on, then drive the controls as a
# user would (events on the real inputs) and write what the page drew into the DOM that --dump-dom returns.
_ERRORS = ("<script>window.__errors=[];window.addEventListener('error',function(e){window.__errors.push("
           "String(e.message))});</script>")
_DRIVE = """<script>window.addEventListener('load', function () {
  var out = {};
  try {
    var drawn = function () { return document.querySelectorAll('#edges path.edge').length; };
    var set = function (id, value, type) { var el = document.getElementById(id); el.value = value;
      el.dispatchEvent(new Event(type)); };
    out.opening = drawn(); out.label = document.getElementById('drawn-count').textContent;
    set('mode', 'abs', 'change'); set('topk', '37', 'input'); out.k37 = drawn();
    set('topk', '1200', 'input'); out.k1200 = drawn();
    set('mode', 'signed', 'change'); out.signed = drawn();
    var paths = document.querySelectorAll('#edges path.edge'), first = paths[0].getAttribute('stroke');
    out.signed_one_colour = !Array.prototype.some.call(paths,
      function (p) { return p.getAttribute('stroke') !== first; });
    set('mode', 'threshold', 'change'); set('threshold', '0', 'input'); out.threshold0 = drawn();
    set('mode', 'circuit', 'change'); out.circuit = drawn();
    set('search', 'a9.h9', 'input');
    out.matched = document.querySelectorAll('.node.match').length;
    out.dimmed = document.querySelectorAll('#edges path.edge.dim').length;
    out.selection = document.getElementById('selection').textContent;
    out.meta_rows = document.querySelectorAll('#meta tr').length;
  } catch (e) { window.__errors.push(String(e)); }
  out.errors = window.__errors;
  var pre = document.createElement('pre'); pre.id = 'test-result'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def _drive(tmp_path: Path, html: str) -> dict:
    page = tmp_path / "driven.html"
    page.write_text(html.replace("<head>", "<head>" + _ERRORS, 1).replace("</body>", _DRIVE + "</body>", 1))
    dom = dump_dom(page, wait_ms=3000)
    m = re.search(r'<pre id="test-result">(.*?)</pre>', dom, re.S)
    assert m, f"the page never reported back; DOM tail: {dom[-500:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                      .replace("&gt;", ">"))


@needs_chromium
def test_in_chromium_gpt2_graph_loads_and_the_top_k_control_redraws(tmp_path, mib_graph):
    result = _drive(tmp_path, to_html(mib_graph))
    assert result["errors"] == []
    assert result["opening"] == 756 and result["label"] == "756"  # the file's circuit first
    assert result["k37"] == 37 and result["k1200"] == 1200  # the control changes what is drawn
    assert result["signed"] == 1200
    assert result["threshold0"] >= 5000  # every embedded scored edge
    assert result["circuit"] == 756
    assert result["matched"] == 1 and "a9.h9" in result["selection"]
    assert 0 < result["dimmed"] < 756  # paths through a9.h9 stay lit, the rest dims
    assert result["meta_rows"] >= 2


@needs_chromium
def test_in_chromium_signed_top_k_keeps_the_helping_edges(tmp_path):
    result = _drive(tmp_path, to_html(_random_gpt2_graph(seed=1), max_edges=2000))
    assert result["errors"] == []
    assert result["opening"] == 200  # the full graph is the file's circuit: the top 200 by |score|
    assert result["k37"] == 37
    assert result["signed_one_colour"]  # the 1,200 largest signed scores are all positive: one colour


@needs_chromium
@pytest.mark.parametrize("shape", [dict(has_mlp=False), dict(parallel_attn_mlp=True), dict(n_kv_heads=2)])
def test_in_chromium_other_shapes_and_an_empty_circuit(tmp_path, shape):
    st = GraphStructure(n_layers=2, n_heads=4, **shape)
    g = Graph.empty(st, scores=torch.randn(st.n_senders, st.n_receivers, generator=torch.Generator().manual_seed(0)))
    result = _drive(tmp_path, to_html(g))
    assert result["errors"] == []
    assert result["opening"] == st.n_edges  # fewer than 200 edges: all of them
    assert result["k37"] == 37 and result["circuit"] == 0  # an empty circuit draws nothing, and says so
    assert result["matched"] == 0 and result["selection"] == '0 nodes match "a9.h9"'


@needs_chromium
def test_in_chromium_screenshot(tmp_path, mib_graph):
    page = view(mib_graph, tmp_path / "v.html")
    png = screenshot(page, tmp_path / "v.png", width=1200, height=900)
    check_png(png, min_px=(900, 1200))


def test_chromium_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITS_CHROMIUM", str(tmp_path / "no-such-browser"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    from circuits.plotting.browser import BrowserError

    with pytest.raises(BrowserError, match="apt-get install -y chromium"):
        dump_dom(tmp_path / "x.html")
