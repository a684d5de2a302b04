"""Cost of EAP and EAP-IG relative to the Hugging Face passes they stand for (issue 11, point 3).

GPT-2-small-shaped random-weight model, batch 16 x 32 tokens, fp32, all 32,491 edges scored.
* EAP: one ablated forward, one clean forward, one backward -> goal: at most 1.5x (2 HF forwards + 1 HF backward).
* EAP-IG, 5 steps: 2 forwards + 5 x (forward + backward) -> goal: at most 1.5x that many HF passes.
HF backward = gradient of the same metric with respect to the input embeddings, weights frozen (what
attribution needs). Peak memory of EAP at batch 4, 8, 16 in fresh subprocesses shows it stays linear in batch.

    python benchmarks/discovery_speed.py          # writes results/discovery_speed.{json,md}
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians, write  # noqa: E402

from circuits.discovery.attribution import eap, eap_ig  # noqa: E402
from circuits.session import CircuitSession  # noqa: E402
from circuits.models.random import random_model  # noqa: E402
from circuits.tasks.metrics import Metric  # noqa: E402
from circuits.tasks.task import Task, build_batch  # noqa: E402

GOAL = 1.5


def random_pairs_task(model, batch: int, seq: int, seed: int = 0) -> Task:
    """Random-token clean/corrupted pairs read at the last position with a logit difference."""
    g = torch.Generator().manual_seed(seed)
    V = model.spec.token_embed.shape[0]
    clean = torch.randint(0, V, (batch, seq), generator=g).tolist()
    corrupted = torch.randint(0, V, (batch, seq), generator=g).tolist()
    answers = torch.randint(0, V, (batch, 2), generator=g).tolist()
    readouts = [[(seq - 1, [a], [d])] for a, d in answers]
    return Task("random-pairs", build_batch(clean, corrupted, readouts, pad=0), Metric("logit_diff"),
                model.tokenizer)


@contextmanager
def frozen_weights(model):
    """The HF baseline's parameters take no gradient (attribution differentiates activations only)."""
    params = [p for p in model.hf.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def setup(batch: int, seq: int):
    model = random_model("gpt2-small")
    task = random_pairs_task(model, batch, seq)
    ctx = CircuitSession(model, task, batch_size=batch)
    data = task.as_batch()

    def hf_forward():
        with torch.no_grad():
            return model.hf(data.clean).logits

    def hf_forward_backward():
        with frozen_weights(model):
            embeds = model.hf.get_input_embeddings()(data.clean).detach().requires_grad_(True)
            logits = model.hf(inputs_embeds=embeds).logits
            task.base_metric(logits, data).sum().backward()

    def fresh() -> CircuitSession:  # a new session per run: nothing cached (the ablated runs) carries over
        return CircuitSession(model, task, batch_size=batch)

    return model, ctx, {"hf_forward": hf_forward, "hf_forward_backward": hf_forward_backward,
                        "eap": lambda: eap(fresh()), "eap_ig_5": lambda: eap_ig(fresh(), steps=5)}


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-probe", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-method", default="eap", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        _, ctx, runs = setup(args.memory_probe, args.seq)
        base = _rss_kb("VmRSS")
        runs[args.memory_method]()
        print(json.dumps({"batch": args.memory_probe, "peak_mb": (_rss_kb("VmHWM") - base) / 1024}))
        return

    model, ctx, runs = setup(args.batch, args.seq)
    t = interleaved_medians(runs, repeats=args.repeats)
    F = t["hf_forward"]
    Bw = t["hf_forward_backward"] - F  # the backward alone
    eap_budget = 2 * F + Bw
    ig_budget = 2 * F + 5 * (F + Bw)
    memory: dict[str, dict[int, float]] = {"eap": {}, "eap_ig_5": {}}
    for method in memory:
        for b in (4, 8, 16):
            out = subprocess.run([sys.executable, __file__, "--memory-probe", str(b), "--seq", str(args.seq),
                                  "--memory-method", method], capture_output=True, text=True, check=True).stdout
            memory[method][b] = json.loads(out.strip().splitlines()[-1])["peak_mb"]
    r_eap, r_ig = t["eap"] / eap_budget, t["eap_ig_5"] / ig_budget
    result = {"settings": {"model": "random:gpt2-small", "batch": args.batch, "seq": args.seq, "dtype": "float32",
                           "edges": model.structure.n_edges, "repeats": args.repeats},
              "seconds": t, "hf_backward_s": Bw, "eap_over_budget": r_eap, "eap_ig_over_budget": r_ig,
              "peak_memory_mb_by_batch": memory, "goal": GOAL,
              "meets_goal": r_eap <= GOAL and r_ig <= GOAL}
    md = f"""
EAP and EAP-IG on the GPT-2-small shape (random weights, {model.structure.n_edges:,} edges), batch {args.batch} x
{args.seq} tokens, fp32, CPU; median of {args.repeats} interleaved runs. HF backward = gradient of the metric with
respect to the input embeddings with weights frozen ({Bw:.3f} s).

| run | seconds | HF passes it stands for | budget (s) | ratio (goal <= {GOAL}) |
|---|---|---|---|---|
| HF forward | {F:.3f} | | | |
| EAP, all edges | {t['eap']:.3f} | 2 forwards + 1 backward | {eap_budget:.3f} | **{r_eap:.2f}** |
| EAP-IG, 5 steps | {t['eap_ig_5']:.3f} | 2 forwards + 5 (forward + backward) | {ig_budget:.3f} | **{r_ig:.2f}** |

Peak memory above the loaded model (fresh process each; linear in the batch):
EAP {', '.join(f'batch {b}: {m:.0f} MB' for b, m in memory['eap'].items())};
EAP-IG (its 5 steps stacked into one pass of 5 x batch rows) {', '.join(f'batch {b}: {m:.0f} MB' for b, m in memory['eap_ig_5'].items())}.

How: the q/k/v projections of an attribution run are one autograd function whose backward computes each
head's input gradient once (closed-form norm VJP), scores it, and passes the sum upstream, so the norm and the
projections are not differentiated twice; weight views carry no autograd history, so no weight-gradient
products run; EAP-IG stacks its steps in one pass and sums their receiver gradients before the score products.
"""
    paths = write("discovery_speed", result, md, "python benchmarks/discovery_speed.py --threads 1")
    print(md)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
