"""circuits: automatic circuit discovery in transformer language models.

Public API (the contract in DESIGN.md)::

    model = circuits.load_model("zoo:attn-only-2l")    # or a hub id, a local HF folder
    task = circuits.load_task("ioi", model, n=200, seed=0)
    graph = model.graph                                 # circuits.Graph over every edge
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> module that defines it. Imported on first use so `import circuits` stays fast
# (torch and transformers load only when a model is touched).
_EXPORTS = {
    "load_model": "circuits.models.loading",
    "CircuitModel": "circuits.models.circuit_model",
    "Graph": "circuits.graph.graph",
    "GraphStructure": "circuits.graph.structure",
    "load_task": "circuits.tasks",
    "Task": "circuits.tasks",
    "discover": "circuits.discovery",
    "evaluate": "circuits.evaluation",
    "faithfulness_curve": "circuits.evaluation",
    "view": "circuits.plotting.viewer",
}

# sorted(_EXPORTS) + ["__version__"], spelled out so linters and type checkers see the exports.
__all__ = ["CircuitModel", "Graph", "GraphStructure", "Task", "discover", "evaluate", "faithfulness_curve",
           "load_model", "load_task", "view", "__version__"]


# Subpackages, importable as attributes (`circuits.zoo.task_file(...)`) without an explicit import.
_SUBPACKAGES = {"discovery", "evaluation", "graph", "interventions", "models", "plotting", "sweeps", "tasks", "zoo"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    if name in _SUBPACKAGES:
        return import_module(f"circuits.{name}")
    raise AttributeError(f"module 'circuits' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from circuits.discovery import discover
    from circuits.evaluation import evaluate, faithfulness_curve
    from circuits.graph.graph import Graph
    from circuits.graph.structure import GraphStructure
    from circuits.models.circuit_model import CircuitModel
    from circuits.models.loading import load_model
    from circuits.plotting.viewer import view
    from circuits.tasks import Task, load_task
