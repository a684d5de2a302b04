"""``circuits export-mib`` and ``circuits check-mib``: write an MIB leaderboard submission, and check one."""

from __future__ import annotations

import argparse
import sys

EPILOG_EXPORT = """examples:
  circuits export-mib graphs/ioi-gpt2.json --task ioi --model gpt2 --out submission
                                               # submission/ioi_gpt2/importances.json (every edge's score)
  circuits export-mib graphs/mcqa-qwen.json --task mcqa --model qwen2.5 --out submission --circuits --pt
                                               # submission/mcqa_qwen2.5/circuit_0.001.pt ... circuit_0.5.pt
  circuits check-mib submission                # MIB's rules, every problem with its fix

One folder per task and model ({task}_{model}); a rerun replaces that folder's files. MIB wants at least 2 tasks
and 2 models in a submission: export each, then run check-mib on the whole folder before uploading it.
Tasks: ioi, mcqa, arithmetic-addition, arithmetic-subtraction, arc-easy, arc-challenge.
Models: gpt2, qwen2.5, gemma2, llama3, interpbench (the graph must have that model's shape).
"""

EPILOG_CHECK = """examples:
  circuits check-mib submission                # exit 0 when valid, 1 with one line per problem
  circuits check-mib submission --min-models 1 --min-tasks 1   # check the folders while a submission grows
"""


def _export(args: argparse.Namespace) -> int:
    from circuits.graph import Graph
    from circuits.graph.submission import check_submission, export_submission

    graph = Graph.load(args.graph)
    folder = export_submission(graph, args.out, task=args.task, model=args.model,
                               kind="circuits" if args.circuits else "importances",
                               file_type="pt" if args.pt else "json", absolute=args.absolute)
    files = sorted(folder.iterdir())
    sizes = ""
    if args.circuits:
        sizes = " (circuit sizes " + ", ".join(f"{Graph.load(p).n_edges:,}" for p in files) + " edges)"
    print(f"wrote {folder}/: {', '.join(p.name for p in files)}{sizes}")
    problems = check_submission(args.out, min_models=1, min_tasks=1)
    if problems:
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)
        return 1
    final = check_submission(args.out)
    print("the submission passes MIB's rules" if not final else f"folders valid; still to do: {final[-1]}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from circuits.graph.submission import check_submission

    problems = check_submission(args.folder, min_models=args.min_models, min_tasks=args.min_tasks)
    for p in problems:
        print(f"problem: {p}")
    if problems:
        print(f"{args.folder}: {len(problems)} problem(s); MIB would not count this submission")
        return 1
    print(f"{args.folder}: a valid MIB circuit-track submission")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export-mib", help="write a scored graph into an MIB leaderboard submission folder",
                        description="Write one {task}_{model} folder of an MIB circuit-track submission.",
                        epilog=EPILOG_EXPORT, formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("graph", metavar="GRAPH", help="a scored graph file (.json MIB format, .graphml, .pt)")
    ex.add_argument("--task", required=True, help="MIB's task name (ioi, mcqa, arithmetic-addition, ...)")
    ex.add_argument("--model", required=True, help="MIB's model name (gpt2, qwen2.5, gemma2, llama3, interpbench)")
    ex.add_argument("--out", required=True, metavar="DIR", help="the submission folder (created if needed)")
    ex.add_argument("--circuits", action="store_true",
                    help="nine circuits at MIB's edge fractions instead of one file of importance scores")
    ex.add_argument("--absolute", action="store_true", help="with --circuits: rank edges by |score|")
    ex.add_argument("--pt", action="store_true", help="write MIB's .pt files instead of JSON (smaller, faster)")
    ex.set_defaults(func=_export)
    ck = sub.add_parser("check-mib", help="check an MIB submission folder against MIB's rules",
                        description="Check an MIB circuit-track submission folder before uploading it.",
                        epilog=EPILOG_CHECK, formatter_class=argparse.RawDescriptionHelpFormatter)
    ck.add_argument("folder", metavar="DIR", help="the submission folder (one {task}_{model} folder per graph)")
    ck.add_argument("--min-models", type=int, default=2, help="models required (MIB: %(default)s)")
    ck.add_argument("--min-tasks", type=int, default=2, help="tasks required (MIB: %(default)s)")
    ck.set_defaults(func=_check)
