"""Circuit discovery: score every edge (or node) of a model's graph for a task, with MIB's sign.

    scored = circuits.discover(model, task, method="eap-ig", ablation="corrupted", steps=5)
    circuit = scored.top_k(200)

Every method returns a :class:`circuits.Graph` whose scores mean the same thing: **positive = the edge
helps** (removing it lowers the task metric, or raises the divergence from the full model). The method, its
parameters, the task, the ablation, the data size, the wall time and the package version are recorded in
``graph.metadata`` and saved with the graph.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

# the method modules register themselves on import
from circuits.discovery import acdc, attribution, edge_pruning, ensemble, exact, mattr, random_baseline  # noqa: F401
from circuits.discovery.checkpoint import Checkpoint, fingerprint
from circuits.discovery.registry import METHODS, DiscoveryError, Method, register
from circuits.graph.graph import Graph
from circuits.session import CircuitSession

if TYPE_CHECKING:  # pragma: no cover
    from circuits.models.circuit_model import CircuitModel
    from circuits.tasks.task import Task

__all__ = ["discover", "METHODS", "Method", "DiscoveryError", "register"]


def discover(model: CircuitModel, task: Task, method: str = "eap-ig", *, ablation: str = "corrupted",
             split: str = "train", batch_size: int = 16, reference: Task | None = None,
             checkpoint: str | None = None, check: bool = True, show_progress: bool | None = None,
             grouped_kv: bool | None = None, **params: Any) -> Graph:
    """Score the edges (or nodes) of ``model``'s graph for ``task`` with ``method``.

    ``split``: the part of the task discovery runs on ("train", the default, leaves "validation" for
    faithfulness; or "all"). ``ablation``: "corrupted" (the task's paired counterfactuals; MIB's "patching"),
    "mean" (over ``reference``, default the training split's clean prompts) or "zero". ``checkpoint``: a file
    path for long methods (exact, node-patching, acdc, edge-pruning) to save progress to and resume from.
    ``show_progress``: progress bars (None: when stderr is a terminal). ``grouped_kv``: score a graph with k/v
    receivers per key/value group (True) or per query head (False, MIB's); None: the model's own setting
    (``load_model(..., grouped_kv=True)``). Other keyword arguments are the method's
    parameters (``circuits.discovery.METHODS[name].params``).
    """
    from circuits import __version__

    if method not in METHODS:
        raise DiscoveryError(f"unknown method {method!r}; choose one of {', '.join(sorted(METHODS))}")
    m = METHODS[method]
    params = m.check_params(params)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise DiscoveryError(f"batch_size={batch_size!r}: expected an integer >= 1 (pairs per batch), e.g. 16")
    if checkpoint is not None and not m.checkpoints:
        raise DiscoveryError(f"method {method!r} runs in one pass and takes no checkpoint; drop checkpoint=")
    if split not in ("train", "validation", "all"):
        raise DiscoveryError(f"split must be 'train', 'validation' or 'all', got {split!r}")
    session = CircuitSession(model, task, ablation=ablation, split=split, reference=reference, batch_size=batch_size,
                             show_progress=show_progress, grouped_kv=grouped_kv)
    model = session.model
    if session.ablation not in m.ablations:
        raise DiscoveryError(f"method {method!r} cannot use ablation={session.ablation!r}: {m.why_not} "
                             f"(it accepts {', '.join(m.ablations)})")
    if check:
        session.check_signal()
    resolved = {**m.params, **params}
    kwargs: dict[str, Any] = dict(params)
    if m.checkpoints:
        key = fingerprint(method=method, params=resolved, model=model.name, structure=model.structure.cfg(),
                          task=task.name, n=session.n_examples, split=split, ablation=session.ablation,
                          batch_size=batch_size, data=int(session.data.clean.sum()))
        kwargs["checkpoint"] = Checkpoint(checkpoint, key)
    start = time.perf_counter()
    scores = m.fn(session, **kwargs)
    in_graph = None
    if isinstance(scores, tuple):  # (scores, in_graph): methods that choose their own circuit (ACDC, pruning)
        scores, in_graph = scores
    wall = time.perf_counter() - start
    if m.checkpoints:
        kwargs["checkpoint"].done()
    metadata = {
        "method": method, "level": m.level, "params": resolved, "task": task.name, "metric": session.metric.name,
        "ablation": session.ablation, "split": split, "n_examples": session.n_examples, "batch_size": batch_size,
        "wall_time_s": round(wall, 3), "version": __version__, "model": model.name,
        "score_sign": "positive = the edge helps (MIB)",
    }
    if isinstance(session.extras.get(method), dict):  # a method's own summary (ACDC: edges kept, circuits run)
        metadata["result"] = session.extras[method]
    structure = model.structure
    if m.level == "node":
        # Node methods score nodes; edges stay unscored (NaN) and circuits are cut with level="node".
        return Graph(structure, scores=torch.full((structure.n_senders, structure.n_receivers), float("nan")),
                     in_graph=structure.edge_mask.clone(), node_scores=scores.float().cpu(), metadata=metadata)
    if in_graph is not None:
        return Graph(structure, scores=scores.float().cpu(), in_graph=in_graph.bool().cpu(), metadata=metadata)
    return Graph.full(structure, scores=scores.float().cpu(), metadata=metadata)
