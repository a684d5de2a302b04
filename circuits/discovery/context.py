"""What every discovery method shares: the data, the ablation, and the objective with MIB's sign.

A method sees the task as a sequence of :class:`PreparedBatch` objects (clean ids, the ablated sender
outputs that replace cut edges, the full model's logits when the metric is a divergence) and scores edges
by one *objective* that is always "higher = the model does the task more like itself":

* a task metric M (logit difference, probability difference, log-prob) is used as is;
* a divergence D from the full model (KL) is negated.

So for every method a positive score means the edge helps (DESIGN.md, "Scores"): removing it lowers the
objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterator

import torch
from torch import Tensor

from circuits.interventions.ablation import ABLATIONS, ablated_outputs


class DiscoveryError(ValueError):
    """Discovery cannot run as asked: the message names the problem and the fix."""


@dataclass
class PreparedBatch:
    """One batch with everything an intervention needs, cached so iterative methods reuse it."""

    batch: object  # circuits.tasks.TaskBatch
    clean: Tensor  # [B, P]
    attention_mask: Tensor  # [B, P]
    ablated: Tensor | None  # [S, B|1, P|1, d]
    full_logits: Tensor | None  # [B, P, V] when the metric needs them (KL)
    full_readout: Tensor | None = None  # [B, K, V]: the same at the read positions only

    @property
    def positions(self) -> Tensor:
        """``[B, K]``: the positions the metric reads; pass as ``logit_positions=`` to unembed only those."""
        return self.batch.positions

    @cached_property
    def readout(self):
        """The batch re-indexed for logits taken at :attr:`positions` only."""
        return self.batch.readout_view()

    def __len__(self) -> int:
        return int(self.clean.shape[0])


@dataclass
class DiscoveryContext:
    """The model, the data split a method discovers on, the ablation, and the objective."""

    model: object  # circuits.CircuitModel
    task: object  # circuits.tasks.Task: the split discovery runs on
    ablation: str = "corrupted"
    batch_size: int = 16
    reference: object | None = None  # Task whose clean prompts define mean ablation (default: `task`)
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ablation not in ABLATIONS:
            raise DiscoveryError(f"unknown ablation {self.ablation!r}; choose one of {', '.join(ABLATIONS)}")
        if self.batch_size < 1:
            raise DiscoveryError(f"batch_size must be positive, got {self.batch_size}")
        check_task_fits_model(self.task, self.model)

    @property
    def metric(self):
        return self.task.base_metric

    @property
    def n_examples(self) -> int:
        return len(self.task)

    @property
    def n_batches(self) -> int:
        return -(-self.n_examples // self.batch_size)

    def objective(self, logits: Tensor, prepared: PreparedBatch, *, readout: bool = False) -> Tensor:
        """``[B]`` (or ``[C, B]`` for batched circuits): the metric, negated if it is a divergence.

        ``readout=True``: ``logits`` were taken at ``prepared.positions`` only (``logit_positions=``).
        """
        batch = prepared.readout if readout else prepared.batch
        full_logits = prepared.full_readout if readout else prepared.full_logits
        if logits.dim() == 4:  # [C, B, P, V]: one row of objectives per circuit
            C = logits.shape[0]
            full = None
            if full_logits is not None:
                full = full_logits[None].expand(C, *full_logits.shape).flatten(0, 1)
            value = self.metric(logits.flatten(0, 1), _repeat_batch(batch, C), full).view(C, -1)
        else:
            value = self.metric(logits, batch, full_logits)
        return value if self.metric.higher_is_better else -value

    @cached_property
    def _mean_reference(self) -> tuple[Tensor, Tensor]:
        ref = self.reference if self.reference is not None else self.task
        return ref.clean, ref.attention_mask

    def prepare(self, batch) -> PreparedBatch:
        """Ablated sender outputs (and the full logits for KL) for one task batch."""
        model = self.model
        batch = batch.to(model.device)
        clean, mask = batch.clean, batch.attention_mask
        ref_ids, ref_mask = self._mean_reference if self.ablation == "mean" else (None, None)
        ablated = ablated_outputs(model, self.ablation, clean, mask, corrupted_ids=batch.corrupted,
                                  reference_ids=ref_ids, reference_mask=ref_mask, batch_size=self.batch_size)
        full = full_readout = None
        if not self.metric.higher_is_better:
            with torch.no_grad():
                full = model.logits(clean, mask)
            full_readout = full.gather(1, batch.positions[..., None].expand(*batch.positions.shape, full.shape[-1]))
        return PreparedBatch(batch, clean, mask, ablated, full, full_readout)

    def batches(self) -> Iterator[PreparedBatch]:
        """Prepared batches over the discovery split, in order (recomputed each time: memory stays flat)."""
        for batch in self.task.batches(self.batch_size):
            yield self.prepare(batch)

    @cached_property
    def cached_batches(self) -> list[PreparedBatch]:
        """All prepared batches kept in memory, for methods that revisit the data many times (ACDC, pruning)."""
        return list(self.batches())

    def check_signal(self, tol: float = 1e-6) -> tuple[float, float]:
        """Mean objective of the full model and of the fully ablated one; refuse when they are equal."""
        full, empty = self.full_and_empty()
        if abs(full - empty) <= tol * max(1.0, abs(full)):
            raise DiscoveryError(
                f"the {self.metric.name} metric is the same for the full model ({full:.4g}) and with every edge "
                f"ablated ({empty:.4g}) on this data: there is nothing to attribute. Check that the corrupted "
                "prompts really change the answer, or use another ablation or metric.")
        return full, empty

    def full_and_empty(self) -> tuple[float, float]:
        """Mean objective of the full model and with every edge ablated.

        With corrupted ablation the fully ablated model *is* the corrupted run, so two plain forwards suffice.
        """
        s = self.model.structure
        full_total, empty_total = 0.0, 0.0
        with torch.no_grad():
            for batch in self.task.batches(self.batch_size):
                batch = batch.to(self.model.device)
                at = batch.positions
                full_logits = self.model.logits(batch.clean, batch.attention_mask, logit_positions=at)
                if self.ablation == "corrupted":
                    prepared = PreparedBatch(batch, batch.clean, batch.attention_mask, None, None, full_logits)
                    empty_logits = self.model.logits(batch.corrupted, batch.attention_mask, logit_positions=at)
                else:
                    prepared = self.prepare(batch)
                    zeros = torch.zeros(s.n_senders, s.n_receivers, device=self.model.device)
                    empty_logits = self.model.patched_logits(batch.clean, zeros, prepared.ablated,
                                                             attention_mask=batch.attention_mask, logit_positions=at)
                full_total += float(self.objective(full_logits, prepared, readout=True).sum())
                empty_total += float(self.objective(empty_logits, prepared, readout=True).sum())
        return full_total / self.n_examples, empty_total / self.n_examples


def _repeat_batch(batch, times: int):
    """The same examples ``times`` times over (to score C circuits of one batch in one metric call)."""
    idx = torch.arange(len(batch), device=batch.device).repeat(times)
    return batch.index(idx)


def check_task_fits_model(task, model) -> None:
    """Refuse a task built with another tokenizer than the model's, before any compute is spent."""
    vocab = model.spec.token_embed.shape[0]
    top = int(max(task.clean.max(), task.corrupted.max()))
    if top >= vocab:
        raise DiscoveryError(
            f"task {task.name!r} uses token id {top} but model {model.name!r} has {vocab} embeddings: the task was "
            "built with another tokenizer. Build it for this model: circuits.load_task(NAME, model, ...)")
    mt, tt = getattr(model, "tokenizer", None), getattr(task, "tokenizer", None)
    if mt is None or tt is None or mt is tt:
        return
    probe = " When Mary and John went to the store, 1732 years"
    if len(mt) != len(tt) or mt(probe)["input_ids"] != tt(probe)["input_ids"]:
        raise DiscoveryError(
            f"task {task.name!r} was tokenized with a different tokenizer ({type(tt).__name__}, {len(tt)} tokens) "
            f"than model {model.name!r} uses ({type(mt).__name__}, {len(mt)} tokens). "
            "Build the task for this model: circuits.load_task(NAME, model, ...)")
