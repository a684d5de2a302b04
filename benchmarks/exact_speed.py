"""Exact patching's cost per edge, in Hugging Face forwards of the same batch (issue 23).

For each model: one plain HF forward of the whole batch is the unit; ``exact`` on the incremental engine (each cut
recomputes only its receiver's node and what that feeds) and on the plain engine (``incremental=False``: every
pass computes every node, today's implementation before the change) run in the same process, interleaved, and
must give the same scores.

* zoo:gpt2-tasks, IOI, 128 pairs, every edge. Goals: at most 0.3 forwards per edge, at least 5x the plain engine.
* The GPT-2-small shape (random weights, 12 layers x 12 heads, d 768), random-token pairs, on a sample (the
  whole 32,491-edge graph takes hours on 2 CPU cores on the plain engine) stratified as a whole-graph run batches
  it: receiver nodes drawn with probability proportional to their incoming edges, and one full pass (32) of each
  one's edges, so every sampled edge costs what it costs in a whole-graph run and the mean estimates the graph's
  mean cost per edge. (A uniform sample of single edges would put almost every edge in a pass of its own, which
  no whole-graph run does.) Goal: at least 5x the plain engine.

"Today's implementation" is measured twice: the plain engine of this code (the algorithm before issue 23, with
the same kernels) and, with ``--before REV`` (default: the commit the issue was filed against), the code at that
revision itself, checked out into a temporary git worktree and timed in a subprocess on the same data (its scores
must equal this run's).

    python benchmarks/exact_speed.py                 # writes results/exact_speed.{json,md}
    python benchmarks/exact_speed.py --gpt2-nodes 3  # a smaller sample
    python benchmarks/exact_speed.py --render        # rewrite the .md from the last run's .json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, interleaved_medians, write  # noqa: E402
from discovery_speed import random_pairs_task  # noqa: E402

import circuits  # noqa: E402
from circuits.discovery.exact import EdgeCuts, single_cut_effects  # noqa: E402
from circuits.session import CircuitSession  # noqa: E402

PER_EDGE_GOAL = 0.3
SPEEDUP_GOAL = 5.0
BEFORE = "dcddd8d"  # main when issue 23 was filed: exact on the plain engine, before the kernel changes
REPO = Path(__file__).resolve().parent.parent

# Run in a subprocess with the old revision first on sys.path: the same model, data and settings as this run.
_BEFORE_SCRIPT = r"""
import json, sys, time
root, spec = sys.argv[1], json.loads(sys.argv[2])
sys.path[:0] = [root, root + "/benchmarks"]
import torch
import circuits
from circuits.discovery.exact import EdgeCuts, single_cut_effects
from circuits.session import CircuitSession
torch.set_num_threads(spec["threads"])
assert circuits.__file__.startswith(root), circuits.__file__
model = circuits.load_model(spec["model"])
if spec["task"] == "random-pairs":
    from discovery_speed import random_pairs_task
    task = random_pairs_task(model, spec["batch"], spec["seq"])
else:
    task = circuits.load_task(spec["task"], model, n=spec["pairs"], seed=0)
edges = torch.tensor(spec["edges"])
best, effects = None, None
for _ in range(spec["rounds"]):
    session = CircuitSession(model, task, split="all", batch_size=spec["batch_size"], show_progress=False)
    session.baselines
    t0 = time.perf_counter()
    effects = single_cut_effects(session, EdgeCuts(model.structure, edges), circuits_per_pass=spec["cpp"])
    t = time.perf_counter() - t0
    best = t if best is None else min(best, t)
print(json.dumps({"seconds": best, "effects": effects.tolist()}))
"""


def time_before(rev: str, spec: dict) -> tuple[float, torch.Tensor]:
    """Seconds of ``exact`` at revision ``rev`` (fastest of ``spec['rounds']``) and its effects."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(tree), rev], check=True)
        try:
            done = subprocess.run([sys.executable, "-c", _BEFORE_SCRIPT, str(tree), json.dumps(spec)], check=True,
                                  capture_output=True, text=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out["seconds"], torch.tensor(out["effects"], dtype=torch.float64)


def node_stratified_sample(structure, n_nodes: int, per_node: int, seed: int) -> torch.Tensor:
    """Indices into ``structure.edge_order``: ``n_nodes`` distinct receiver nodes drawn with probability
    proportional to their incoming edges, and up to ``per_node`` of each one's edges (seeded, MIB order)."""
    g = torch.Generator().manual_seed(seed)
    node_of_edge = structure.receiver_node[structure.edge_order[:, 1]]  # [E]
    counts = torch.bincount(node_of_edge, minlength=structure.n_nodes).double()
    nodes = torch.multinomial(counts, n_nodes, replacement=False, generator=g)
    picked = []
    for node in nodes.tolist():
        edges = (node_of_edge == node).nonzero().flatten()
        picked.append(edges[torch.randperm(len(edges), generator=g)[:per_node]])
    return torch.cat(picked).sort().values


def hf_forward_seconds(model, task, repeats: int = 5) -> float:
    """Median time of one plain HF forward of every clean prompt in one batch."""
    batch = task.as_batch()
    with torch.no_grad():
        return interleaved_medians({"hf": lambda: model.hf(input_ids=batch.clean,
                                                           attention_mask=batch.attention_mask)}, repeats)["hf"]


def timed_exact(model, task, edges, *, incremental: bool, batch_size: int, circuits_per_pass: int):
    session = CircuitSession(model, task, split="all", batch_size=batch_size, show_progress=False)
    session.baselines  # noqa: B018 (the baselines are not part of the per-edge cost: both engines share them)
    t0 = time.perf_counter()
    effects = single_cut_effects(session, EdgeCuts(model.structure, edges), circuits_per_pass=circuits_per_pass,
                                 incremental=incremental)
    return time.perf_counter() - t0, effects, session.forwards


def measure(label: str, model, task, edges, *, batch_size: int, circuits_per_pass: int, rounds: int,
            before: dict | None = None) -> dict:
    """``before``: the old revision's run (``rev`` and the model/task spec of :data:`_BEFORE_SCRIPT`), or None."""
    n_edges = edges.shape[0]
    hf = hf_forward_seconds(model, task)
    fast_t, plain_t = [], []
    for _ in range(rounds):  # interleaved, so machine noise hits both engines alike
        t, fast, fast_passes = timed_exact(model, task, edges, incremental=True, batch_size=batch_size,
                                           circuits_per_pass=circuits_per_pass)
        fast_t.append(t)
        t, plain, plain_passes = timed_exact(model, task, edges, incremental=False, batch_size=batch_size,
                                             circuits_per_pass=circuits_per_pass)
        plain_t.append(t)
    fast_s, plain_s = min(fast_t), min(plain_t)
    diff = float((fast - plain).abs().max())
    row = {
        "model": label, "pairs": len(task), "tokens": int(task.clean.shape[1]), "edges_timed": n_edges,
        "edges_in_graph": model.structure.n_edges, "hf_forward_s": hf,
        "incremental_s": fast_s, "plain_s": plain_s,
        "incremental_forwards_per_edge": fast_s / (n_edges * hf), "plain_forwards_per_edge": plain_s / (n_edges * hf),
        "speedup": plain_s / fast_s, "max_abs_difference": diff,
        "max_relative_difference": diff / max(float(plain.abs().max()), 1e-30),
        "incremental_patched_passes": fast_passes, "plain_patched_passes": plain_passes,
    }
    if before is not None:
        spec = {**before["spec"], "edges": edges.tolist(), "batch_size": batch_size, "cpp": circuits_per_pass,
                "rounds": rounds, "threads": torch.get_num_threads()}
        old_s, old_effects = time_before(before["rev"], spec)
        row.update({"before_rev": before["rev"], "before_s": old_s, "before_forwards_per_edge": old_s / (n_edges * hf),
                    "speedup_vs_before": old_s / fast_s,
                    "max_abs_difference_vs_before": float((fast - old_effects).abs().max())})
    print(f"{label}: {row['incremental_forwards_per_edge']:.3f} forwards/edge incremental, "
          f"{row['plain_forwards_per_edge']:.3f} plain, {row['speedup']:.1f}x, max |diff| {diff:.2e}"
          + (f"; {row['before_forwards_per_edge']:.3f} at {before['rev']}, {row['speedup_vs_before']:.1f}x"
             if before is not None else ""), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=128, help="IOI pairs on zoo:gpt2-tasks")
    p.add_argument("--gpt2-nodes", type=int, default=6, help="receiver nodes sampled on the GPT-2-small shape")
    p.add_argument("--gpt2-batch", type=int, default=8, help="random-token pairs on the GPT-2-small shape")
    p.add_argument("--gpt2-seq", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per engine (the fastest is kept)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--before", default=BEFORE, help="also time exact at this git revision ('' to skip)")
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the saved .json")
    args = p.parse_args()
    if args.render:
        render_saved()
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    model = circuits.load_model("zoo:gpt2-tasks")
    task = circuits.load_task("ioi", model, n=args.pairs, seed=0)
    before = ({"rev": args.before, "spec": {"model": "zoo:gpt2-tasks", "task": "ioi", "pairs": args.pairs}}
              if args.before else None)
    rows.append(measure("zoo:gpt2-tasks (IOI)", model, task, model.structure.edge_order, batch_size=32,
                        circuits_per_pass=32, rounds=args.rounds, before=before))

    gpt2 = circuits.load_model("random:gpt2-small")
    sample = node_stratified_sample(gpt2.structure, args.gpt2_nodes, per_node=32, seed=0)
    pairs = random_pairs_task(gpt2, args.gpt2_batch, args.gpt2_seq)
    before = ({"rev": args.before, "spec": {"model": "random:gpt2-small", "task": "random-pairs",
                                             "batch": args.gpt2_batch, "seq": args.gpt2_seq}} if args.before else None)
    rows.append(measure("GPT-2-small shape (random weights)", gpt2, pairs, gpt2.structure.edge_order[sample],
                        batch_size=args.gpt2_batch, circuits_per_pass=32, rounds=1, before=before))
    s = gpt2.structure
    names = [n.name for n in s.nodes]
    nodes = sorted({int(s.receiver_node[r]) for r in s.edge_order[sample][:, 1]})
    rows[-1]["sampled_nodes"] = [f"{names[n]} ({int((s.receiver_node[s.edge_order[sample][:, 1]] == n).sum())})"
                                 for n in nodes]

    command = "python benchmarks/exact_speed.py" + (f" --gpt2-nodes {args.gpt2_nodes}"
                                                     if args.gpt2_nodes != 6 else "")
    goals, markdown = report(rows, args.gpt2_nodes)
    json_path, md_path = write("exact_speed", {"rows": rows, "gpt2_nodes": args.gpt2_nodes, "goals": goals},
                               markdown, command)
    print(f"wrote {md_path} and {json_path}")


def report(rows: list[dict], gpt2_nodes: int) -> tuple[dict, str]:
    """The goals reached and the Markdown table of measured ``rows``."""
    ok_per_edge = rows[0]["incremental_forwards_per_edge"] <= PER_EDGE_GOAL
    ok_speedup = all(r["speedup"] >= SPEEDUP_GOAL for r in rows)
    has_before = all("before_s" in r for r in rows)
    ok_before = has_before and all(r["speedup_vs_before"] >= SPEEDUP_GOAL for r in rows)
    rev = rows[0].get("before_rev", "")
    recompute_alone = " and ".join(f"{r['speedup']:.1f}x" for r in rows)
    lines = [
        "Exact patching's cost per edge in units of one Hugging Face forward of the same batch (all pairs in one "
        "batch), timed in one run on the same data, for three implementations:",
        "",
        "* **incremental** (this code's default): each cut recomputes only its receiver's node and what that node "
        "feeds, from the full model's held outputs; cuts that change the same nodes share a pass;",
        "* **plain** (`incremental=False`, this code): every pass computes every node; it shares this code's other "
        "gains (receivers with the same masks read one mix, the last layer at the read positions only, faster "
        "GELU), so incremental / plain is the gain of the recompute alone;",
    ]
    if has_before:
        lines.append(f"* **{rev}** (today's implementation: main when issue 23 was filed), checked out into a git "
                     "worktree and run in a subprocess.")
    lines += [
        "",
        "Baselines (full and ablated runs, shared by all) are not counted. All scores agree (max |difference| "
        "columns, fp32).",
        "",
        "| model | pairs x tokens | edges timed / in graph | HF forward (s) | incremental: forwards / edge | "
        "plain: forwards / edge | incremental vs plain | max abs difference |"
        + (f" {rev}: forwards / edge | incremental vs {rev} | max abs difference vs {rev} |" if has_before else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if has_before else ""),
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['pairs']} x {r['tokens']} | {r['edges_timed']:,} / "
                     f"{r['edges_in_graph']:,} | {r['hf_forward_s']:.4f} | "
                     f"**{r['incremental_forwards_per_edge']:.3f}** | {r['plain_forwards_per_edge']:.3f} | "
                     f"**{r['speedup']:.1f}x** | {r['max_abs_difference']:.1e} "
                     f"({r['max_relative_difference']:.0e} of the largest effect) |"
                     + (f" {r['before_forwards_per_edge']:.3f} | **{r['speedup_vs_before']:.1f}x** | "
                        f"{r['max_abs_difference_vs_before']:.1e} |" if has_before else ""))
    lines += [
        "",
        f"Goals: at most {PER_EDGE_GOAL} forwards per edge on zoo:gpt2-tasks "
        f"({'met' if ok_per_edge else 'NOT met'}); at least {SPEEDUP_GOAL:.0f}x today's implementation on both"
        + (f" ({rev}: {'met' if ok_before else 'NOT met'})" if has_before else " (not timed: --before '')")
        + f"; the recompute alone, against this code's plain engine: {recompute_alone}.",
        f"The GPT-2-small row times {gpt2_nodes} receiver nodes drawn with probability proportional to their "
        "incoming edges (seeded) and 32 of each one's edges (one pass, as in a whole-graph run): an estimate of "
        "the mean cost per edge over the whole graph, which on the plain engine would take hours on this machine. "
        f"Nodes: {', '.join(rows[1]['sampled_nodes'])}.",
        "Why the recompute alone stays near 3-4x: counting multiply-adds, an edge recomputes on average the layers "
        "from its receiver's on (about a quarter of a forward on zoo:gpt2-tasks, a third of the layers on GPT-2 "
        "small, whose edges spread evenly over the depths), while the plain engine computes every layer (three "
        "quarters of a forward once the last layer runs at the read positions only), which bounds the ratio near "
        "4x for any engine that recomputes exactly what a cut changes.",
    ]
    goals = {"per_edge": PER_EDGE_GOAL, "speedup": SPEEDUP_GOAL, "per_edge_met": ok_per_edge,
             "speedup_met": ok_speedup, "speedup_vs_before_met": ok_before}
    return goals, "\n".join(lines)


def render_saved() -> None:
    """Rewrite results/exact_speed.md from results/exact_speed.json (same numbers and provenance)."""
    saved = json.loads((RESULTS / "exact_speed.json").read_text())
    goals, markdown = report(saved["rows"], saved.get("gpt2_nodes", 6))
    m = saved["machine"]
    header = (f"# exact_speed\n\nRegenerate: `{saved['command']}`\n\nCommit `{saved['commit']}`, {saved['date']}; "
              f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads).\n\n")
    (RESULTS / "exact_speed.md").write_text(header + markdown.strip() + "\n")
    print(f"wrote {RESULTS / 'exact_speed.md'} from {RESULTS / 'exact_speed.json'}")


if __name__ == "__main__":
    main()
