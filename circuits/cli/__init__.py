"""The ``circuits`` command line: the same words as the Python API (DESIGN.md).

One module per command, each with ``add_parser(sub)``: :mod:`~circuits.cli.info` (``info``),
:mod:`~circuits.cli.tasks` (``tasks``), :mod:`~circuits.cli.discover` (``discover``), :mod:`~circuits.cli.evaluate`
(``evaluate``, ``reproduce``), :mod:`~circuits.cli.zoo` (``zoo``), :mod:`~circuits.cli.run` (``run``, sweeps on
Ray), :mod:`~circuits.cli.plot` (``plot``), :mod:`~circuits.cli.view` (``view``) and
:mod:`~circuits.cli.mib` (``export-mib``, ``check-mib``). Commands call the Python API; nothing in the library
imports this package. ``circuits`` (the console script) and ``python -m circuits.cli`` both run :func:`main`.
"""

from __future__ import annotations

import argparse
import sys

from circuits.cli import discover, evaluate, info, mib, plot, run, tasks, view, zoo

COMMANDS = (info, tasks, discover, evaluate, zoo, run, plot, view, mib)  # in the order `circuits --help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="circuits", description="Find the circuits inside transformer language "
                                     "models: tasks -> discovery -> graphs -> results.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, KeyError) as err:  # user errors: one clear line, no traceback
        print(f"circuits {args.command}: error: {err}", file=sys.stderr)
        return 2
