"""Exact patching's cost per edge, in Hugging Face forwards of the same batch (issue 23).

For each model: one plain HF forward of the whole batch is the unit; ``exact`` on the incremental engine (each cut
recomputes only its receiver's node and what that feeds) and on the plain engine (``incremental=False``: every
pass computes every node, today's implementation before the change) run in the same process, interleaved, and
must give the same scores.

* zoo:gpt2-tasks, IOI, 128 pairs, every edge. Goals: at most 0.3 forwards per edge, at least 5x the plain engine.
* The GPT-2-small shape (random weights, 12 layers x 12 heads, d 768), random-token pairs: a seeded uniform
  sample of edges (the whole 32,491-edge graph takes hours on 2 CPU cores on the plain engine), which estimates
  the mean cost over all edges without bias. Goal: at least 5x the plain engine.

    python benchmarks/exact_speed.py                 # writes results/exact_speed.{json,md}
    python benchmarks/exact_speed.py --gpt2-edges 96 # a smaller sample
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write  # noqa: E402
from discovery_speed import random_pairs_task  # noqa: E402

import circuits  # noqa: E402
from circuits.discovery.exact import EdgeCuts, single_cut_effects  # noqa: E402
from circuits.session import CircuitSession  # noqa: E402

PER_EDGE_GOAL = 0.3
SPEEDUP_GOAL = 5.0


def hf_forward_seconds(model, task, repeats: int = 5) -> float:
    """Median time of one plain HF forward of every clean prompt in one batch."""
    batch = task.as_batch()
    times = []
    with torch.no_grad():
        model.hf(input_ids=batch.clean, attention_mask=batch.attention_mask)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.hf(input_ids=batch.clean, attention_mask=batch.attention_mask)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def timed_exact(model, task, edges, *, incremental: bool, batch_size: int, circuits_per_pass: int):
    session = CircuitSession(model, task, split="all", batch_size=batch_size, show_progress=False)
    session.baselines  # noqa: B018 (the baselines are not part of the per-edge cost: both engines share them)
    t0 = time.perf_counter()
    effects = single_cut_effects(session, EdgeCuts(model.structure, edges), circuits_per_pass=circuits_per_pass,
                                 incremental=incremental)
    return time.perf_counter() - t0, effects, session.forwards


def measure(label: str, model, task, edges, *, batch_size: int, circuits_per_pass: int, rounds: int) -> dict:
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
        "incremental_patched_passes": fast_passes, "plain_patched_passes": plain_passes,
    }
    print(f"{label}: {row['incremental_forwards_per_edge']:.3f} forwards/edge incremental, "
          f"{row['plain_forwards_per_edge']:.3f} plain, {row['speedup']:.1f}x, max |diff| {diff:.2e}", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=128, help="IOI pairs on zoo:gpt2-tasks")
    p.add_argument("--gpt2-edges", type=int, default=192, help="edges sampled on the GPT-2-small shape")
    p.add_argument("--gpt2-batch", type=int, default=8, help="random-token pairs on the GPT-2-small shape")
    p.add_argument("--gpt2-seq", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per engine (the fastest is kept)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    model = circuits.load_model("zoo:gpt2-tasks")
    task = circuits.load_task("ioi", model, n=args.pairs, seed=0)
    rows.append(measure("zoo:gpt2-tasks (IOI)", model, task, model.structure.edge_order, batch_size=32,
                        circuits_per_pass=32, rounds=args.rounds))

    gpt2 = circuits.load_model("random:gpt2-small")
    g = torch.Generator().manual_seed(0)
    sample = torch.randperm(gpt2.structure.n_edges, generator=g)[:args.gpt2_edges].sort().values
    pairs = random_pairs_task(gpt2, args.gpt2_batch, args.gpt2_seq)
    rows.append(measure("GPT-2-small shape (random weights)", gpt2, pairs, gpt2.structure.edge_order[sample],
                        batch_size=args.gpt2_batch, circuits_per_pass=32, rounds=1))

    ok_per_edge = rows[0]["incremental_forwards_per_edge"] <= PER_EDGE_GOAL
    ok_speedup = all(r["speedup"] >= SPEEDUP_GOAL for r in rows)
    lines = [
        "Exact patching's cost per edge in units of one Hugging Face forward of the same batch (all pairs in one "
        "batch), for the incremental engine (each cut recomputes its receiver's node and what that node feeds, "
        "from held clean outputs) and the plain engine (`incremental=False`: the implementation before issue 23), "
        "timed in the same process on the same data. Baselines (full and ablated runs, shared by both) are not "
        "counted. Both engines' scores agree (max |difference| column).",
        "",
        "| model | pairs x tokens | edges timed / in graph | HF forward (s) | incremental: forwards / edge | "
        "plain: forwards / edge | speed-up | max abs difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['pairs']} x {r['tokens']} | {r['edges_timed']:,} / "
                     f"{r['edges_in_graph']:,} | {r['hf_forward_s']:.4f} | "
                     f"**{r['incremental_forwards_per_edge']:.3f}** | {r['plain_forwards_per_edge']:.3f} | "
                     f"**{r['speedup']:.1f}x** | {r['max_abs_difference']:.1e} |")
    lines += [
        "",
        f"Goals: at most {PER_EDGE_GOAL} forwards per edge on zoo:gpt2-tasks "
        f"({'met' if ok_per_edge else 'NOT met'}); at least {SPEEDUP_GOAL:.0f}x the plain engine on both "
        f"({'met' if ok_speedup else 'NOT met'}).",
        f"The GPT-2-small row times a seeded uniform sample of {args.gpt2_edges} of its 32,491 edges (sorted in MIB "
        "order), an unbiased estimate of the mean cost per edge over the whole graph; the whole graph on the "
        "plain engine would take hours on this machine.",
    ]
    command = "python benchmarks/exact_speed.py" + (f" --gpt2-edges {args.gpt2_edges}"
                                                     if args.gpt2_edges != 192 else "")
    json_path, md_path = write("exact_speed", {"rows": rows, "goals": {"per_edge": PER_EDGE_GOAL,
                               "speedup": SPEEDUP_GOAL, "per_edge_met": ok_per_edge, "speedup_met": ok_speedup}},
                               "\n".join(lines), command)
    print(f"wrote {md_path} and {json_path}")


if __name__ == "__main__":
    main()
