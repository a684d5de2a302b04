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
from typing import TYPE_CHECKING, Any, Protocol

import torch

# the method modules register themselves on import
from circuits.discovery import acdc, attribution, edge_pruning, ensemble, exact, mattr, neurons, random_baseline  # noqa: F401
from circuits.discovery.checkpoint import Checkpoint, fingerprint
from circuits.discovery.registry import METHODS, DiscoveryError, Method, register
from circuits.graph.graph import Graph
from circuits.session import CircuitSession

if TYPE_CHECKING:  # pragma: no cover
    from circuits.models.circuit_model import CircuitModel
    from circuits.tasks.task import Task

class Workers(Protocol):
    """What spreads one discovery over several processes (``circuits.sweeps.actors.EvaluatorPool``):
    ``run(method, session, params, check)`` returns what ``method.fn(session, **params)`` returns in one
    process, checking the session's signal first when ``check``."""

    def run(self, method: Method, session: CircuitSession, params: dict[str, Any], *, check: bool = True) -> Any:
        ...


__all__ = ["discover", "Workers", "METHODS", "Method", "DiscoveryError", "register"]


def discover(model: CircuitModel, task: Task, method: str = "eap-ig", *, ablation: str = "corrupted",
             split: str = "train", batch_size: int = 16, reference: Task | None = None,
             checkpoint: str | None = None, check: bool = True, show_progress: bool | None = None,
             workers: Workers | None = None, memory_budget: int | str | None = None,
             examples_per_pass: int | None = None, position_chunk: int | None = None,
             grouped_kv: bool | None = None, **params: Any) -> Graph:
    """Score the edges (or nodes) of ``model``'s graph for ``task`` with ``method``.

    ``split``: the part of the task discovery runs on ("train", the default, leaves "validation" for
    faithfulness; or "all"). ``ablation``: "corrupted" (the task's paired counterfactuals; MIB's "patching"),
    "mean" (over ``reference``, default the training split's clean prompts) or "zero". ``checkpoint``: a file
    path for long methods (exact, node-/neuron-patching, acdc, edge-pruning) to save progress to and resume from.
    ``show_progress``: progress bars (None: when stderr is a terminal). ``memory_budget`` (bytes or ``"4GB"``;
    default on CUDA: half the free memory, on CPU: no chunking): the run is chunked over examples, stacked steps
    and positions to fit it, or refused before any forward with its estimate (:meth:`CircuitSession.fit`);
    ``examples_per_pass`` / ``position_chunk`` set those chunks explicitly. ``workers``: a pool of model replicas
    to spread the run over (``circuits.sweeps.actors.EvaluatorPool``; ``pool.discover(method)`` passes itself),
    with the scores of one process; its replicas run the chunks fitted here. ``grouped_kv``: score a graph with
    k/v receivers per key/value group (True) or per query head (False, MIB's); None: the model's own setting
    (``load_model(..., grouped_kv=True)``). Other keyword arguments are the method's parameters
    (``circuits.discovery.METHODS[name].params``).
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
                             show_progress=show_progress, memory_budget=memory_budget,
                             examples_per_pass=examples_per_pass, position_chunk=position_chunk,
                             grouped_kv=grouped_kv)
    model = session.model
    if session.ablation not in m.ablations:
        raise DiscoveryError(f"method {method!r} cannot use ablation={session.ablation!r}: {m.why_not} "
                             f"(it accepts {', '.join(m.ablations)})")
    if checkpoint is not None and workers is not None:
        raise DiscoveryError("a run spread over workers resumes lost work by itself and takes no checkpoint; "
                             "drop checkpoint= or workers=")
    resolved = {**m.params, **params}
    for plan in m.memory_plans(resolved):  # before any forward; chunks fit every plan
        session.fit(**plan)
    if check and workers is None:  # the workers check on their replicas, so this process needs no forwards
        session.check_signal()
    kwargs: dict[str, Any] = dict(params)
    if m.checkpoints:
        key = fingerprint(method=method, params=resolved, model=model.name, structure=model.structure.cfg(),
                          task=task.name, n=session.n_examples, split=split, ablation=session.ablation,
                          batch_size=batch_size, data=int(session.data.clean.sum()))
        kwargs["checkpoint"] = Checkpoint(checkpoint, key)
    start = time.perf_counter()
    scores = m.fn(session, **kwargs) if workers is None else workers.run(m, session, kwargs, check=check)
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
    if isinstance(scores, torch.Tensor) and m.level == "edge" and scores.dim() == 3:
        metadata["positions"] = int(scores.shape[-1])  # position-aware: [S, R, L], L = the pairs' token length
    if isinstance(session.extras.get(method), dict):  # a method's own summary (ACDC: edges kept, circuits run)
        metadata["result"] = session.extras[method]
    structure = model.structure
    if m.level == "neuron":
        # Neuron methods score heads (as nodes) and MLP neurons; cut with level="neuron" (circuits.discovery.neurons).
        assert isinstance(scores, neurons.NeuronScores)
        return Graph(structure, scores=torch.full((structure.n_senders, structure.n_receivers), float("nan")),
                     in_graph=structure.edge_mask.clone(), node_scores=scores.nodes.float().cpu(), metadata=metadata,
                     neuron_scores=scores.neurons.float().cpu())
    if m.level == "node":
        # Node methods score nodes; edges stay unscored (NaN) and circuits are cut with level="node".
        return Graph(structure, scores=torch.full((structure.n_senders, structure.n_receivers), float("nan")),
                     in_graph=structure.edge_mask.clone(), node_scores=scores.float().cpu(), metadata=metadata)
    if in_graph is not None:
        return Graph(structure, scores=scores.float().cpu(), in_graph=in_graph.bool().cpu(), metadata=metadata)
    return Graph.full(structure, scores=scores.float().cpu(), metadata=metadata)
