"""``circuits zoo``: the bundled models."""

from __future__ import annotations

import argparse


def _list(args: argparse.Namespace) -> int:
    from circuits.models.loading import ZOO_DIR, zoo_models

    names = zoo_models()
    if not names:
        print(f"no bundled models yet in {ZOO_DIR}")
        return 0
    for name in names:
        card = ZOO_DIR / name / "README.md"
        summary = card.read_text().splitlines()[0].lstrip("# ") if card.is_file() else ""
        print(f"zoo:{name:24s} {summary}")
    return 0


def add_parser(sub) -> None:
    zoo = sub.add_parser("zoo", help="the bundled models")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", required=True)
    zoo_list = zoo_sub.add_parser("list", help="list bundled models (load them as zoo:NAME)")
    zoo_list.set_defaults(func=_list)
