"""The smallest faithful node- or neuron-level circuit of a scored graph: bisection over the units kept.

Units are what ``top_k(k, level=...)`` ranks: scored nodes (``level="node"``: heads, MLPs, and ``input`` when it
has a score) or heads and MLP neurons (``level="neuron"``). As :func:`~circuits.graph.minimal.minimal_circuit` for
edges: f(lo) < target <= f(hi), from no unit (f = 0 by convention) to every unit, each step a batched run.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from circuits.graph.levels import run_circuits
from circuits.graph.minimal import bisect_smallest, check_circuit
from circuits.graph.selection import SelectionError, unit_scores
from circuits.session import CircuitSession
from circuits.session.neurons import NeuronRuns
from circuits.session.normalization import normalized, undefined, warn_undefined

if TYPE_CHECKING:  # pragma: no cover
    from circuits.graph.graph import Graph
    from circuits.models.circuit_model import CircuitModel
    from circuits.tasks.task import Task


def n_units(scored: Graph, level: str) -> int:
    """The scored units of ``scored`` at ``level`` (what ``top_fraction`` takes fractions of)."""
    if level == "neuron":
        if scored.neuron_scores is None:
            raise SelectionError("level='neuron' needs neuron scores (a neuron-level method's graph)")
        return int((~torch.isnan(unit_scores(scored.structure, scored.node_scores, scored.neuron_scores))).sum())
    if level == "node":
        if scored.node_scores is None:
            raise SelectionError("level='node' needs node scores (a node-level method's graph)")
        return int((~torch.isnan(scored.node_scores[:-1])).sum())
    raise SelectionError(f"level must be 'node' or 'neuron' here (edges: circuits.graph.minimal), got {level!r}")


def minimal_unit_circuit(model: CircuitModel, task: Task, scored: Graph, target: float = 0.9, *, level: str = "neuron",
                         absolute: bool = False, ablation: str = "corrupted", split: str = "validation",
                         batch_size: int = 16, points_per_pass: int = 4) -> Graph:
    """The smallest ``top_k(k, level=level)`` circuit of ``scored`` whose faithfulness reaches ``target``.

    ``metadata["minimal"]`` records target, level, k (units kept), the number of scored units, f and every (k, f)
    evaluated. ``points_per_pass`` k are tried per batched pass."""
    target = float(target)
    if not 0.0 < target <= 1.0:
        raise SelectionError(f"target must lie in (0, 1] (f = 1 is the full model), got {target}")
    scored = check_circuit(model, scored, "scored graph")
    n = n_units(scored, level)
    session = CircuitSession(model, task, ablation=ablation, split=split, batch_size=batch_size)
    m_full, m_empty = float(session.metric_full.mean()), float(session.metric_empty.mean())
    if undefined(m_full, m_empty):
        warn_undefined(m_full, m_empty, session.task_name, session.ablation)
        raise SelectionError("faithfulness is undefined on this task (M(full) == M(empty)), so no circuit can reach a "
                             "target; see the warning above")
    runs = NeuronRuns(session) if level == "neuron" else None
    found: dict[int, float] = {0: 0.0}
    circuits: dict[int, Graph] = {}

    def select(k: int) -> Graph:
        if k not in circuits:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*none lies on a path from input to logits.*")
                circuits[k] = scored.top_k(k, absolute, level=level)  # type: ignore[arg-type]
        return circuits[k]

    def measure(ks: list[int]) -> None:
        metric = run_circuits(session, [select(k) for k in ks], level, neuron_runs=runs).metric
        for k, row in zip(ks, metric):
            found[k] = normalized(float(row.mean()), m_full, m_empty)

    measure([n])
    if found[n] < target:
        raise SelectionError(f"every unit kept gives f = {found[n]:.4f} < target {target} at level {level!r}; "
                             "lower the target")
    _, hi = bisect_smallest(n, target, found, measure, points_per_pass)
    circuit = select(hi).copy()
    circuit.metadata["minimal"] = {
        "target": target, "level": level, "k": hi, "n_units": n, "faithfulness": found[hi],
        "n_edges": circuit.n_edges, "n_neurons": circuit.n_neurons if level == "neuron" else None,
        "absolute": bool(absolute), "ablation": session.ablation, "task": session.task_name, "split": session.split,
        "n_examples": session.n_examples, "evaluated": sorted([k, f] for k, f in found.items())}
    return circuit
