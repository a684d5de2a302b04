"""How the viewer copes with a GPT-2-small graph (32,491 scored edges): page size, time to first drawing and redraw
times for top-k moves, measured inside headless Chromium with performance.now(). Writes results/viewer_responsiveness.

    python benchmarks/viewer_responsiveness.py
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import torch

from circuits.graph import Graph, GraphStructure
from circuits.plotting.browser import dump_dom
from circuits.plotting.viewer import to_html

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write  # noqa: E402

# Timing only (not part of the viewer): when the page has loaded, move the top-k slider to each k, five times,
# and time each redraw (the slider's input handler rebuilds the drawn edges synchronously).
_PROBE = """<script>window.__t0 = performance.now();</script>"""
_TIMER = """<script>window.addEventListener('load', function () {
  var out = {load_ms: performance.now() - window.__t0, rows: []};
  var slider = document.getElementById('topk'), mode = document.getElementById('mode');
  mode.value = 'abs'; mode.dispatchEvent(new Event('change'));
  [10, 200, 1000, 2000, 5000].forEach(function (k) {
    var times = [];
    for (var r = 0; r < 5; r++) {
      slider.value = String(r % 2 ? 1 : k); slider.dispatchEvent(new Event('input'));
      slider.value = String(k); var t = performance.now(); slider.dispatchEvent(new Event('input'));
      times.push(performance.now() - t);
    }
    times.sort(function (a, b) { return a - b; });
    out.rows.push({k: k, drawn: document.querySelectorAll('#edges path.edge').length, median_ms: times[2]});
  });
  var pre = document.createElement('pre'); pre.id = 'timing'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def main() -> None:
    import pandas as pd

    st = GraphStructure(n_layers=12, n_heads=12)
    gen = torch.Generator().manual_seed(0)
    graph = Graph.full(st, scores=torch.randn(st.n_senders, st.n_receivers, generator=gen, dtype=torch.float64),
                       metadata={"method": "random scores", "model": "GPT-2-small shape"})
    html = to_html(graph)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "timed.html"
        page.write_text(html.replace("<head>", "<head>" + _PROBE, 1).replace("</body>", _TIMER + "</body>", 1))
        dom = dump_dom(page, wait_ms=0)  # the real clock: virtual time would not advance in scripts
    m = re.search(r'<pre id="timing">(.*?)</pre>', dom, re.S)
    if not m:
        raise SystemExit("the page reported no timings")
    timing = json.loads(m.group(1).replace("&quot;", '"'))
    frame = pd.DataFrame(timing["rows"])
    result = {"edges": st.n_edges, "page_bytes": len(html.encode()), "load_ms": timing["load_ms"],
              "redraws": timing["rows"]}
    md = (f"GPT-2-small shape, {st.n_edges:,} edges with random scores; the page embeds the 5,000 largest by |score| "
          f"and by signed score ({len(html.encode()) / 1e6:.2f} MB, one file) and summarises the rest.\n\n"
          f"From parsing the page to the first drawing: {timing['load_ms']:.0f} ms (headless Chromium, software "
          "rendering). Script time of a redraw after moving the top-k control (building the drawn SVG edges; median of "
          "5; layout and paint follow):\n\n"
          + markdown_table(frame, floatfmt=".1f"))
    write("viewer_responsiveness", result, md, "python benchmarks/viewer_responsiveness.py")
    print(md)


if __name__ == "__main__":
    main()
