"""Cost of an edge-patched forward pass relative to a plain Hugging Face forward (issue 2, point 5).

GPT-2-small-shaped random-weight model, batch 16 x 32 tokens, fp32: the patched forward mixes every one of
the 32,491 edges with an arbitrary (random, continuous) mask. Goal: at most 2.0x the plain forward.
Peak memory is measured per pass in a fresh subprocess (peak RSS above the loaded model; CUDA: peak allocated).

    python benchmarks/patched_forward.py            # writes results/patched_forward.{json,md}
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians, pass_peak_mb, write  # noqa: E402

from circuits.interventions.ablation import ablated_outputs  # noqa: E402
from circuits.models.random import random_model  # noqa: E402

GOAL = 2.0


def setup(batch: int, seq: int, device: str):
    model = random_model("gpt2-small", device=device)
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50257, (batch, seq), generator=gen).to(device)
    corrupted = torch.randint(0, 50257, (batch, seq), generator=gen).to(device)
    s = model.structure
    masks = torch.rand(s.n_senders, s.n_receivers, generator=gen).to(device)
    with torch.no_grad():
        ablated = ablated_outputs(model, "corrupted", clean, corrupted_ids=corrupted)
    runs = {
        "hf": lambda: model.hf(clean).logits,
        "decomposed": lambda: model.logits(clean),
        "patched": lambda: model.patched_logits(clean, masks, ablated),
    }
    return model, runs


def probe_memory(kind: str, batch: int, seq: int, device: str) -> None:
    """Run one pass of ``kind`` in this (fresh) process and print its peak memory in MB as JSON."""
    _, runs = setup(batch, seq, device)
    with torch.no_grad():
        peak = pass_peak_mb(runs[kind], device)
    print(json.dumps({"kind": kind, "peak_mb": peak}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        return probe_memory(args.memory_probe, args.batch, args.seq, args.device)

    model, runs = setup(args.batch, args.seq, args.device)
    with torch.no_grad():
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
        timed = {k: (lambda f=f: (f(), sync())) for k, f in runs.items()}
        t = interleaved_medians(timed, repeats=args.repeats)
    memory = {}
    for kind in runs:
        out = subprocess.run([sys.executable, __file__, "--memory-probe", kind, "--batch", str(args.batch),
                              "--seq", str(args.seq), "--device", args.device],
                             capture_output=True, text=True, check=True).stdout
        memory[kind] = json.loads(out.strip().splitlines()[-1])["peak_mb"]
    ratio = t["patched"] / t["hf"]
    s = model.structure
    result = {"settings": {"model": "random:gpt2-small", "batch": args.batch, "seq": args.seq, "dtype": "float32",
                           "device": args.device, "edges": s.n_edges, "repeats": args.repeats,
                           "mask": "uniform random in [0, 1] on every edge"},
              "seconds": t, "peak_memory_mb": memory,
              "patched_over_hf": ratio, "decomposed_over_hf": t["decomposed"] / t["hf"], "goal": GOAL,
              "meets_goal": ratio <= GOAL}
    md = f"""
Edge-patched forward vs plain Hugging Face forward: GPT-2-small shape (random weights, {s.n_edges:,} edges),
batch {args.batch} x {args.seq} tokens, fp32, {args.device}; median of {args.repeats} interleaved runs.

| pass | seconds | x HF forward | peak memory (MB) |
|---|---|---|---|
| Hugging Face forward | {t['hf']:.3f} | 1.00 | {memory['hf']:.0f} |
| decomposed forward (no mask) | {t['decomposed']:.3f} | {t['decomposed'] / t['hf']:.2f} | {memory['decomposed']:.0f} |
| patched forward, random mask on every edge | {t['patched']:.3f} | **{ratio:.2f}** | {memory['patched']:.0f} |

Goal: patched <= {GOAL:.1f}x HF: **{'met' if ratio <= GOAL else 'NOT met'}**.
"""
    paths = write("patched_forward", result, md, "python benchmarks/patched_forward.py")
    print(md)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
