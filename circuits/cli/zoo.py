"""``circuits zoo``: the bundled models (list them, rebuild them)."""

from __future__ import annotations

import argparse


def _list(args: argparse.Namespace) -> int:
    from circuits.models.loading import ZOO_DIR
    from circuits.zoo.registry import list_rows

    rows = list_rows()
    if not rows:
        print(f"no bundled models yet in {ZOO_DIR}")
        return 0
    for r in rows:
        params = f"{r['params']:,}" if r["params"] else "?"
        print(f"{r['name']:22s} {r['architecture']:19s} {params:>10s} params {r['mb'] or 0:6.2f} MB  {r['accuracy']}")
        print(f"{'':22s} {r['description']}")
    total = sum(r["mb"] or 0 for r in rows)
    print(f"total weights: {total:.2f} MB; load with circuits.load_model('zoo:NAME')")
    return 0


def _train(args: argparse.Namespace) -> int:
    import torch

    from circuits.zoo.registry import make, summary_json

    if args.threads:
        torch.set_num_threads(args.threads)
    meta = make(args.name, out=args.out, steps=args.steps, seed=args.seed, progress=not args.quiet)
    where = args.out or f"circuits/zoo/{args.name}"
    print(f"wrote {where}/ (config.json, model.safetensors, tokenizer, README.md, zoo.json"
          f"{', task.toml, ground_truth.json' if args.name.startswith('planted') else ''})")
    print(summary_json(meta))
    return 0


def add_parser(sub) -> None:
    from circuits.zoo.registry import MODELS

    zoo = sub.add_parser("zoo", help="the bundled models")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", required=True)
    zoo_list = zoo_sub.add_parser("list", help="list bundled models (load them as zoo:NAME)")
    zoo_list.set_defaults(func=_list)
    train = zoo_sub.add_parser(
        "train", help="train (or construct) a bundled model, seeded, on CPU",
        description="Train a bundled model from the project's own task generators (planted models are "
                    "constructed and checked by exact patching). Writes the model folder: config.json, "
                    "model.safetensors, tokenizer, README.md model card, zoo.json metadata.",
        epilog="examples:\n  circuits zoo train attn-only-2l\n  circuits zoo train gpt2-tasks --steps 200 "
               "--out /tmp/gpt2-tasks\n  circuits zoo train planted-ioi",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("name", choices=sorted(MODELS))
    train.add_argument("--out", default=None, help="output folder (default: the package's circuits/zoo/NAME)")
    train.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped model's)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)
