"""Running many circuits on one task split: the batched engine behind ``evaluate``, curves and ``minimal``.

A circuit is an edge mask ``[S, R]`` (1 = keep the edge, 0 = ablate it). :class:`CircuitRunner` evaluates any
number of them on a task split and returns, per circuit and per example, the task metric and the KL divergence
of the circuit's next-token distribution from the full model's, both read at the task's readout positions.

How the work is organised (issue 6, point 3: "all points of a curve are evaluated as batched circuits"):

* Examples are grouped in batches; per batch, *one* edge-patched forward runs every circuit at once
  (``masks [C, S, R]``, ``C * b`` rows), chunked over circuits only when the rows would not fit in memory.
* What does not depend on the circuit is computed once per batch and cached: the full model's readout
  logits (the clean run), the ablated sender outputs (the corrupted run for ``corrupted``, per-position means
  over the reference set for ``mean``, zeros for ``zero``) and the empty circuit's readout logits. With the
  ``corrupted`` ablation the empty circuit *is* the corrupted run (every receiver reads the corrupted
  residual stream), so M(empty) costs nothing extra; for ``mean`` / ``zero`` it is one patched forward.
* Circuits equal to the full graph or to the empty graph are not run again (their results are those
  cached runs), and identical masks (two curve points that prune to the same circuit) run once.
* Causal models: logits at position p depend on tokens <= p only, so each batch is cut after its last
  readout position, and examples are grouped by that length (padding costs nothing).
* Only the readout positions are unembedded (``logit_positions``): for GPT-2 small at ~20 tokens that skips ~30%
  of a forward's arithmetic, and a ``[C, b, P, vocab]`` tensor that would not fit in memory.
* Nodes idle in every circuit of a pass are not computed (see ``decomposed_forward``): under the corrupted
  ablation a node with no incoming edge in its circuit writes exactly its corrupted output, so the sparse
  points of a curve cost a fraction of a forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuits.graph.pruning import edge_mask
from circuits.interventions.ablation import ABLATIONS, ablated_outputs

ABLATION_ALIASES = {"patching": "corrupted", "resample": "corrupted", "corrupt": "corrupted",
                    "counterfactual": "corrupted", "mean-positional": "mean", "zero-ablation": "zero"}
SPLITS = ("validation", "train", "all")
CPU_MEMORY_BUDGET = 2 * 2**30  # bytes of activations one patched pass may use on CPU
# On CPU a patched pass is memory-bound: beyond a few dozen rows (circuits x examples) per pass the buffers leave
# the caches and each row gets slower (GPT-2 small, 1 thread: 16-48 rows per pass ~10-20% faster than 128).
CPU_ROWS_PER_PASS = 48
CUDA_MEMORY_FRACTION = 0.5  # of the free GPU memory


def check_ablation(ablation: str) -> str:
    """The canonical ablation name (``corrupted``, ``mean``, ``zero``); MIB's ``patching`` is ``corrupted``."""
    key = str(ablation).strip().lower()
    key = ABLATION_ALIASES.get(key, key)
    if key not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; use one of {', '.join(ABLATIONS)} "
                         "(MIB's 'patching' is 'corrupted')")
    return key


def resolve_split(task: Any, split: str) -> tuple[Any, Any, str]:
    """``(examples to evaluate, reference set for mean ablation, split name)``.

    ``validation`` (default) evaluates the task's validation part and takes means over its training part (so
    discovery, means and evaluation never see the same examples twice); ``train`` the training part; ``all``
    every example, with means over all of them.
    """
    key = str(split).strip().lower()
    if key not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if key == "all" or len(task) < 2:
        if key != "all":
            raise ValueError(f"task {getattr(task, 'name', '')!r} has {len(task)} example(s): too few to split into "
                             "train and validation; build it with more examples (n=...) or pass split='all'")
        return task, task, "all"
    train, validation = task.split()
    data = validation if key == "validation" else train
    if len(data) == 0:
        raise ValueError(f"the {key} split of task {task.name!r} is empty; use more examples or split='all'")
    return data, train, key


@dataclass
class _Batch:
    index: Tensor  # [b] positions of these examples in the split
    ids: Tensor  # [b, P_b] clean, cut after the last readout
    corrupted: Tensor  # [b, P_b]
    attention_mask: Tensor  # [b, P_b]
    positions: Tensor  # [b, R] readout positions
    readout: Any  # TaskBatch whose positions index the compact [b, R, V] readout logits
    cache: dict


class CircuitRunner:
    """Evaluate edge masks on one task split; see the module docstring.

    ``run(masks [C, S, R]) -> (metric [C, n], kl [C, n])`` (float64, CPU, in the split's example order);
    ``metric_full``, ``metric_empty``, ``kl_empty`` are ``[n]``.
    """

    def __init__(self, model, task, ablation: str = "corrupted", split: str = "validation", batch_size: int = 16,
                 circuits_per_pass: int | None = None, memory_budget: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = model
        self.structure = model.structure
        self.ablation = check_ablation(ablation)
        self.data, self.reference, self.split = resolve_split(task, split)
        self.task_name = getattr(task, "name", "")
        from circuits.tasks.metrics import Metric
        self.metric = Metric(task.base_metric.name)
        self._kl = Metric("kl")
        self.n = len(self.data)
        self.batch_size = int(batch_size)
        self.circuits_per_pass = circuits_per_pass
        self.memory_budget = memory_budget
        self._edges = edge_mask(self.structure)
        self._mean: Tensor | None = None
        self.forwards = 0  # patched forwards run (for tests and benchmarks)
        self._batches = self._plan()

    # ---- set-up ------------------------------------------------------------------------------------------
    def _plan(self) -> list[_Batch]:
        data = self.data.data if hasattr(self.data, "data") else self.data
        pos = data.positions.masked_fill(~data.position_mask, 0)
        last = pos.max(1).values  # [n] last readout position of each example
        order = torch.sort(last, descending=True, stable=True).indices  # similar lengths share a batch
        batches = []
        for start in range(0, self.n, self.batch_size):
            idx = order[start:start + self.batch_size]
            sub = data.index(idx)
            P = int(last[idx].max()) + 1
            batches.append(_Batch(idx, sub.clean[:, :P], sub.corrupted[:, :P], sub.attention_mask[:, :P],
                                  sub.positions, sub.readout_view(), {}))
        return batches

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _forward(self, batch: _Batch, ids: Tensor, **kwargs):
        """The decomposed forward on ``ids``, logits at the batch's readout positions only ([(C,) b, R, V])."""
        return self.model.run(ids, batch.attention_mask, logit_positions=batch.positions, **kwargs)

    def _mean_outputs(self) -> Tensor:
        if self._mean is None:
            ref = self.reference.data if hasattr(self.reference, "data") else self.reference
            P = max(int(b.ids.shape[1]) for b in self._batches)
            self._mean = ablated_outputs(self.model, "mean", ref.clean[:, :P], reference_ids=ref.clean,
                                         reference_mask=ref.attention_mask, batch_size=self.batch_size)[:, :, :P]
        return self._mean

    def _ablated(self, batch: _Batch) -> Tensor:
        if self.ablation == "corrupted":
            if "ablated" in batch.cache:
                return batch.cache["ablated"]
            return self._forward(batch, batch.corrupted, record=True).sender_outputs
        if self.ablation == "mean":
            return self._mean_outputs()[:, :, :batch.ids.shape[1]]
        S, d = self.structure.n_senders, self.model.spec.d_model
        return torch.zeros(S, 1, 1, d, dtype=self.model.dtype, device=self.device)

    def _bytes_per_row(self, P: int, R: int) -> int:
        s = self.structure
        itemsize = torch.finfo(self.model.dtype).bits // 8
        # the patched residual buffer (1 + S rows), the 3H per-head receiver inputs and norms, a few temporaries
        activations = (s.n_senders + 1 + 6 * s.n_heads + 8) * P * self.model.spec.d_model * itemsize
        # readout logits, and the metric's float32 softmax copies of them
        readout = R * self.model.spec.W_U.shape[1] * (itemsize + 8)
        return activations + readout

    def _circuits_per_pass(self, batch: _Batch) -> int:
        """How many circuits one patched forward runs: as many as memory allows (GPU), at most
        ``CPU_ROWS_PER_PASS`` rows on CPU."""
        b = len(batch.index)
        fit = self._budget() // (self._bytes_per_row(batch.ids.shape[1], batch.positions.shape[1]) * b)
        if self.device.type == "cpu":
            fit = min(fit, CPU_ROWS_PER_PASS // b)
        return max(1, int(fit))

    def _budget(self) -> int:
        if self.memory_budget is not None:
            return int(self.memory_budget)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free * CUDA_MEMORY_FRACTION)
        return CPU_MEMORY_BUDGET

    def _prepare(self, batch: _Batch) -> None:
        """Cache the full model's readout logits and metric, and the empty circuit's, for one batch."""
        if "full_logits" in batch.cache:
            return
        with torch.no_grad():
            clean = self._forward(batch, batch.ids).logits
            batch.cache["full_logits"] = clean
            batch.cache["metric_full"] = self._metric(clean, batch, clean)
            if self.ablation == "corrupted":
                run = self._forward(batch, batch.corrupted, record=True)
                empty = run.logits
                # keep the corrupted sender outputs when they are small next to the budget (minimal's bisection
                # evaluates one circuit at a time and would otherwise recompute them at every step)
                if run.sender_outputs.numel() * run.sender_outputs.element_size() * len(self._batches) \
                        <= self._budget() // 2:
                    batch.cache["ablated"] = run.sender_outputs
                del run
            else:
                zeros = torch.zeros(self.structure.n_senders, self.structure.n_receivers, device=self.device)
                empty = self._forward(batch, batch.ids, masks=zeros, ablated=self._ablated(batch)).logits
                self.forwards += 1
            batch.cache["metric_empty"] = self._metric(empty, batch, clean)
            batch.cache["kl_empty"] = self._kl(empty, batch.readout, full_logits=clean).double().cpu()

    def _metric(self, logits: Tensor, batch: _Batch, full: Tensor) -> Tensor:
        return self.metric(logits, batch.readout, full_logits=full).double().cpu()

    def _gather(self, key: str) -> Tensor:
        out = torch.empty(self.n, dtype=torch.float64)
        for batch in self._batches:
            self._prepare(batch)
            out[batch.index] = batch.cache[key]
        return out

    @property
    def metric_full(self) -> Tensor:
        return self._gather("metric_full")

    @property
    def metric_empty(self) -> Tensor:
        return self._gather("metric_empty")

    @property
    def kl_empty(self) -> Tensor:
        return self._gather("kl_empty")

    # ---- running circuits --------------------------------------------------------------------------------
    def run(self, masks: Tensor) -> tuple[Tensor, Tensor]:
        """``masks [C, S, R]`` (bool, or floats in [0, 1]) -> ``(metric [C, n], kl [C, n])``."""
        if masks.dim() == 2:
            masks = masks[None]
        S, R = self.structure.n_senders, self.structure.n_receivers
        if tuple(masks.shape[1:]) != (S, R):
            raise ValueError(f"masks must be [C, {S}, {R}] for this model, got {tuple(masks.shape)}")
        masks = masks.detach().cpu()
        edges = self._edges
        kinds: list[tuple[str, int]] = []  # per circuit: ("full"|"empty"|"run", index into unique)
        unique: list[Tensor] = []
        for m in masks:
            m = m.float() * edges
            if bool((m[edges] == 1).all()):
                kinds.append(("full", -1))
            elif not bool(m.any()):
                kinds.append(("empty", -1))
            else:
                for j, u in enumerate(unique):
                    if torch.equal(u, m):
                        kinds.append(("run", j))
                        break
                else:
                    kinds.append(("run", len(unique)))
                    unique.append(m)
        C = len(kinds)
        metric = torch.empty(C, self.n, dtype=torch.float64)
        kl = torch.empty(C, self.n, dtype=torch.float64)
        for batch in self._batches:
            self._prepare(batch)
            b = len(batch.index)
            u_metric = torch.empty(len(unique), b, dtype=torch.float64)
            u_kl = torch.empty(len(unique), b, dtype=torch.float64)
            if unique:
                per_pass = self.circuits_per_pass or self._circuits_per_pass(batch)
                with torch.no_grad():
                    ablated = self._ablated(batch)
                    full = batch.cache["full_logits"]
                    for start in range(0, len(unique), per_pass):
                        chunk = torch.stack(unique[start:start + per_pass])
                        logits = self._forward(batch, batch.ids, masks=chunk, ablated=ablated,
                                               ablated_is_a_run=self.ablation == "corrupted").logits
                        self.forwards += 1
                        logits = logits.view(len(chunk), b, *logits.shape[-2:])  # [c, b, R, V]
                        for j in range(len(chunk)):
                            u_metric[start + j] = self._metric(logits[j], batch, full)
                            u_kl[start + j] = self._kl(logits[j], batch.readout, full_logits=full).double().cpu()
                    del ablated
            for c, (kind, j) in enumerate(kinds):
                if kind == "full":
                    metric[c, batch.index] = batch.cache["metric_full"]
                    kl[c, batch.index] = 0.0
                elif kind == "empty":
                    metric[c, batch.index] = batch.cache["metric_empty"]
                    kl[c, batch.index] = batch.cache["kl_empty"]
                else:
                    metric[c, batch.index] = u_metric[j]
                    kl[c, batch.index] = u_kl[j]
        return metric, kl


def normalized(metric: float, full: float, empty: float) -> float:
    """``(M(C) - M(empty)) / (M(full) - M(empty))``, NaN when the denominator is (numerically) zero."""
    if undefined(full, empty):
        return math.nan
    return (metric - empty) / (full - empty) + 0.0  # + 0.0: no -0.0 for the empty circuit


def undefined(full: float, empty: float) -> bool:
    """True when M(full) and M(empty) are too close for faithfulness to mean anything."""
    return not (math.isfinite(full) and math.isfinite(empty)) or \
        abs(full - empty) <= 1e-6 + 1e-5 * max(abs(full), abs(empty))
