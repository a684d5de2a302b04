"""Bundled models: small models the project trains (or constructs) and ships, loadable offline as ``zoo:NAME``.

``circuits zoo list`` shows them; ``circuits zoo train NAME`` rebuilds one (seeded, CPU). Planted-circuit models
ship their task (``task.toml``) and ground truth (``ground_truth.json``) in their folder::

    model = circuits.load_model("zoo:planted-ioi")
    task = circuits.load_task(circuits.zoo.task_file("planted-ioi"), model, n=64)
    truth = circuits.zoo.ground_truth("planted-ioi", model)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from circuits.graph.graph import Graph
    from circuits.models.circuit_model import CircuitModel

ZOO_ROOT = Path(__file__).resolve().parent


def model_dir(name: str) -> Path:
    name = name[4:] if name.startswith("zoo:") else name
    path = ZOO_ROOT / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no bundled model {name!r} in {ZOO_ROOT}")
    return path


def task_file(name: str) -> Path:
    """The task file shipped with a planted model (``task.toml``)."""
    path = model_dir(name) / "task.toml"
    if not path.is_file():
        raise FileNotFoundError(f"zoo:{name} ships no task file; use a built-in task (circuits tasks)")
    return path


def ground_truth(name: str, model: CircuitModel | None = None) -> Graph:
    """The planted model's ground-truth circuit as a :class:`circuits.Graph`."""
    from circuits.graph.graph import Graph

    path = model_dir(name) / "ground_truth.json"
    if not path.is_file():
        raise FileNotFoundError(f"zoo:{name} has no ground truth (only planted models do)")
    return Graph.load(path, model=model)


def metadata(name: str) -> dict:
    from circuits.zoo.common import read_meta

    return read_meta(model_dir(name))
