"""``CircuitSession``: a model, the examples of one task split, an ablation and a metric.

Every algorithm that runs circuits on a task (discovery methods, faithfulness, curves, minimal circuits, the Ray
pool) runs them through one session, so what they share is decided once:

* the ablation (one validation rule and one set of aliases) and the reference set of mean ablation;
* which examples run (the split) and how they are batched (:mod:`circuits.session.batches`);
* what is the same for every circuit, computed once per batch: the ablated sender outputs, the full model's
  logits at the read positions, and the baselines M(full) and M(empty) (under ``corrupted`` the empty circuit
  *is* the corrupted run, so it costs one plain forward);
* the objective of a batch of C circuits, ``[C, n_examples]``: the metric with MIB's sign (higher = the model
  does the task more like itself: a task metric as is, a divergence negated);
* attribution probing: the backward of the objective through a gradient probe.

Memory: a patched pass of C circuits on b examples holds about C * b rows of activations; passes are sized so
they fit in :attr:`CircuitSession.memory_budget` (and, on CPU, at most ``CPU_ROWS_PER_PASS`` rows, beyond which
a memory-bound pass only gets slower per row). Under a budget (given, or on CUDA the free memory's fraction)
:meth:`CircuitSession.fit` also chunks what a pass holds, before any forward, by the estimate of
:mod:`circuits.session.memory`:

* examples: each batch of ``batch_size`` runs as sub-batches of ``examples_per_pass`` (attribution scores are
  sums over examples and metrics are per example, so sub-batches give the same numbers; a training step over a
  batch accumulates the gradients of its sub-batches, :meth:`CircuitSession.trained_objective`, so it takes the
  same step);
* stacked EAP-IG steps (``steps_per_pass``) and circuits per pass (both sums / independent rows);
* positions, where the computation is position-wise: the attribution backward's per-head input gradients and
  their score products (``position_chunk`` positions at a time, :class:`~circuits.interventions.probe.GradientProbe`).
  Not chunked over positions: the forward (attention needs every key position), the autograd activations it
  saves, the sender buffers ``[S, b, P, d]``, the ablation and mean buffers and the readout ``[b, K, V]``: those
  shrink with the examples per pass (and K, the read positions, is a task's few answer positions).

A run that does not fit even at 1 example, 1 step or circuit and a position chunk of 1 raises
:class:`MemoryBudgetError` with its estimate before it starts. Without a budget on CPU nothing is chunked (today's
plan: ``batch_size`` examples per pass).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Callable, Iterable, TypeVar

import torch
from torch import Tensor

from circuits.errors import CircuitsError
from circuits.interventions.ablation import Ablated, AblationError, build_ablation, check_ablation, mean_outputs
from circuits.interventions.masked import HeldCircuit, IncrementalResidual, MaskedResidual, PositionMaskedResidual
from circuits.interventions.residual import ResidualStrategy
from circuits.session.batches import SessionBatch, plan_batches
from circuits.session.cache import BatchCache
from circuits.session.memory import ModelWidths, estimate_peak, format_bytes, parse_memory
from circuits.session.normalization import undefined
from circuits.tasks.metrics import Metric

if TYPE_CHECKING:  # pragma: no cover
    from circuits.interventions.probe import GradientProbe
    from circuits.models.circuit_model import CircuitModel
    from circuits.tasks.task import Task

SPLITS = ("validation", "train", "all")
CPU_MEMORY_BUDGET = 2 * 2**30  # bytes of activations one patched pass may use on CPU
# On CPU a patched pass is memory-bound: beyond a few dozen rows (circuits x examples) per pass the buffers leave
# the caches and each row gets slower (GPT-2 small, 1 thread: 16-48 rows per pass ~10-20% faster than 128).
CPU_ROWS_PER_PASS = 48
CUDA_MEMORY_FRACTION = 0.5  # of the free GPU memory

T = TypeVar("T")

#: Builds the residual strategy that runs ``masks [c, S, R]`` on one batch (default: :class:`MaskedResidual`).
StrategyFactory = Callable[[SessionBatch, Tensor], ResidualStrategy]


class SessionError(CircuitsError, ValueError):
    """A circuit run cannot start as asked: the message names the problem and the fix."""


class PositionAlignmentError(SessionError):
    """Position-aware circuits asked of a task whose pairs do not all have one length (so position p is not one
    place in every prompt): the message names the lengths and the option that aligns them."""


class MemoryBudgetError(SessionError):
    """A run that cannot fit its memory budget even at the smallest chunks: raised before any forward, with the
    estimate, the budget and the settings to change."""


def resolve_split(task: Task, split: str) -> tuple[Task, Task, str]:
    """``(examples to run, reference set for mean ablation, split name)``.

    ``validation`` runs the task's validation part with means over its training part (so discovery, means and
    evaluation never see the same examples twice); ``train`` the training part, means over it; ``all`` every
    example, means over all of them.
    """
    key = str(split).strip().lower()
    if key not in SPLITS:
        raise SessionError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if key == "all":
        return task, task, "all"
    if len(task) < 2:
        raise SessionError(f"task {task.name!r} has {len(task)} example(s): too few to split into train and "
                           "validation; build it with more examples (n=...) or pass split='all'")
    train, validation = task.split()
    data = validation if key == "validation" else train
    if len(data) == 0:
        raise SessionError(f"the {key} split of task {task.name!r} is empty; use more examples or split='all'")
    return data, train, key


def check_task_fits_model(task: Task, model: CircuitModel) -> None:
    """Refuse a task built with another tokenizer than the model's, before any compute is spent."""
    vocab = model.spec.token_embed.shape[0]
    top = int(max(task.clean.max(), task.corrupted.max()))
    if top >= vocab:
        raise SessionError(
            f"task {task.name!r} uses token id {top} but model {model.name!r} has {vocab} embeddings: the task was "
            "built with another tokenizer. Build it for this model: circuits.load_task(NAME, model, ...)")
    mt, tt = getattr(model, "tokenizer", None), getattr(task, "tokenizer", None)
    if mt is None or tt is None or mt is tt:
        return
    probe = " When Mary and John went to the store, 1732 years"
    if len(mt) != len(tt) or mt(probe)["input_ids"] != tt(probe)["input_ids"]:
        raise SessionError(
            f"task {task.name!r} was tokenized with a different tokenizer ({type(tt).__name__}, {len(tt)} tokens) "
            f"than model {model.name!r} uses ({type(mt).__name__}, {len(mt)} tokens). "
            "Build the task for this model: circuits.load_task(NAME, model, ...)")


@dataclass(frozen=True)
class PassReads:
    """What a fitted plan's patched passes read besides the plain pass (:func:`estimate_peak`'s arguments)."""

    by_position: bool = False
    neurons: int = 0
    held: int = 0

    def widest(self, other: PassReads) -> PassReads:
        return PassReads(self.by_position or other.by_position, max(self.neurons, other.neurons),
                         max(self.held, other.held))


@dataclass(frozen=True)
class Baselines:
    """Per example (float64, CPU, split order): the metric of the full model and of the empty circuit, and the
    empty circuit's KL divergence from the full model (the full model's is 0)."""

    metric_full: Tensor  # [n]
    metric_empty: Tensor  # [n]
    kl_empty: Tensor  # [n]


@dataclass(frozen=True)
class CircuitMetrics:
    """What a batch of C circuits scores on the session's examples (float64, CPU, split order)."""

    metric: Tensor  # [C, n]
    kl: Tensor | None  # [C, n] KL(full || circuit) at the read positions, when asked for


class CircuitSession:
    """Run circuits of ``model`` on the ``split`` of ``task`` under one ablation and metric (module docstring).

    ``metric``: the task's own by default (``task.base_metric``); e.g. ``"kl"`` for KL to the full model.
    ``reference``: the examples whose clean runs define mean ablation (default: see :func:`resolve_split`).
    ``circuits_per_pass`` / ``memory_budget`` (bytes, or a size such as ``"4GB"``): how many circuits one patched
    forward runs (default: as many as the budget allows); under a budget, passes are also chunked over examples and
    positions (:meth:`fit`). ``examples_per_pass`` / ``position_chunk``: explicit chunk sizes (examples of a batch
    per pass; positions per chunk of the attribution backward). ``show_progress``: progress bars of long work
    (None: when stderr is a terminal). ``extras`` collects what a discovery method reports besides its scores.
    ``grouped_kv``: run the model with k/v receivers per key/value group (True) or per query head (False, MIB's);
    None: as the model is (:meth:`CircuitModel.with_grouped_kv`).
    """

    def __init__(self, model: CircuitModel, task: Task, *, ablation: str = "corrupted", split: str = "all",
                 reference: Task | None = None, metric: Metric | str | None = None, batch_size: int = 16,
                 circuits_per_pass: int | None = None, memory_budget: int | str | None = None,
                 examples_per_pass: int | None = None, position_chunk: int | None = None,
                 show_progress: bool | None = None, grouped_kv: bool | None = None):
        try:
            self.ablation: str = check_ablation(ablation)
        except AblationError as err:
            raise SessionError(str(err)) from None
        if int(batch_size) < 1:
            raise SessionError(f"batch_size must be positive, got {batch_size}")
        if circuits_per_pass is not None and int(circuits_per_pass) < 1:
            raise SessionError(f"circuits_per_pass must be at least 1 (or None), got {circuits_per_pass}")
        for name, value in (("examples_per_pass", examples_per_pass), ("position_chunk", position_chunk)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise SessionError(f"{name} must be an integer >= 1 (or None: from the memory budget), got {value!r}")
        if memory_budget is not None:
            try:
                memory_budget = parse_memory(memory_budget)
            except ValueError as err:
                raise MemoryBudgetError(str(err)) from None
        self.model = model if grouped_kv is None else model.with_grouped_kv(grouped_kv)
        self.task_name: str = task.name
        self.data, default_reference, self.split = resolve_split(task, split)
        self.reference: Task = default_reference if reference is None else reference
        name = task.base_metric.name if metric is None else metric.name if isinstance(metric, Metric) else metric
        self.metric = Metric(str(name))
        self.batch_size = int(batch_size)
        self.circuits_per_pass = circuits_per_pass
        self.memory_budget = memory_budget
        self.examples_per_pass = examples_per_pass  # None: the whole batch, or what the budget allows (fit)
        self.position_chunk = position_chunk  # None: every position at once, or what the budget allows (fit)
        self.steps_per_pass: int | None = None  # stacked attribution steps the budget allows (fit), None: any
        self._explicit = {"examples": examples_per_pass, "positions": position_chunk}  # kept as given by fit
        self._run_peak = 0  # the estimate of the largest pass fitted (bytes)
        self._fitted_budget: int | None = None
        self.show_progress = show_progress
        self.extras: dict = {}
        # One worker's part of a run spread over several (circuits.sweeps.actors): the positions, in the method's
        # work list (its batches, exact's passes), of the units this process runs; None: all of them.
        self.share: tuple[int, ...] | None = None
        check_task_fits_model(self.data, model)
        self.batches: list[SessionBatch] = plan_batches(self.data, self.batch_size, model.device, examples_per_pass)
        self.forwards = 0  # patched forwards run (benchmarks count them)
        self._cache = BatchCache(self._cache_room)  # batches' ablations, kept while they fit beside the passes
        self._full: dict[int, Tensor] = {}  # [b, K, V] per batch: the full model's logits at the read positions
        self._held: tuple[int, HeldCircuit] | None = None  # the latest batch's held clean run (one at a time)
        # what the fitted passes read besides the plain pass (the largest of each: chunks only shrink)
        self._fitted_reads = PassReads()
        self._resident = 0  # bytes a fitted run holds for every example through the run (ACDC's fast search)

    @property
    def n_examples(self) -> int:
        return len(self.data)

    @property
    def structure(self):
        return self.model.structure

    @property
    def device(self) -> torch.device:
        return self.model.device

    @cached_property
    def n_positions(self) -> int:
        """``L``: the one token length of every pair, the position axis of position-aware scores and masks
        (``[S, R, L]``, ``[C, S, R, L]``). Each batch is cut after its own last read position, so it reads and
        writes ``[..., :P_b]`` of that axis; later positions cannot change its read logits (causal models).
        Raises :class:`PositionAlignmentError` when the pairs differ in length."""
        lengths = self.data.as_batch().lengths
        found = sorted({int(n) for n in lengths.unique().tolist()})
        if len(found) != 1:
            shown = ", ".join(map(str, found[:8])) + (", ..." if len(found) > 8 else "")
            raise PositionAlignmentError(
                f"position-aware circuits need every pair of task {self.task_name!r} to have one length, so that "
                f"position p is the same slot of every prompt; its pairs have {len(found)} lengths ({shown} "
                "tokens). Fix: keep the pairs of one length with task.aligned() (CLI: --align-positions), or use "
                "a task whose prompts share one template length")
        return found[0]

    @property
    def batch_groups(self) -> list[list[SessionBatch]]:
        """The batches of ``batch_size`` examples, each as the passes it runs as (one, or the sub-batches a memory
        budget cut it into): what a method that takes one training step per batch steps over."""
        groups: dict[int, list[SessionBatch]] = {}
        for b in self.batches:
            groups.setdefault(b.group, []).append(b)
        return list(groups.values())

    def position_masks(self, masks: Tensor, batch: SessionBatch) -> Tensor:
        """``masks [C, S, R, L]`` cut to ``batch``'s positions ``[C, S, R, P_b]`` (a view)."""
        return masks[..., :batch.clean.shape[1]]

    def in_share(self, units: Iterable[T]) -> list[T]:
        """The units of a method's fixed work list that this process runs: all of them, or those at the positions
        in :attr:`share` when one run is spread over workers (their outputs then add up to the whole run's)."""
        units = list(units)
        return units if self.share is None else [units[i] for i in self.share]

    # ---- what is the same for every circuit --------------------------------------------------------------------
    @cached_property
    def _mean(self) -> Tensor:  # [S, 1, P, d]: per-position means over the reference set, to the longest batch
        ref = self.reference.as_batch()
        P = max(int(b.clean.shape[1]) for b in self.batches)
        return mean_outputs(self.model, ref.clean, ref.attention_mask, n_positions=P,
                            batch_size=min(self.batch_size, self.examples_per_pass or self.batch_size))

    def ablated(self, batch: SessionBatch) -> Ablated:
        """What cut edges carry on ``batch`` (kept while it fits beside the passes: :meth:`cached`)."""
        if self.ablation == "mean":
            return Ablated(self._mean[:, :, :batch.clean.shape[1]], "mean")
        return self.cached("ablated", batch, lambda: build_ablation(
            self.model, self.ablation, batch.clean, batch.attention_mask, corrupted_ids=batch.corrupted))

    def cached(self, kind: str, batch: SessionBatch, make: Callable[[], T]) -> T:
        """``make()``'s value for ``batch`` (a ``kind`` of per-batch tensors), kept for the next pass while the kept
        values fit the room the memory budget leaves beside the passes (:mod:`circuits.session.cache`)."""
        return self._cache.get(kind, batch.number, make)

    def _cache_room(self) -> int:
        """Bytes the kept values may take: half the budget before a pass is fitted, then what the largest fitted
        pass and the run's resident tensors leave (on CPU without a budget: of ``CPU_MEMORY_BUDGET``)."""
        budget = self._sizing_budget()
        return budget // 2 if not self._run_peak else budget - self._run_peak - self._resident

    def full_logits(self, batch: SessionBatch) -> Tensor:
        """``[b, K, V]``: the full model's logits at the read positions (cached)."""
        if batch.number not in self._full:
            with torch.no_grad():
                self._full[batch.number] = self.model.logits(batch.clean, batch.attention_mask,
                                                             logit_positions=batch.positions)
        return self._full[batch.number]

    def held_full(self, batch: SessionBatch) -> HeldCircuit:
        """Every sender's output in the full model on ``batch`` (one recorded clean run): what incremental runs
        (:meth:`incremental`) recompute from. The latest batch's is kept, one batch at a time (``[S, b, P, d]``, as
        large as its corrupted run): methods that patch incrementally finish a batch before the next
        (:func:`~circuits.discovery.exact.single_cut_effects`), and a pass's estimate counts it (``held``)."""
        if self._held is None or self._held[0] != batch.number:
            self._held = None  # the previous batch's outputs are freed before this batch's run
            with torch.no_grad():
                run = self.model.run(batch.clean, batch.attention_mask, record=True, logit_positions=batch.positions)
            assert run.sender_outputs is not None
            self._held = (batch.number, HeldCircuit.of_model(self.structure, run.sender_outputs))
        return self._held[1]

    def incremental(self, batch: SessionBatch, masks: Tensor) -> IncrementalResidual:
        """A :data:`StrategyFactory` that runs ``masks [c, S, R]`` recomputing only the nodes whose inputs differ
        from the full model's, and what they feed (:class:`IncrementalResidual` over :meth:`held_full`)."""
        return IncrementalResidual(masks, self.ablated(batch), self.held_full(batch))

    # ---- metrics -----------------------------------------------------------------------------------------------
    def metric_values(self, logits: Tensor, batch: SessionBatch, metric: Metric | None = None) -> Tensor:
        """``[b]``, or ``[C, b]`` for logits ``[C, b, K, V]``: the metric of logits read at the batch's positions."""
        metric = self.metric if metric is None else metric
        full = self.full_logits(batch) if metric.needs_full_logits else None
        if logits.dim() == 3:
            return metric(logits, batch.readout, full)
        C = logits.shape[0]
        if full is not None:
            full = full[None].expand(C, *full.shape).flatten(0, 1)
        return metric(logits.flatten(0, 1), batch.repeated(C), full).view(C, -1)

    def objective(self, logits: Tensor, batch: SessionBatch, metric: Metric | None = None) -> Tensor:
        """:meth:`metric_values` with MIB's sign: higher = more like the full model (a divergence is negated)."""
        metric = self.metric if metric is None else metric
        value = self.metric_values(logits, batch, metric)
        return value if metric.higher_is_better else -value

    # ---- baselines -----------------------------------------------------------------------------------------------
    @cached_property
    def baselines(self) -> Baselines:
        """M(full), M(empty) and KL(full || empty) per example, for the session's metric."""
        kl = Metric("kl")
        full_m, empty_m, empty_kl = (torch.empty(self.n_examples, dtype=torch.float64) for _ in range(3))
        S, R = self.structure.n_senders, self.structure.n_receivers
        with torch.no_grad():
            for b in self.batches:
                if self.ablation == "corrupted":
                    run = self.model.run(b.corrupted, b.attention_mask, record=True, logit_positions=b.positions)
                    assert run.sender_outputs is not None
                    self._cache.offer("ablated", b.number, Ablated(run.sender_outputs, "corrupted"))
                    empty = run.logits
                    del run
                else:
                    empty = self.model.patched_logits(b.clean, torch.zeros(S, R), self.ablated(b),
                                                      b.attention_mask, logit_positions=b.positions)
                    self.forwards += 1
                full_m[b.index] = self.metric_values(self.full_logits(b), b).double().cpu()
                empty_m[b.index] = self.metric_values(empty, b).double().cpu()
                empty_kl[b.index] = self.metric_values(empty, b, kl).double().cpu()
        return Baselines(full_m, empty_m, empty_kl)

    @property
    def metric_full(self) -> Tensor:
        return self.baselines.metric_full

    @property
    def objective_full(self) -> Tensor:
        """``[n]`` (float64): the full model's objective per example, the metric with MIB's sign (:meth:`objective`):
        what a cut's effect is measured from."""
        return self.metric_full if self.metric.higher_is_better else -self.metric_full

    @property
    def metric_empty(self) -> Tensor:
        return self.baselines.metric_empty

    @property
    def kl_empty(self) -> Tensor:
        return self.baselines.kl_empty

    def full_and_empty(self) -> tuple[float, float]:
        """Mean objective of the full model and of the empty circuit."""
        sign = 1.0 if self.metric.higher_is_better else -1.0
        return sign * float(self.metric_full.mean()), sign * float(self.metric_empty.mean())

    def check_signal(self) -> tuple[float, float]:
        """:meth:`full_and_empty`, refused when they are equal (there is nothing to attribute)."""
        full, empty = self.full_and_empty()
        if undefined(full, empty):
            raise SessionError(
                f"the {self.metric.name} metric is the same for the full model ({full:.4g}) and with every edge "
                f"ablated ({empty:.4g}) on this data: there is nothing to attribute. Check that the corrupted "
                "prompts really change the answer, or use another ablation or metric.")
        return full, empty

    # ---- running circuits ----------------------------------------------------------------------------------------
    def run(self, batch: SessionBatch, residual: ResidualStrategy) -> Tensor:
        """Logits at the read positions of one forward with ``residual`` (``[C, b, K, V]`` for C circuits)."""
        return self.model.run(batch.clean, batch.attention_mask, residual=residual,
                              logit_positions=batch.positions).logits

    def backward_objective(self, batch: SessionBatch, probe: GradientProbe, repeats: int = 1) -> None:
        """Attribution: one forward through ``probe`` and the backward of the summed objective, whose receiver
        gradients the probe turns into scores. ``repeats``: the run stacks that many copies of the batch. The
        probe's backward rule, if any, runs on the model's spec rewritten by the rule."""
        ids, mask, at = batch.clean, batch.attention_mask, batch.positions
        if repeats > 1:
            ids, mask, at = ids.repeat(repeats, 1), mask.repeat(repeats, 1), at.repeat(repeats, 1)
        spec = None if probe.rule is None else probe.rule.apply(self.model.spec)  # a backward rule's spec
        with torch.enable_grad():
            logits = self.model.run(ids, mask, residual=probe, logit_positions=at, spec=spec).logits  # [T*b, K, V]
            if repeats > 1:
                logits = logits.view(repeats, len(batch), *logits.shape[1:])
            self.objective(logits, batch).sum().backward()

    def trained_objective(self, passes: list[SessionBatch], masks: Tensor, metric: Metric | None = None) -> Tensor:
        """The mean objective of the circuit ``masks [S, R]`` (floats that take gradients) over the examples of
        ``passes`` (one of :attr:`batch_groups`), as a scalar whose gradient into ``masks`` is that of the whole
        batch. Each pass is differentiated as soon as it has run, so a batch that a memory budget cut into
        sub-batches holds one sub-batch's activations at a time (:meth:`fit` with ``"trained"``) and a training
        step on it sees the same value and gradient as on the uncut batch. Call ``backward`` on what depends on
        the result, as on any loss."""
        n = sum(len(b) for b in passes)
        grad_to = masks.detach().requires_grad_(True)  # [S, R]: the passes' gradients accumulate here
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        with torch.enable_grad():
            for b in passes:
                value = self.objective(self.run(b, MaskedResidual(grad_to, self.ablated(b))), b, metric).sum() / n
                value.backward()
                total = total + value.detach().float()
        assert grad_to.grad is not None, "the objective depends on the masks"
        # the value of `total` and the gradient `grad_to.grad` into `masks` (masks - masks.detach() is 0)
        return total + ((masks - masks.detach()) * grad_to.grad.to(masks.dtype)).sum()

    def circuit_metrics(self, masks: Tensor, *, metric: Metric | None = None, kl: bool = False,
                        circuits_per_pass: int | None = None, strategy: StrategyFactory | None = None
                        ) -> CircuitMetrics:
        """The metric (and, with ``kl``, the KL to the full model) of every circuit in ``masks [C, S, R]``
        (bool, or floats in [0, 1]) on every example. Position-aware circuits: ``masks [C, S, R, L]`` with
        ``L = n_positions``, run by :class:`PositionMaskedResidual` (``strategy`` then gets each batch's
        ``[c, S, R, P_b]``).

        Circuits equal to the full or the empty graph are not run (the baselines are theirs), identical masks run
        once, and each batch runs its circuits in as few patched passes as memory allows (``circuits_per_pass``
        overrides). ``strategy`` builds the residual strategy of a pass (default: :class:`MaskedResidual`).
        """
        metric = self.metric if metric is None else metric
        if masks.dim() == 2:
            masks = masks[None]
        S, R = self.structure.n_senders, self.structure.n_receivers
        if masks.dim() == 3 and tuple(masks.shape[:2]) == (S, R) and masks.shape[1:] != (S, R):
            masks = masks[None]  # one position-aware circuit [S, R, L]
        by_position = masks.dim() == 4
        if by_position and tuple(masks.shape[1:]) != (S, R, self.n_positions):
            raise SessionError(f"position-aware masks must be [C, {S}, {R}, {self.n_positions}] for this model and "
                               f"task ({self.n_positions} positions per pair), got {tuple(masks.shape)}")
        if not by_position and tuple(masks.shape[1:]) != (S, R):
            raise SessionError(f"masks must be [C, {S}, {R}] (or [C, {S}, {R}, L] position-aware) for this model, "
                               f"got {tuple(masks.shape)}")
        if by_position and masks.requires_grad:
            raise SessionError("position-aware masks run without gradients; detach them (position-aware "
                               "attribution scores positions through GradientProbe instead)")
        self.fit("patched", by_position=by_position)  # before any forward: chunk the examples, or refuse
        kinds, unique = self._dedupe(masks.detach().cpu())
        C = len(kinds)
        out_m = torch.empty(C, self.n_examples, dtype=torch.float64)
        out_kl = torch.empty(C, self.n_examples, dtype=torch.float64) if kl else None
        known = metric == self.metric or metric.name == "kl"
        if not known and any(k != "run" for k, _ in kinds):  # no baseline for this metric: run those too
            kinds, unique = [("run", j) for j in range(C)], list(masks.detach().cpu().float())
        for b in self.batches:
            u_m, u_kl = self._batch_metrics(b, unique, metric, kl, circuits_per_pass, strategy)
            for c, (kind, j) in enumerate(kinds):
                if kind == "run":
                    out_m[c, b.index] = u_m[j]
                    if out_kl is not None:
                        out_kl[c, b.index] = u_kl[j]
                    continue
                empty = kind == "empty"
                if metric.name == "kl" and metric != self.metric:
                    out_m[c, b.index] = self.kl_empty[b.index] if empty else 0.0
                else:
                    out_m[c, b.index] = (self.metric_empty if empty else self.metric_full)[b.index]
                if out_kl is not None:
                    out_kl[c, b.index] = self.kl_empty[b.index] if empty else 0.0
        return CircuitMetrics(out_m, out_kl)

    def _batch_metrics(self, b: SessionBatch, unique: list[Tensor], metric: Metric, kl: bool,
                       circuits_per_pass: int | None, strategy: StrategyFactory | None) -> tuple[Tensor, Tensor]:
        """``(metric, KL)`` ``[U, b]`` (float64, CPU) of the circuits ``unique`` (each ``[S, R]`` or ``[S, R, L]``)
        on batch ``b``, in as few patched passes as memory allows (``circuits_per_pass``: as asked, a maximum
        under a budget)."""
        u_m = torch.empty(len(unique), len(b), dtype=torch.float64)
        u_kl = torch.empty(len(unique), len(b), dtype=torch.float64)
        if not unique:
            return u_m, u_kl
        by_position = unique[0].dim() == 3
        per_pass = self.circuits_per_pass_for(b, circuits_per_pass, by_position)
        with torch.no_grad():
            for start in range(0, len(unique), per_pass):
                chunk = torch.stack(unique[start:start + per_pass]).to(self.device, self.model.dtype)
                if by_position:
                    chunk = self.position_masks(chunk, b)
                default = PositionMaskedResidual if by_position else MaskedResidual
                residual = default(chunk, self.ablated(b)) if strategy is None else strategy(b, chunk)
                logits = self.run(b, residual)  # [c, b, K, V]
                self.forwards += 1
                rows = slice(start, start + len(chunk))
                u_m[rows] = self.metric_values(logits, b, metric).double().cpu()
                if kl:  # the metric itself when it is the KL
                    u_kl[rows] = u_m[rows] if metric.name == "kl" else \
                        self.metric_values(logits, b, Metric("kl")).double().cpu()
        return u_m, u_kl

    def batch_objective(self, batch: SessionBatch, masks: Tensor, *, circuits_per_pass: int | None = None,
                        strategy: StrategyFactory | None = None) -> Tensor:
        """``[C, b]`` (float64): the objective of every circuit ``masks [C, S, R]`` (or ``[C, S, R, L]``) on one
        batch, every circuit run (none is taken from the baselines). For methods that finish a batch before the
        next, so that what they hold of it (:meth:`held_full`) is held once; fit the session first."""
        edges = self.structure.edge_mask.float()  # entries off the graph are never read: zero, as circuit_metrics
        masks = masks.detach().cpu().float() * (edges[..., None] if masks.dim() == 4 else edges)
        values, _ = self._batch_metrics(batch, list(masks), self.metric, False, circuits_per_pass, strategy)
        return values if self.metric.higher_is_better else -values

    def objective_of(self, masks: Tensor, *, metric: Metric | None = None, circuits_per_pass: int | None = None,
                     strategy: StrategyFactory | None = None) -> Tensor:
        """``[C, n]`` (float64): the objective (metric with MIB's sign) of every circuit on every example."""
        metric = self.metric if metric is None else metric
        values = self.circuit_metrics(masks, metric=metric, circuits_per_pass=circuits_per_pass,
                                      strategy=strategy).metric
        return values if metric.higher_is_better else -values

    def _dedupe(self, masks: Tensor) -> tuple[list[tuple[str, int]], list[Tensor]]:
        """Per circuit ``("full" | "empty" | "run", index into the unique masks to run)``."""
        edges = self.structure.edge_mask
        if masks.dim() == 4:  # position-aware: an edge is every one of its positions
            edges = edges[..., None].expand(*edges.shape, masks.shape[-1])
        kinds: list[tuple[str, int]] = []
        unique: list[Tensor] = []
        seen: dict[bytes, int] = {}
        for m in masks:
            m = m.float() * edges
            if bool((m[edges] == 1).all()):
                kinds.append(("full", -1))
            elif not bool(m.any()):
                kinds.append(("empty", -1))
            else:
                key = hashlib.blake2b(m.numpy().tobytes(), digest_size=16).digest()
                if key not in seen:
                    seen[key] = len(unique)
                    unique.append(m)
                kinds.append(("run", seen[key]))
        return kinds, unique

    # ---- memory --------------------------------------------------------------------------------------------------
    @property
    def memory_budget_bytes(self) -> int:
        if self.memory_budget is not None:
            return int(self.memory_budget)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free * CUDA_MEMORY_FRACTION)
        return CPU_MEMORY_BUDGET

    def _fit_budget(self) -> int | None:
        """The budget passes are chunked to: given, or on CUDA the free memory's fraction; None on CPU without one
        (nothing is chunked: today's plan)."""
        if self.memory_budget is None and self.device.type != "cuda":
            return None
        if self._fitted_budget is None:  # read once: the free memory shrinks as the session's caches fill
            self._fitted_budget = self.memory_budget_bytes
        return self._fitted_budget

    def _sizing_budget(self) -> int:
        """The bytes passes and kept values are sized to: the fitted budget, or on CPU without one
        ``CPU_MEMORY_BUDGET`` (which caps a pass's circuits there, and what is kept)."""
        budget = self._fit_budget()
        return CPU_MEMORY_BUDGET if budget is None else budget

    def fit(self, kind: str, *, steps: int = 1, sender_copies: int = 1, fixed_steps: bool = False,
            by_position: bool = False, neurons: int = 0, held: int = 0, resident_held: int = 0,
            resident_fix: str = "") -> int:
        """Chunk this session's passes of ``kind`` (:mod:`circuits.session.memory`) to the memory budget, before
        any forward: the most examples per pass, then the most stacked ``steps`` (at most ``steps``; exactly them
        with ``fixed_steps``), then the longest position chunk whose estimate fits. Explicit ``examples_per_pass``
        / ``position_chunk`` are kept as given. Returns the stacked steps per pass (``steps`` when there is no
        budget); raises :class:`MemoryBudgetError` naming the estimate when even the smallest chunks do not fit.
        Chunks only shrink, so a session fitted for several kinds runs each within the budget.

        What the passes read besides the plain pass (:func:`~circuits.session.memory.estimate_peak`):
        ``by_position`` (position-aware masks or scores), ``neurons`` (neuron masks, ablations and differences),
        ``held`` (the full model's outputs of the batch, for incremental patching). ``resident_held``: copies of
        the full model's sender outputs the run holds for *every* example throughout (ACDC's fast search), which
        no chunking shrinks: the passes fit beside them (``resident_fix``: the method's way to hold none)."""
        self._fitted_reads = self._fitted_reads.widest(PassReads(by_position, neurons, held))
        budget = self._fit_budget()
        if budget is None:
            return steps
        widths = ModelWidths.of(self.model)
        resident = int(resident_held) * sum(
            self.structure.n_senders * len(b) * int(b.clean.shape[1]) * widths.d_model for b in self.batches
        ) * widths.itemsize
        P = max(int(b.clean.shape[1]) for b in self.batches)
        K = max(int(b.positions.shape[1]) for b in self.batches)
        largest = max(len(b) for b in self.batches)  # chunks fitted before only shrink
        given_e, given_p = self._explicit["examples"], self._explicit["positions"]
        examples = [given_e] if given_e else list(range(largest, 0, -1))
        step_options = [steps] if fixed_steps else list(range(steps, 0, -1))
        chunks: list[int | None] = [None]
        if kind == "attribution":
            longest = min(P, self.position_chunk or P)
            chunks = [given_p] if given_p else \
                sorted({max(1, longest // 2**i) for i in range(longest.bit_length() + 1)}, reverse=True)

        def estimate(e: int, t: int, p: int | None):
            return estimate_peak(widths, kind, examples=e, positions=P, read_positions=K, steps=t,
                                 position_chunk=p, sender_copies=sender_copies, ablation=self.ablation,
                                 by_position=by_position, neurons=neurons, held=held)

        for e in examples:
            for t in step_options:
                for p in chunks:
                    peak = estimate(e, t, p).total
                    if peak + resident <= budget:
                        self._resident = max(self._resident, resident)
                        self._apply_fit(e, p if p is not None and p < P else self.position_chunk, peak)
                        if kind == "attribution" and steps > 1:  # a plan that stacks steps
                            self.steps_per_pass = min(t, self.steps_per_pass or t)
                        return t
        smallest = estimate(examples[-1], step_options[-1], chunks[-1])
        at = [f"{examples[-1]} example(s) per pass", f"{step_options[-1]} stacked step(s)" if kind == "attribution"
              else "1 circuit per pass" if kind == "patched" else "one training step's forward and backward"] + \
            ([f"a position chunk of {chunks[-1]}"] if kind == "attribution" else [])
        change = ["raise memory_budget (--memory-budget)"]
        if given_e:
            change.append("lower examples_per_pass (--examples-per-pass)")
        if fixed_steps:
            change.append("lower steps_per_pass (--param steps_per_pass=)")
        if given_p and kind == "attribution":
            change.append("lower position_chunk (--position-chunk)")
        change.append("use a smaller dtype (--dtype bfloat16)" if widths.itemsize > 2 else "use shorter prompts")
        besides = ""
        if resident:
            besides = (f", besides the {format_bytes(resident)} of the full model's sender outputs it holds for all "
                       f"{self.n_examples} examples through the run")
            change += [resident_fix] if resident_fix else []
            change.append("run fewer examples")
        raise MemoryBudgetError(
            f"this {kind} run needs about {smallest.describe()} of activations even at {', '.join(at)} "
            f"({P} positions){besides}, over the memory budget of {format_bytes(budget)}: " + ", or ".join(change))

    def _apply_fit(self, examples: int, position_chunk: int | None, peak: int) -> None:
        if examples < max(len(b) for b in self.batches):  # re-plan as sub-batches; per-batch caches are stale
            self.examples_per_pass = examples
            self.batches = plan_batches(self.data, self.batch_size, self.device, examples)
            self._cache.clear()
            self._full.clear()
            self._held = None
        self.position_chunk = position_chunk
        self._run_peak = max(self._run_peak, peak)
        self._cache.shrink()  # what was kept before fits beside the largest pass fitted

    def circuits_per_pass_for(self, batch: SessionBatch, asked: int | None = None, by_position: bool = False) -> int:
        """Circuits one patched pass over ``batch`` runs: as asked (``asked``, else the session's
        ``circuits_per_pass``; a maximum under a budget), else as many as the memory budget allows. Every patched
        pass of a session is this wide at most (:meth:`circuit_metrics`, neuron patching's passes)."""
        asked = asked or self.circuits_per_pass
        if asked is None:
            return self._circuits_per_pass(batch, by_position)
        return min(asked, self._circuits_per_pass(batch, by_position)) if self._run_peak else asked

    def _circuits_per_pass(self, batch: SessionBatch, by_position: bool = False) -> int:
        """As many circuits as fit the memory budget beside what the session keeps: the pass's estimate is
        linear in its circuits (``fixed + c * per_circuit``), with the reads the fitted plans declared."""
        b = len(batch)
        P, K = int(batch.clean.shape[1]), int(batch.positions.shape[1])
        reads = self._fitted_reads
        one, two = (estimate_peak(ModelWidths.of(self.model), "patched", examples=b, positions=P, read_positions=K,
                                  ablation=self.ablation, circuits=c, by_position=by_position or reads.by_position,
                                  neurons=reads.neurons, held=reads.held) for c in (1, 2))
        per_circuit = two.total - one.total
        fixed = one.total - per_circuit  # the ablation, held outputs, weight copies: once per pass
        if ("ablated", batch.number) in self._cache:  # counted with the kept values
            fixed -= one.ablated - one.ablated_neurons
        if ("neuron-ablated", batch.number) in self._cache:
            fixed -= one.ablated_neurons
        room = self._sizing_budget() - self._resident - self._cache.nbytes
        fit = (room - fixed) // per_circuit
        if self.device.type == "cpu":
            fit = min(fit, CPU_ROWS_PER_PASS // b)
        return max(1, int(fit))
