"""Cost of position-aware edges (issue 20, point 4): the patched forward with masks ``[S, R, P]`` and EAP scoring
``[S, R, P]``, each beside its position-free form, as ratios to a plain Hugging Face forward measured in one run.

GPT-2-small-shaped random-weight model (32,491 edges), batch 16 x 32 tokens, fp32. Masks are uniform random in
[0, 1] on every edge (and, position-aware, at every position). EAP runs on a session over random token pairs of
one length, read at the last position, one forward + backward per batch. Peak memory is measured per pass in a
fresh subprocess (peak RSS above the loaded model; CUDA: peak allocated).

    python benchmarks/position_aware.py            # writes results/position_aware.{json,md}
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

from circuits.discovery.attribution import eap  # noqa: E402
from circuits.interventions.ablation import ablated_outputs  # noqa: E402
from circuits.models.random import random_model  # noqa: E402
from circuits.session import CircuitSession  # noqa: E402
from circuits.tasks.metrics import Metric  # noqa: E402
from circuits.tasks.task import Task, build_batch  # noqa: E402

KINDS = ("hf", "patched", "patched_positions", "eap", "eap_positions")
LABELS = {
    "hf": "Hugging Face forward",
    "patched": "patched forward, mask [S, R]",
    "patched_positions": "patched forward, mask [S, R, P]",
    "eap": "EAP scores [S, R] (forward + backward)",
    "eap_positions": "EAP scores [S, R, P] (forward + backward)",
}


def _pairs_task(clean: torch.Tensor, corrupted: torch.Tensor, vocab: int) -> Task:
    g = torch.Generator().manual_seed(1)
    answers = torch.randint(0, vocab, (len(clean), 2), generator=g).tolist()
    readouts = [[(clean.shape[1] - 1, [a], [d])] for a, d in answers]
    return Task(name="random-pairs", data=build_batch(clean.tolist(), corrupted.tolist(), readouts, 0),
                base_metric=Metric("logit_diff"), tokenizer=None)


def setup(batch: int, seq: int, device: str):
    model = random_model("gpt2-small", device=device)
    gen = torch.Generator().manual_seed(0)
    vocab = model.spec.token_embed.shape[0]
    clean = torch.randint(0, vocab, (batch, seq), generator=gen)
    corrupted = torch.randint(0, vocab, (batch, seq), generator=gen)
    s = model.structure
    masks = torch.rand(s.n_senders, s.n_receivers, generator=gen).to(device)
    position_masks = torch.rand(s.n_senders, s.n_receivers, seq, generator=gen).to(device)
    ids = clean.to(device)
    with torch.no_grad():
        ablated = ablated_outputs(model, "corrupted", ids, corrupted_ids=corrupted.to(device))
    session = CircuitSession(model, _pairs_task(clean, corrupted, vocab), split="all", batch_size=batch)
    session.ablated(session.batches[0])  # the corrupted run is held, as in a discovery run
    runs = {
        "hf": lambda: model.hf(ids).logits,
        "patched": lambda: model.patched_logits(ids, masks, ablated),
        "patched_positions": lambda: model.patched_logits(ids, position_masks, ablated),
        "eap": lambda: eap(session),
        "eap_positions": lambda: eap(session, positions=True),
    }
    return model, runs


def probe_memory(kind: str, batch: int, seq: int, device: str) -> None:
    """Run one pass of ``kind`` in this (fresh) process and print its peak memory in MB as JSON."""
    _, runs = setup(batch, seq, device)
    grad = kind.startswith("eap")
    with torch.set_grad_enabled(grad):
        peak = pass_peak_mb(runs[kind], device)
    print(json.dumps({"kind": kind, "peak_mb": peak}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        return probe_memory(args.memory_probe, args.batch, args.seq, args.device)

    model, runs = setup(args.batch, args.seq, args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    no_grad = {k: (lambda f=f: (torch.no_grad()(f)(), sync())) for k, f in runs.items() if not k.startswith("eap")}
    with_grad = {k: (lambda f=f: (f(), sync())) for k, f in runs.items() if k.startswith("eap")}
    t = interleaved_medians({**no_grad, **with_grad}, repeats=args.repeats)
    memory = {}
    for kind in KINDS:
        out = subprocess.run([sys.executable, __file__, "--memory-probe", kind, "--batch", str(args.batch),
                              "--seq", str(args.seq), "--device", args.device],
                             capture_output=True, text=True, check=True).stdout
        memory[kind] = json.loads(out.strip().splitlines()[-1])["peak_mb"]
    s = model.structure
    ratios = {k: t[k] / t["hf"] for k in KINDS}
    result = {"settings": {"model": "random:gpt2-small", "batch": args.batch, "seq": args.seq, "dtype": "float32",
                           "device": args.device, "edges": s.n_edges, "edge_positions": s.n_edges * args.seq,
                           "repeats": args.repeats, "mask": "uniform random in [0, 1] on every edge (and position)"},
              "seconds": t, "peak_memory_mb": memory, "over_hf": ratios,
              "positions_over_edges": {"patched": t["patched_positions"] / t["patched"],
                                       "eap": t["eap_positions"] / t["eap"],
                                       "patched_memory": memory["patched_positions"] / max(memory["patched"], 1e-9),
                                       "eap_memory": memory["eap_positions"] / max(memory["eap"], 1e-9)}}
    rows = "\n".join(f"| {LABELS[k]} | {t[k]:.3f} | {ratios[k]:.2f} | {memory[k]:.0f} |" for k in KINDS)
    q = result["positions_over_edges"]
    md = f"""
Position-aware edges vs position-free ones: GPT-2-small shape (random weights, {s.n_edges:,} edges, x {args.seq}
positions = {s.n_edges * args.seq:,} edge-positions), batch {args.batch} x {args.seq} tokens, fp32, {args.device};
median of {args.repeats} interleaved runs; masks uniform random in [0, 1] on every edge (and position).

| pass | seconds | x HF forward | peak memory (MB) |
|---|---|---|---|
{rows}

Position-aware over position-free: patched forward **{q['patched']:.2f}x** time, {q['patched_memory']:.2f}x memory;
EAP **{q['eap']:.2f}x** time, {q['eap_memory']:.2f}x memory. The position-aware mask itself is
{s.n_senders * s.n_receivers * args.seq * 4 / 2**20:.1f} MB ([S, R, P] fp32, dense over non-edges too).
"""
    paths = write("position_aware", result, md, "python benchmarks/position_aware.py")
    print(md)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
