"""Circuit discovery: score every edge (or node) of a model's graph for a task, with MIB's sign.

    scored = circuits.discover(model, task, method="eap-ig", ablation="corrupted", steps=5)
    circuit = scored.top_k(200)

Every method returns a :class:`circuits.Graph` whose scores mean the same thing: **positive = the edge
helps** (removing it lowers the task metric, or raises the divergence from the full model). The method, its
parameters, the task, the ablation, the data size, the wall time and the package version are recorded in
``graph.metadata`` and saved with the graph.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from circuits.discovery.checkpoint import Checkpoint, fingerprint
from circuits.discovery.context import DiscoveryContext, DiscoveryError
from circuits.interventions.ablation import ABLATIONS

__all__ = ["discover", "METHODS", "Method", "DiscoveryError", "register"]


@dataclass(frozen=True)
class Method:
    """A discovery method: ``fn(ctx, **params)`` returns ``[S, R]`` edge scores or ``[n_nodes]`` node scores,
    or ``(scores [S, R], in_graph [S, R] bool)`` when the method chooses its circuit itself (ACDC, edge pruning)."""

    name: str
    fn: Callable
    level: str  # "edge" | "node"
    description: str
    ablations: tuple[str, ...] = ("corrupted", "mean", "zero")
    why_not: str = ""  # why the other ablations are ruled out
    checkpoints: bool = False  # the method accepts checkpoint=Checkpoint
    defaults: dict = field(default_factory=dict)

    @property
    def params(self) -> dict:
        sig = inspect.signature(self.fn)
        return {k: p.default for k, p in list(sig.parameters.items())[1:] if k != "checkpoint"}


METHODS: dict[str, Method] = {}


def register(name: str, level: str, description: str, **kwargs) -> Callable[[Callable], Callable]:
    """Add a method to :data:`METHODS` (its parameters are read from the function's signature)."""

    def wrap(fn: Callable) -> Callable:
        METHODS[name] = Method(name, fn, level, description, **kwargs)
        return fn

    return wrap


def _register_builtin() -> None:
    from circuits.discovery import acdc, attribution, edge_pruning, exact, random_baseline

    register("eap", "edge", "edge attribution patching (Syed et al. 2023): dM/dm at m = 1")(attribution.eap)
    register("eap-ig", "edge", "EAP with integrated gradients over the input embedding (Hanna et al. 2024)")(
        attribution.eap_ig)
    register("eap-ig-activations", "edge", "EAP-IG interpolating each sender group's activations (MIB)")(
        attribution.eap_ig_activations)
    register("exact", "edge", "each edge's exact effect, patched alone (batched)", checkpoints=True)(exact.exact)
    register("node-ap", "node", "attribution patching on heads and MLPs")(attribution.node_ap)
    register("node-patching", "node", "each head's / MLP's exact effect, ablated alone", checkpoints=True)(
        exact.node_patching)
    register("random", "edge", "random scores: the baseline every method must beat")(random_baseline.random_scores)
    for module in (acdc, edge_pruning):
        module.register_methods(register)


def discover(model, task, method: str = "eap-ig", *, ablation: str = "corrupted", split: str = "train",
             batch_size: int = 16, reference=None, checkpoint: str | None = None, check: bool = True,
             **params):
    """Score the edges (or nodes) of ``model``'s graph for ``task`` with ``method``.

    ``split``: the part of the task discovery runs on ("train", the default, leaves "validation" for
    faithfulness; or "all"). ``ablation``: "corrupted" (the task's paired counterfactuals), "mean" (over
    ``reference``, default the discovery split's clean prompts) or "zero". ``checkpoint``: a file path for
    long methods (exact, node-patching, acdc, edge-pruning) to save progress to and resume from.
    Other keyword arguments are the method's parameters (``circuits.discovery.METHODS[name].params``).
    """
    from circuits import __version__
    from circuits.graph.graph import Graph

    if not METHODS:
        _register_builtin()
    if method not in METHODS:
        raise DiscoveryError(f"unknown method {method!r}; choose one of {', '.join(sorted(METHODS))}")
    m = METHODS[method]
    unknown = sorted(set(params) - set(m.params))
    if unknown:
        known = ", ".join(f"{k}={v!r}" for k, v in m.params.items()) or "none"
        raise DiscoveryError(f"method {method!r} has no parameter(s) {', '.join(unknown)}; its parameters: {known}")
    if ablation not in ABLATIONS:
        raise DiscoveryError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    if ablation not in m.ablations:
        raise DiscoveryError(f"method {method!r} cannot use ablation={ablation!r}: {m.why_not} "
                             f"(it accepts {', '.join(m.ablations)})")
    if checkpoint is not None and not m.checkpoints:
        raise DiscoveryError(f"method {method!r} runs in one pass and takes no checkpoint; drop checkpoint=")
    data = {"train": lambda: task.train, "validation": lambda: task.validation, "all": lambda: task}
    if split not in data:
        raise DiscoveryError(f"split must be 'train', 'validation' or 'all', got {split!r}")
    ctx = DiscoveryContext(model, data[split](), ablation=ablation, batch_size=batch_size, reference=reference)
    if check:
        ctx.check_signal()
    resolved = {**m.params, **params}
    kwargs = dict(params)
    if m.checkpoints:
        key = fingerprint(method=method, params=resolved, model=model.name, structure=model.structure.cfg(),
                          task=task.name, n=ctx.n_examples, split=split, ablation=ablation, batch_size=batch_size,
                          data=int(ctx.task.clean.sum()))
        kwargs["checkpoint"] = Checkpoint(checkpoint, key)
    start = time.perf_counter()
    scores = m.fn(ctx, **kwargs)
    in_graph = None
    if isinstance(scores, tuple):  # (scores, in_graph): methods that choose their own circuit (ACDC, pruning)
        scores, in_graph = scores
    wall = time.perf_counter() - start
    if m.checkpoints:
        kwargs["checkpoint"].done()
    metadata = {
        "method": method, "level": m.level, "params": resolved, "task": task.name, "metric": ctx.metric.name,
        "ablation": ablation, "split": split, "n_examples": ctx.n_examples, "batch_size": batch_size,
        "wall_time_s": round(wall, 3), "version": __version__, "model": model.name,
        "score_sign": "positive = the edge helps (MIB)",
    }
    if isinstance(ctx.extras.get(method), dict):  # a method's own summary (ACDC: edges kept, circuits run)
        metadata["result"] = ctx.extras[method]
    structure = model.structure
    if m.level == "node":
        # Node methods score nodes; edges stay unscored (NaN) and circuits are cut with level="node".
        return Graph(structure, scores=torch.full((structure.n_senders, structure.n_receivers), float("nan")),
                     in_graph=structure.edge_mask.clone(), node_scores=scores.float().cpu(), metadata=metadata)
    if in_graph is not None:
        return Graph(structure, scores=scores.float().cpu(), in_graph=in_graph.bool().cpu(), metadata=metadata)
    return Graph.full(structure, scores=scores.float().cpu(), metadata=metadata)
