"""The smallest faithful circuit of a scored graph: bisection over top-k, each step a batched circuit run.

Selection by faithfulness, beside selection by score (:mod:`circuits.graph.selection`): it runs the model, through
one :class:`~circuits.session.CircuitSession`, so :meth:`Graph.minimal` and
:func:`circuits.evaluation.minimal_circuit` are the same function.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable

import torch

from circuits.graph.graph import Graph
from circuits.graph.levels import check_positions
from circuits.graph.selection import (
    SELECTIONS,
    SelectionError,
    parse_selection,
    select as select_by,
    warn_if_uninformative,
)
from circuits.session import CircuitSession
from circuits.session.normalization import normalized, undefined, warn_undefined

if TYPE_CHECKING:  # pragma: no cover
    from circuits.models.circuit_model import CircuitModel
    from circuits.tasks.task import Task

__all__ = ["SELECTIONS", "bisect_smallest", "check_circuit", "minimal_circuit"]


def check_circuit(model: Any, circuit: Any, what: str = "circuit") -> Graph:
    """``circuit`` as a :class:`Graph` of ``model``'s shape; :class:`GraphMismatchError` if made for another."""
    if not isinstance(circuit, Graph):
        raise TypeError(f"{what} must be a circuits.Graph (e.g. scored.top_k(200) or Graph.load(path, model=model)), "
                        f"got {type(circuit).__name__}")
    source = f"{what}" + (f" (made for {circuit.metadata['model']!r})" if "model" in circuit.metadata else "")
    name = getattr(model, "name", None) or type(model).__name__
    circuit.structure.check_fits(model.structure, source=source, model_name=name)
    return circuit


def bisect_smallest(n: int, target: float, found: dict[int, float], measure: Callable[[list[int]], None],
                    points_per_pass: int = 1) -> tuple[int, int]:
    """Bisection over k in [0, n] keeping f(lo) < target <= f(hi) (``found`` holds f(0) and f(n) on entry;
    ``measure(ks)`` adds f of ``points_per_pass`` ks per pass). Returns ``(lo, hi)``: ``hi`` reaches the target,
    and ``lo == hi - 1`` when the search ended next to it."""
    lo, hi = 0, n
    while hi - lo > 1:
        p = min(points_per_pass, hi - lo - 1)
        ks = sorted({lo + (hi - lo) * (i + 1) // (p + 1) for i in range(p)} - {lo, hi})
        measure(ks)
        reached = [k for k in ks if found[k] >= target]
        if reached:
            hi = reached[0]
            below = [k for k in ks if k < hi]
            lo = below[-1] if below else lo
        else:
            lo = ks[-1]
    return lo, hi


def minimal_circuit(model: CircuitModel, task: Task, scored: Graph, target: float = 0.9, *, absolute: bool = False,
                    ablation: str = "corrupted", split: str = "validation", batch_size: int = 16,
                    selection: str = "top_k", points_per_pass: int = 1,
                    circuits_per_pass: int | None = None) -> Graph:
    """The smallest top-k circuit of ``scored`` whose faithfulness reaches ``target``, by bisection over k.

    k counts edges selected before pruning (as :meth:`Graph.top_k`); the circuit is pruned. The search keeps
    f(lo) < target <= f(hi), starting from lo = 0 (the empty circuit, f = 0) and hi = every edge (f = 1), so it
    returns a k with f(k) >= target and f(k - 1) < target: the smallest such k whenever f grows with k (the usual
    case; f need not be monotone, and then this is the boundary bisection finds). ``points_per_pass`` > 1 tries
    that many k per pass as batched circuits (fewer passes, more circuits: worth it on a GPU).

    Returns the circuit (a :class:`Graph`); ``metadata["minimal"]`` records target, k, f, the size after pruning
    and every (k, f) evaluated.
    """
    target = float(target)
    if not 0.0 < target <= 1.0:
        raise SelectionError(f"target must lie in (0, 1] (f = 1 is the full model), got {target}")
    if points_per_pass < 1:
        raise SelectionError(f"points_per_pass must be at least 1, got {points_per_pass}")
    parse_selection(selection)  # a clear error before any run
    scored = check_circuit(model, scored, "scored graph")
    warn_if_uninformative(scored, "edge")
    runner = CircuitSession(model, task, ablation=ablation, split=split, batch_size=batch_size,
                            circuits_per_pass=circuits_per_pass)
    m_full, m_empty = float(runner.metric_full.mean()), float(runner.metric_empty.mean())
    if undefined(m_full, m_empty):
        warn_undefined(m_full, m_empty, runner.task_name, runner.ablation)
        raise SelectionError("faithfulness is undefined on this task (M(full) == M(empty)), so no circuit can reach a "
                         "target; see the warning above")
    check_positions(scored, runner)
    n = scored.structure.n_edges * (scored.in_graph.shape[-1] if scored.in_graph.dim() == 3 else 1)  # edge-positions
    found: dict[int, float] = {0: 0.0, n: 1.0}
    circuits: dict[int, Graph] = {}

    def select(k: int) -> Graph:
        if k not in circuits:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*none lies on a path from input to logits.*")
                circuits[k] = select_by(scored, selection, k, absolute)
        return circuits[k]

    def measure(ks: list[int]) -> None:
        metric = runner.circuit_metrics(torch.stack([select(k).in_graph.cpu() for k in ks])).metric
        for k, row in zip(ks, metric):
            found[k] = normalized(float(row.mean()), m_full, m_empty)

    lo, hi = bisect_smallest(n, target, found, measure, points_per_pass)
    circuit = select(hi).copy()
    circuit.metadata["minimal"] = {
        "target": target, "k": hi, "faithfulness": found[hi], "n_edges": circuit.n_edges,
        "n_distinct_edges": int(circuit.in_graph.any(-1).sum()) if circuit.in_graph.dim() == 3 else circuit.n_edges,
        "faithfulness_at_k_minus_1": found[lo] if lo == hi - 1 else None, "absolute": bool(absolute),
        "selection": selection, "ablation": runner.ablation, "task": runner.task_name, "split": runner.split,
        "n_examples": runner.n_examples, "evaluated": sorted([k, f] for k, f in found.items())}
    return circuit
