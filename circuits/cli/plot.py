"""``circuits plot``: draw a circuit file (PNG, SVG, PDF or graphviz DOT), or regenerate a sweep's report."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from circuits.cli.options import UsageError

EPILOG = """examples:
  circuits plot graphs/ioi.json                          # -> graphs/ioi.png, the circuit stored in the file
  circuits plot graphs/ioi.json --top-k 200 --out ioi.svg --out ioi.dot
                                                         # the 200 best edges (pruned), as SVG and graphviz DOT
  circuits plot scored.json --top-k 300 --absolute       # rank by |score| (MIB's CMD selection)
  circuits plot --results results/benchmark/results.parquet
                                                         # REPORT.md, summary.csv and figures next to the table
  circuits plot --results results/sweep/results.parquet --out-dir /tmp/report

Circuit drawings: input at the bottom, logits at the top, one row per layer; heads at x = head index, the MLP
to their right; each head's q / k / v inputs are the small orange / purple / green markers under it. Edges are
blue where the score is positive (the edge helps), red where negative, wider with |score|.
DOT files render with graphviz: dot -Tsvg ioi.dot -o ioi.svg
"""


def _command_line(args: argparse.Namespace) -> str:
    """The canonical command that regenerates what this call writes (printed in reports and footers)."""
    q = shlex.quote
    if args.results:
        out_dir = args.out_dir or str(Path(args.results).parent)
        return (f"circuits plot --results {q(str(args.results))} --out-dir {q(str(out_dir))}"
                + (" --no-figures" if args.no_figures else ""))
    parts = ["circuits plot", q(str(args.graph))]
    for out in args.out or []:
        parts.append(f"--out {q(str(out))}")
    if args.top_k is not None:
        parts.append(f"--top-k {args.top_k}")
    if args.top_fraction is not None:
        parts.append(f"--top-fraction {args.top_fraction}")
    for flag in ("absolute", "all", "stamp"):
        if getattr(args, flag):
            parts.append(f"--{flag}")
    if args.max_edges != 1500:
        parts.append(f"--max-edges {args.max_edges}")
    if args.title:
        parts.append(f"--title {q(args.title)}")
    return " ".join(parts)


def _plot(args: argparse.Namespace) -> int:
    from circuits.plotting.provenance import provenance

    command = _command_line(args)
    if args.results:
        if args.graph:
            raise UsageError("give either a GRAPH file or --results, not both")
        from circuits.plotting import load_results, write_report

        table = load_results(args.results)
        out_dir = Path(args.out_dir) if args.out_dir else Path(args.results).parent
        prov = provenance({}, command=command)
        report = write_report(table, out_dir, provenance=prov, results_path=args.results,
                              figures=not args.no_figures)
        files = sorted(p.name for p in out_dir.iterdir() if p.suffix in (".png", ".svg", ".csv", ".md"))
        others = ", ".join(f for f in files if f != "REPORT.md")
        print(f"wrote {report} and {len(files) - 1} more files in {out_dir}/: {others}")
        return 0
    if not args.graph:
        raise UsageError("give a GRAPH file to draw, or --results TABLE to regenerate a report (see --help)")

    from circuits.graph import Graph
    from circuits.plotting import draw_circuit, write_dot

    graph = Graph.load(args.graph)
    if args.top_k is not None and args.top_fraction is not None:
        raise UsageError("give --top-k or --top-fraction, not both")
    if args.top_k is not None:
        graph = graph.top_k(args.top_k, absolute=args.absolute)
    elif args.top_fraction is not None:
        graph = graph.top_fraction(args.top_fraction, absolute=args.absolute)
    elif args.absolute:
        raise UsageError("--absolute only applies with --top-k or --top-fraction")
    outs = [Path(o) for o in (args.out or [Path(args.graph).with_suffix(".png")])]
    stamp = provenance({"graph": str(args.graph), **({"top_k": args.top_k} if args.top_k is not None else {}),
                        **({"top_fraction": args.top_fraction} if args.top_fraction is not None else {}),
                        **({"absolute": True} if args.absolute else {})}, command=command) if args.stamp else None
    written = []
    for out in outs:
        suffix = out.suffix.lower()
        if suffix in (".dot", ".gv"):
            write_dot(graph, out, circuit_only=not args.all, max_edges=args.max_edges, title=args.title)
        elif suffix in (".png", ".svg", ".pdf"):
            draw_circuit(graph, out, circuit_only=not args.all, max_edges=args.max_edges, title=args.title,
                         provenance=stamp)
        else:
            raise UsageError(f"cannot write {out}: the suffix must be .png, .svg, .pdf or .dot")
        written.append(str(out))
    print(f"wrote {', '.join(written)} ({graph.n_edges:,} edges, {graph.n_nodes} nodes of "
          f"{graph.structure.n_edges:,} / {graph.structure.n_nodes})")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("plot", help="draw a circuit (PNG/SVG/PDF/DOT), or regenerate a sweep's report and figures",
                       description="Draw a circuit graph file, or write REPORT.md and figures from a results table.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("graph", nargs="?", metavar="GRAPH", help="a graph file (.json MIB format, .graphml, .pt)")
    p.add_argument("--out", "-o", action="append", metavar="FILE",
                   help="output file(s), by suffix: .png, .svg, .pdf or .dot (repeatable; default: GRAPH.png)")
    p.add_argument("--top-k", type=int, default=None, metavar="N",
                   help="draw the N best edges (pruned to input -> logits paths) instead of the file's circuit")
    p.add_argument("--top-fraction", type=float, default=None, metavar="F", help="draw the best fraction F of edges")
    p.add_argument("--absolute", action="store_true", help="with --top-k / --top-fraction: rank by |score|")
    p.add_argument("--all", action="store_true", help="draw every edge of the graph, not only the circuit "
                   "(capped by --max-edges, largest |score| first)")
    p.add_argument("--max-edges", type=int, default=1500, metavar="N",
                   help="draw at most N edges, those with the largest |score| (default: %(default)s)")
    p.add_argument("--title", default=None, help="figure title (default: method, task, model and size)")
    p.add_argument("--stamp", action="store_true", help="add a provenance footer (commit, machine, date) to the figure")
    p.add_argument("--results", metavar="TABLE", default=None,
                   help="a sweep's results table (.parquet, .csv, .jsonl): write REPORT.md, summary.csv and figures")
    p.add_argument("--out-dir", default=None, metavar="DIR",
                   help="with --results: where to write (default: the table's folder)")
    p.add_argument("--no-figures", action="store_true", help="with --results: the report tables only")
    p.set_defaults(func=_plot)
    return p
