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


DEBUG_HELP = "print the full traceback of an error (default: one line)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="circuits", description="Find the circuits inside transformer language "
                                     "models: tasks -> discovery -> graphs -> results.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    _add_debug(sub)
    return parser


def _add_debug(sub: argparse._SubParsersAction) -> None:
    """``--debug`` after any (sub)command too: ``circuits discover ... --debug``. SUPPRESS keeps a subcommand that
    was not given it from resetting the top-level flag."""
    for parser in sub.choices.values():
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_debug(action)


def main(argv: list[str] | None = None) -> int:
    """Run one command. The package's own errors (:class:`circuits.errors.CircuitsError`: bad input, each naming
    the option and the fix) and file-system errors print one line and exit 2; anything else is a bug and prints
    one line and exits 1. ``--debug`` prints the traceback instead."""
    from circuits.errors import CircuitsError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CircuitsError, OSError) as err:  # bad input or a missing file: one clear line, no traceback
        if args.debug:
            raise
        print(f"circuits {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a bug: say so in one line; --debug shows where
        if args.debug:
            raise
        print(f"circuits {args.command}: error: unexpected {type(err).__name__}: {err} (this is a bug; rerun with "
              "--debug for the traceback and report it)", file=sys.stderr)
        return 1
