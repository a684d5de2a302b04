"""``circuits tasks``: list the available tasks."""

from __future__ import annotations

import argparse


def _tasks(args: argparse.Namespace) -> int:
    import pandas as pd

    from circuits.tasks import list_tasks

    with pd.option_context("display.max_colwidth", 70, "display.width", 160):
        print(list_tasks().to_string(index=False))
    return 0


def add_parser(sub) -> None:
    tasks = sub.add_parser("tasks", help="list the available tasks (built in and tasks/*.toml)")
    tasks.set_defaults(func=_tasks)
