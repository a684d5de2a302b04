"""Faithfulness of circuits: one circuit (:func:`evaluate`) or several in one batched pass (:func:`evaluate_many`),
a curve over circuit sizes with MIB's CPR and CMD (:func:`faithfulness_curve`, :func:`mib_scores`) and the smallest
faithful top-k circuit (:func:`minimal_circuit`).

Definitions (DESIGN.md, "Faithfulness"; MIB's ``evaluate_area_under_curve`` in MIB-circuit-track
``MIB_circuit_track/evaluation.py``, EAP-IG's ``evaluate_graph``):

* A circuit C is run with every edge outside it ablated (``corrupted``: the paired counterfactual prompt's
  sender outputs, MIB's ``patching``; ``mean``: per-position means over the task's training split; ``zero``).
* M(full) is the model itself on the clean prompts (every edge kept), M(empty) the run with *every* edge
  ablated, which for ``corrupted`` is exactly the corrupted run.
* f(C) = (M(C) - M(empty)) / (M(full) - M(empty)), computed as MIB does on the **means** over the evaluation
  examples (mean metric of C, of the empty and of the full circuit), not as a mean of per-example ratios:
  per-example denominators can be ~0 and would dominate. Per-example values (and a per-example f, NaN where its
  denominator vanishes) are returned for inspection.
* M is the task's metric as configured (``task.base_metric``): logit difference, probability difference,
  log-probability, or ``kl`` (divergence from the full model, lower is better). f is invariant to the metric's
  sign, so for ``kl`` it reads f = 1 - KL(C) / KL(empty). Independently of the metric, every result also
  reports the KL divergence KL(full || C) of the next-token distribution at the readout positions.
* Circuits are pruned to input -> logits paths before they are run (EAP-IG's ``evaluate_graph(prune=True)``);
  the sizes reported are after pruning.
* Curves: f at MIB's edge fractions {0.001, ..., 0.5, 1}, k = int(fraction * n_edges) edges selected before
  pruning; CPR = area under f, CMD = area under |1 - f|, trapezoid rule on the linear fraction axis from the
  first to the last fraction (MIB's default ``log_scale=False``). MIB reports CPR from curves of signed scores
  (``absolute=False``) and CMD from curves of absolute scores (``absolute=True``); :func:`mib_scores` computes
  both curves in one batched pass.
* f is undefined when M(full) == M(empty) (the corruption does not change the metric): it is NaN, with a
  :class:`FaithfulnessWarning` saying so, never a silent number.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from circuits.graph.graph import Graph
from circuits.graph.levels import check_positions, edge_mask_of, neuron_masks, run_circuits
from circuits.graph.minimal import check_circuit
from circuits.graph.pruning import prune as prune_mask
from circuits.graph.selection import fraction_to_k, parse_selection, select, warn_if_uninformative
from circuits.session import CircuitSession, FaithfulnessWarning, normalized, undefined, warn_undefined

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from circuits.models.circuit_model import CircuitModel
    from circuits.tasks.task import Task

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# ---- shared helpers --------------------------------------------------------------------------------------------
def _circuit_mask(circuit: Graph, prune: bool, level: str) -> torch.Tensor:
    return edge_mask_of(circuit, prune, level)


def _per_example_f(metric: torch.Tensor, full: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    denom = full - empty
    tiny = undefined(full, empty)
    return torch.where(tiny, torch.full_like(denom, math.nan), (metric - empty) / denom.masked_fill(tiny, 1.0))


# ---- one circuit ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate` returns. Means are over the evaluated examples; ``per_example`` has one row each."""

    faithfulness: float  # f = (M(C) - M(empty)) / (M(full) - M(empty)) on the means; NaN when undefined
    metric: float  # mean M(C)
    metric_full: float  # mean M(full): the model itself
    metric_empty: float  # mean M(empty): every edge ablated
    kl: float  # mean KL(full || C) at the readout positions
    kl_empty: float  # mean KL(full || empty)
    n_edges: int  # edges run (after pruning); edge-positions for a position-aware circuit
    n_nodes: int  # nodes run; with level="neuron", the MLPs with a kept neuron among them
    n_examples: int
    ablation: str
    metric_name: str
    task: str
    split: str
    per_example: pd.DataFrame = field(repr=False)
    n_neurons: int | None = None  # MLP neurons kept, for level="neuron"
    n_distinct_edges: int | None = None  # position-aware circuits: edges kept at one position or more

    def to_dict(self) -> dict:
        """The summary as plain Python values (JSON-serializable; ``per_example`` left out)."""
        out = {k: getattr(self, k) for k in ("faithfulness", "metric", "metric_full", "metric_empty", "kl",
                                             "kl_empty", "n_edges", "n_nodes", "n_examples", "ablation",
                                             "metric_name", "task", "split")}
        return out if self.n_neurons is None else {**out, "n_neurons": self.n_neurons}

    def __repr__(self) -> str:
        return (f"EvaluationResult(faithfulness={self.faithfulness:.4f}, {self.metric_name} {self.metric:.4g} "
                f"(full {self.metric_full:.4g}, empty {self.metric_empty:.4g}), kl={self.kl:.4g}, "
                f"{self.n_edges:,} edges, {self.n_examples} examples of {self.task!r} ({self.split}), "
                f"ablation={self.ablation!r})")


def evaluate(model: CircuitModel, task: Task, circuit: Graph, ablation: str = "corrupted", *, split: str = "validation",
             batch_size: int = 16, prune: bool = True, level: str = "edge", memory_budget: int | str | None = None,
             examples_per_pass: int | None = None) -> EvaluationResult:
    """Run ``circuit`` (every edge outside it ablated) on the task and measure its faithfulness.

    Parameters
    ----------
    model : CircuitModel
    task : Task
        Its metric (``task.base_metric``) is the M of the faithfulness formula.
    circuit : Graph
        Made for ``model``'s shape (else :class:`~circuits.graph.io.GraphMismatchError`).
    ablation : "corrupted" | "mean" | "zero"
        What ablated edges carry: the paired corrupted prompt (MIB's "patching"), per-position means over the
        task's training split, or nothing.
    split : "validation" | "train" | "all"
        The examples evaluated (default the validation split; discovery should use ``train``).
    prune : bool
        Drop edges on no input -> logits path first (as EAP-IG's ``evaluate_graph``); sizes are after pruning.
    level : "edge" | "node" | "neuron"
        ``node`` runs every edge between the circuit's nodes (for node-level circuits such as the published
        induction heads, which list nodes and no edges); ``neuron`` runs a neuron-level circuit
        (``scored.top_k(k, level="neuron")``): every edge between its nodes, with the cut MLP neurons ablated.
    memory_budget : int | str | None
        Bytes (or ``"4GB"``) a patched pass may use: passes are chunked over examples and circuits to fit, or the
        run is refused before any forward (:meth:`~circuits.session.CircuitSession.fit`); default on CUDA half the
        free memory, on CPU no chunking. ``examples_per_pass`` sets the example chunk explicitly.

    An empty circuit evaluates to f = 0 by definition, with a :class:`FaithfulnessWarning` (usually a
    selection that pruned to nothing); f is NaN, with a warning, when M(full) == M(empty).

    >>> result = evaluate(model, task, scored.top_k(200))          # doctest: +SKIP
    >>> result.faithfulness, result.kl, result.per_example.head()  # doctest: +SKIP
    """
    return evaluate_many(model, task, [circuit], ablation, split=split, batch_size=batch_size, prune=prune,
                         level=level, memory_budget=memory_budget, examples_per_pass=examples_per_pass,
                         _stacklevel=2)[0]


def evaluate_many(model: CircuitModel, task: Task, circuits: Sequence[Graph], ablation: str = "corrupted", *,
                  split: str = "validation",
                  batch_size: int = 16, prune: bool = True, level: str = "edge",
                  memory_budget: int | str | None = None, examples_per_pass: int | None = None,
                  _stacklevel: int = 1) -> list[EvaluationResult]:
    """:func:`evaluate` for several circuits at once: one batched patched forward per batch of examples runs
    them all, and the full and empty runs are shared. Returns one :class:`EvaluationResult` per circuit."""
    import pandas as pd

    circuits = [check_circuit(model, c) for c in circuits]
    if not circuits:
        raise ValueError("no circuits to evaluate")
    masks = [_circuit_mask(c, prune, level) for c in circuits]
    for c, mask in zip(circuits, masks):
        if not bool(mask.any()):
            warnings.warn("the circuit has no edges" + (" on an input -> logits path" if c.n_edges else "") +
                          ": every edge is ablated, so f = 0 by definition. If this is not what you meant, select "
                          "more edges (a selection may prune to nothing), or pass level='node' for a circuit given "
                          "by its nodes.", FaithfulnessWarning, stacklevel=_stacklevel + 1)
    runner = CircuitSession(model, task, ablation=ablation, split=split, batch_size=batch_size,
                            memory_budget=memory_budget, examples_per_pass=examples_per_pass)
    for c in circuits:
        check_positions(c, runner)
    if len({tuple(m.shape) for m in masks}) > 1:
        raise ValueError("evaluate_many runs circuits of one kind together: all position-aware (of one length) "
                         "or all position-free")
    values = (run_circuits(runner, circuits, level, prune=prune, kl=True) if level == "neuron"
              else runner.circuit_metrics(torch.stack(masks), kl=True))
    metric, kl = values.metric, values.kl
    assert kl is not None
    full, empty, kl_empty = runner.metric_full, runner.metric_empty, runner.kl_empty
    m_full, m_empty = float(full.mean()), float(empty.mean())
    if undefined(m_full, m_empty):
        warn_undefined(m_full, m_empty, runner.task_name, runner.ablation, stacklevel=_stacklevel + 2)
    results = []
    for i, (c, mask) in enumerate(zip(circuits, masks)):
        m_c = float(metric[i].mean())
        frame = pd.DataFrame({"example": range(runner.n_examples), "metric": metric[i].numpy(),
                              "metric_full": full.numpy(),
                              "metric_empty": empty.numpy(), "kl": kl[i].numpy(),
                              "faithfulness": _per_example_f(metric[i], full, empty).numpy()})
        _, nodes = prune_mask(c.structure, mask if mask.dim() == 2 else mask.any(-1))
        results.append(EvaluationResult(
            faithfulness=normalized(m_c, m_full, m_empty), metric=m_c, metric_full=m_full, metric_empty=m_empty,
            kl=float(kl[i].mean()), kl_empty=float(kl_empty.mean()), n_edges=int(mask.sum()),
            n_nodes=int(nodes.sum()), n_examples=runner.n_examples, ablation=runner.ablation,
            metric_name=runner.metric.name, task=runner.task_name, split=runner.split, per_example=frame,
            n_neurons=c.n_neurons if level == "neuron" else None,
            n_distinct_edges=int(mask.any(-1).sum()) if mask.dim() == 3 else None))
    return results


# ---- curves ----------------------------------------------------------------------------------------------------
def area_under_curve(fractions: Sequence[float], values: Sequence[float], log_scale: bool = False) -> float:
    """Trapezoid rule over consecutive points, as MIB's ``evaluate_area_under_curve`` (x = fraction, or its log)."""
    xs = [math.log(x) for x in fractions] if log_scale else [float(x) for x in fractions]
    return float(sum((xs[i + 1] - xs[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(xs) - 1)))


def cpr(fractions: Sequence[float], faithfulness: Sequence[float], log_scale: bool = False) -> float:
    """Circuit performance ratio: area under f (higher is better)."""
    return area_under_curve(fractions, list(faithfulness), log_scale)


def cmd(fractions: Sequence[float], faithfulness: Sequence[float], log_scale: bool = False) -> float:
    """Circuit-model distance: area under |1 - f| (lower is better)."""
    return area_under_curve(fractions, [abs(1.0 - f) for f in faithfulness], log_scale)


@dataclass(frozen=True)
class FaithfulnessCurve:
    """f at a series of circuit sizes. ``cpr`` / ``cmd`` are MIB's areas; ``to_frame()`` one row per point."""

    fractions: tuple[float, ...]
    k: list[int]  # edges (or nodes) selected before pruning: int(fraction * n)
    n_edges: list[int]  # after pruning
    n_nodes: list[int]
    faithfulness: list[float]
    metric: list[float]
    kl: list[float]
    metric_full: float
    metric_empty: float
    absolute: bool
    ablation: str
    level: str
    selection: str
    metric_name: str
    task: str
    split: str
    n_examples: int
    log_scale: bool = False
    circuits: list[Graph] = field(default_factory=list, repr=False)
    per_example: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def cpr(self) -> float:
        """Area under f (trapezoid, linear fraction axis unless ``log_scale``); MIB's CPR for signed curves."""
        return cpr(self.fractions, self.faithfulness, self.log_scale)

    @property
    def cmd(self) -> float:
        """Area under |1 - f|; MIB's CMD for absolute-score curves."""
        return cmd(self.fractions, self.faithfulness, self.log_scale)

    @property
    def average(self) -> float:
        """Mean f over the points (MIB's ``average``)."""
        return float(sum(self.faithfulness) / len(self.faithfulness))

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame({"fraction": self.fractions, "k": self.k, "n_edges": self.n_edges,
                             "n_nodes": self.n_nodes, "faithfulness": self.faithfulness, "metric": self.metric,
                             "kl": self.kl})

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("absolute", "ablation", "level", "selection", "metric_name", "task",
                                             "split", "n_examples", "log_scale", "metric_full", "metric_empty",
                                             "cpr", "cmd", "average")}
        out["fractions"] = list(self.fractions)
        out.update({k: list(getattr(self, k)) for k in ("k", "n_edges", "n_nodes", "faithfulness", "metric", "kl")})
        return out

    def __repr__(self) -> str:
        return (f"FaithfulnessCurve({len(self.fractions)} points, cpr={self.cpr:.4f}, cmd={self.cmd:.4f}, "
                f"absolute={self.absolute}, ablation={self.ablation!r}, {self.n_examples} examples of {self.task!r})")


def _check_fractions(fractions: Iterable[float]) -> tuple[float, ...]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) < 2:
        raise ValueError(f"a curve needs at least two fractions, got {fr}")
    if any(not 0.0 <= f <= 1.0 for f in fr) or any(b <= a for a, b in zip(fr, fr[1:])):
        raise ValueError(f"fractions must increase strictly within [0, 1], got {fr}")
    return fr


def _select(scored: Graph, fraction: float, absolute: bool, level: str, selection: str) -> tuple[int, Graph]:
    with warnings.catch_warnings():  # small fractions often prune to nothing: expected on a curve, shown as 0 edges
        warnings.filterwarnings("ignore", message=".*none lies on a path from input to logits.*")
        if selection != "top_k":
            if level != "edge":
                raise ValueError(f"selection={selection!r} works on edges (level='edge')")
            k = fraction_to_k(scored.structure, fraction)
            return k, select(scored, selection, k, absolute)
        circuit = scored.top_fraction(fraction, absolute, level="neuron" if level == "neuron" else
                                      "node" if level == "node" else "edge")
        return int(circuit.metadata["selection"]["k"]), circuit


def _curves(model: CircuitModel | None, task: Task | None, scored: Graph, absolutes: Sequence[bool],
            fractions: Sequence[float], ablation: str, split: str, batch_size: int, level: str,
            selection, log_scale, circuits_per_pass, runner=None, memory_budget=None,
            examples_per_pass=None) -> list[FaithfulnessCurve]:
    import pandas as pd

    parse_selection(selection)  # a clear error before any run
    if runner is None:
        if model is None or task is None:
            raise ValueError("a curve needs the model and the task (or runner=, an engine that holds them)")
        scored = check_circuit(model, scored, "scored graph")
        runner = CircuitSession(model, task, ablation=ablation, split=split, batch_size=batch_size,
                                circuits_per_pass=circuits_per_pass, memory_budget=memory_budget,
                                examples_per_pass=examples_per_pass)
    else:
        scored = check_circuit(runner, scored, "scored graph")
    fractions = _check_fractions(fractions)
    if isinstance(runner, CircuitSession):
        check_positions(scored, runner)
    warn_if_uninformative(scored, level)
    picks = [[_select(scored, fr, absolute, level, selection) for fr in fractions] for absolute in absolutes]
    masks = torch.stack([c.in_graph.cpu() for row in picks for _, c in row])
    if level == "neuron":  # heads and MLP neurons kept, the cut neurons ablated (circuits.graph.levels)
        circuits = [c for row in picks for _, c in row]
        values = (run_circuits(runner, circuits, "neuron", kl=True) if isinstance(runner, CircuitSession)
                  else runner.neuron_circuit_metrics(*neuron_masks(circuits), kl=True))  # a pool: split over actors
    else:  # every point of every curve: one batched pass over the examples
        values = runner.circuit_metrics(masks, kl=True)
    metric, kl = values.metric, values.kl
    assert kl is not None
    full, empty = runner.metric_full, runner.metric_empty
    m_full, m_empty = float(full.mean()), float(empty.mean())
    if undefined(m_full, m_empty):
        warn_undefined(m_full, m_empty, runner.task_name, runner.ablation, stacklevel=4)
    curves = []
    for a, (absolute, row) in enumerate(zip(absolutes, picks)):
        rows = slice(a * len(fractions), (a + 1) * len(fractions))
        m, d = metric[rows], kl[rows]
        frames = [pd.DataFrame({"fraction": fr, "example": range(runner.n_examples), "metric": m[i].numpy(),
                                "kl": d[i].numpy()}) for i, fr in enumerate(fractions)]
        curves.append(FaithfulnessCurve(
            fractions=fractions, k=[k for k, _ in row], n_edges=[c.n_edges for _, c in row],
            n_nodes=[c.n_nodes for _, c in row], faithfulness=[normalized(float(x.mean()), m_full, m_empty) for x in m],
            metric=[float(x.mean()) for x in m], kl=[float(x.mean()) for x in d], metric_full=m_full,
            metric_empty=m_empty, absolute=absolute, ablation=runner.ablation, level=level, selection=selection,
            metric_name=runner.metric.name, task=runner.task_name, split=runner.split, n_examples=runner.n_examples,
            log_scale=log_scale, circuits=[c for _, c in row], per_example=pd.concat(frames, ignore_index=True)))
    return curves


def faithfulness_curve(model: CircuitModel | None, task: Task | None, scored: Graph, *,
                       fractions: Sequence[float] = MIB_FRACTIONS,
                       absolute: bool = False, ablation: str = "corrupted", split: str = "validation",
                       batch_size: int = 16, level: str = "edge", selection: str = "top_k", log_scale: bool = False,
                       circuits_per_pass: int | None = None, runner=None, memory_budget: int | str | None = None,
                       examples_per_pass: int | None = None) -> FaithfulnessCurve:
    """f of the top ``fraction`` of ``scored``'s edges, at each of ``fractions`` (MIB's by default).

    Every point is a pruned selection (``scored.top_fraction(fraction, absolute)``; ``selection="greedy"`` for
    EAP-IG's greedy construction, ``"sign_consistent[:0.9]"`` (bootstrapped sign agreement first, see
    :meth:`Graph.sign_consistent`) or ``"ratio[:0.5]"`` (:meth:`Graph.ratio`), ``level="node"`` for node scores).
    All points are run together: per batch of examples one patched forward evaluates every circuit (chunked over
    circuits only when memory requires), and the full and empty circuits come from cached runs. ``absolute=False``
    ranks raw scores (MIB's CPR runs), ``True`` ranks ``|score|`` (MIB's CMD runs). ``log_scale`` integrates over
    log(fraction) instead (older MIB scripts); the default is the linear axis of MIB's released evaluation.
    ``runner``: evaluate the circuits with this engine instead of a new :class:`~circuits.session.CircuitSession`
    (e.g. a Ray :class:`~circuits.sweeps.actors.EvaluatorPool`; ``model``, ``task``, ``ablation``, ``split`` are
    then its). ``memory_budget`` / ``examples_per_pass``: as :func:`evaluate` (passes chunked over examples and
    circuits; the same points).

    >>> curve = faithfulness_curve(model, task, scored)    # doctest: +SKIP
    >>> curve.cpr, curve.cmd, curve.to_frame()             # doctest: +SKIP
    """
    return _curves(model, task, scored, [bool(absolute)], fractions, ablation, split, batch_size, level, selection,
                   log_scale, circuits_per_pass, runner, memory_budget, examples_per_pass)[0]


def mib_scores(model: CircuitModel | None, task: Task | None, scored: Graph, **options: Any) -> dict:
    """MIB's two numbers for a scored graph: CPR of the signed-score curve and CMD of the absolute-score curve.

    Both curves (20 circuits) run in the same batched passes. Returns ``{"cpr", "cmd", "signed", "absolute"}``
    (the last two are :class:`FaithfulnessCurve`); ``options`` as :func:`faithfulness_curve` (not ``absolute``).
    """
    if "absolute" in options:
        raise TypeError("mib_scores runs both signed and absolute curves; do not pass absolute=")
    args: dict[str, Any] = {"fractions": MIB_FRACTIONS, "ablation": "corrupted", "split": "validation",
                            "batch_size": 16,
            "level": "edge", "selection": "top_k", "log_scale": False, "circuits_per_pass": None, "runner": None,
            "memory_budget": None, "examples_per_pass": None}
    unknown = set(options) - set(args)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; use {', '.join(args)}")
    args.update(options)
    signed, absolute = _curves(model, task, scored, [False, True], **args)
    return {"cpr": signed.cpr, "cmd": absolute.cmd, "signed": signed, "absolute": absolute}

