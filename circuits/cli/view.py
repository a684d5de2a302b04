"""``circuits view``: write a graph file's interactive viewer, one self-contained HTML page that opens offline."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  circuits view graphs/ioi.json                       # -> graphs/ioi.html; open it in any browser, no network
  circuits view scored.json --out /tmp/scored.html --max-edges 20000
  circuits view graphs/ioi.json --screenshot ioi.png  # and a PNG of the page (headless Chromium)

In the page: choose top-k by |score| or by signed score, a |score| threshold, or the file's own circuit; hover an
edge or a node for its name and score; click a node to highlight every drawn path through it (click again or on
the background to clear); search nodes by name (a9.h9, m3, logits). Drag to pan, scroll to zoom.
The page embeds the --max-edges edges the controls can reach (largest |score|, largest signed score, the file's
circuit) and summarises the others, so a 32,491-edge GPT-2 graph opens and redraws at once.
"""


def _view(args: argparse.Namespace) -> int:
    from circuits.graph import Graph
    from circuits.plotting.viewer import view

    graph = Graph.load(args.graph)
    out = Path(args.out) if args.out else Path(args.graph).with_suffix(".html")
    md = graph.metadata or {}
    title = args.title or (None if any(md.get(k) for k in ("method", "task", "model")) else Path(args.graph).name)
    written = view(graph, out, max_edges=args.max_edges, title=title)
    embedded = min(graph.structure.n_edges, args.max_edges)
    print(f"wrote {written} ({written.stat().st_size / 1e6:.2f} MB; {graph.structure.n_edges:,} edges, "
          f"at least {embedded:,} embedded, the file's circuit {graph.n_edges:,})")
    if args.screenshot:
        from circuits.plotting.browser import screenshot

        print(f"wrote {screenshot(written, args.screenshot)} (headless Chromium)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("view", help="write an interactive HTML viewer of a graph file (self-contained, offline)",
                       description="Write one self-contained HTML page to explore a circuit graph in a browser.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("graph", metavar="GRAPH", help="a graph file (.json MIB format, .graphml, .pt)")
    p.add_argument("--out", "-o", default=None, metavar="FILE.html", help="where to write (default: GRAPH.html)")
    p.add_argument("--max-edges", type=int, default=5000, metavar="N",
                   help="edges embedded per ranking (largest |score|, largest signed score, the file's circuit); "
                        "the others are summarised (default: %(default)s)")
    p.add_argument("--title", default=None, help="page title (default: method / task / model, else the file name)")
    p.add_argument("--screenshot", default=None, metavar="FILE.png",
                   help="also render the page headless with Chromium and save a PNG (needs chromium installed)")
    p.set_defaults(func=_view)
    return p
