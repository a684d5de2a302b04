"""``circuits info``: load a model, print its computational graph and check the decomposed forward."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from circuits.cli.options import UsageError, model_options

EPILOG_INFO = """examples:
  circuits info random:gpt2-small                  # GPT-2-small shape, random weights, no download
  circuits info gpt2 --save graphs/gpt2-full.json  # a hub model (cached), and write its full graph (MIB JSON)
  circuits info ./my-hf-folder --dtype bfloat16 --device cuda
"""


def _info(args: argparse.Namespace) -> int:
    import torch

    import circuits
    from circuits.interventions.ablation import ablated_outputs

    start = time.perf_counter()
    for option, value in (("--batch", args.batch), ("--seq", args.seq)):
        if value < 1:
            raise UsageError(f"{option} {value}: expected an integer >= 1")
    model = circuits.load_model(args.model, **model_options(args.device, args.dtype))
    config = model.hf.config
    longest = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if longest and args.seq > longest:
        raise UsageError(f"--seq {args.seq}: {model.name} reads at most {longest} positions; "
                         f"use --seq {longest} or less")
    s = model.structure
    print(f"model     {model.name}: {model.spec.family}, {s.describe()}, d_model {s.d_model}, "
          f"{model.dtype} on {model.device}")
    qkv = int(s.n_upstream[[r.kind == 'qkv' for r in s.receivers]].sum())
    mlp = int(s.n_upstream[[r.kind == 'mlp' for r in s.receivers]].sum())
    print(f"graph     {s.n_nodes:,} nodes, {s.n_edges:,} edges (into q/k/v {qkv:,}, into MLPs {mlp:,}, "
          f"into logits {s.n_senders:,}); {s.n_senders} senders x {s.n_receivers} receivers")

    gen = torch.Generator().manual_seed(0)
    vocab = model.spec.token_embed.shape[0]
    clean = torch.randint(0, vocab, (args.batch, args.seq), generator=gen)
    corrupted = torch.randint(0, vocab, (args.batch, args.seq), generator=gen)
    with torch.no_grad():
        t0 = time.perf_counter()
        reference = model.hf(clean.to(model.device)).logits
        t_hf = time.perf_counter() - t0
        ours = model.logits(clean)
        ablated = ablated_outputs(model, "corrupted", clean, corrupted_ids=corrupted)
        ones = torch.ones(s.n_senders, s.n_receivers)
        keep_all = model.patched_logits(clean, ones, ablated)
        cut_all = model.patched_logits(clean, torch.zeros_like(ones), ablated)
        t0 = time.perf_counter()
        model.patched_logits(clean, torch.rand(ones.shape, generator=gen), ablated)
        t_patch = time.perf_counter() - t0
        corrupted_logits = model.logits(corrupted)
    print(f"check     decomposed forward vs Hugging Face on {args.batch} x {args.seq} random tokens: "
          f"max |diff| {(ours - reference).abs().max():.1e}")
    print(f"patching  every edge kept = clean run (max |diff| {(keep_all - ours).abs().max():.1e}); "
          f"every edge cut = corrupted run ({(cut_all - corrupted_logits).abs().max():.1e}); "
          f"a random mask took {t_patch:.2f} s vs {t_hf:.2f} s plain")
    if args.save:
        path = model.graph.save(args.save)
        print(f"wrote     {path} (the full graph, {Path(path).suffix[1:]} format)")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def add_parser(sub) -> None:
    info = sub.add_parser("info", help="load a model, print its computational graph and check the decomposed forward",
                          epilog=EPILOG_INFO, formatter_class=argparse.RawDescriptionHelpFormatter)
    info.add_argument("model", nargs="?", default="random:gpt2-small",
                      help="hub id, local folder, zoo:NAME or random:PRESET (default: %(default)s)")
    info.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    info.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: the checkpoint's)")
    info.add_argument("--batch", type=int, default=4, help="examples in the check batch (default: %(default)s)")
    info.add_argument("--seq", type=int, default=16, help="tokens per example in the check (default: %(default)s)")
    info.add_argument("--save", default=None, help="write the full graph here (.json MIB format, .graphml, .pt)")
    info.set_defaults(func=_info)
