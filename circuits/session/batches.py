"""The examples of a session, cut into batches the way every circuit run wants them.

Causal models: logits at position p depend on tokens <= p only, so each batch is cut after its last read
position, and examples are grouped by that length (longest first) so padding costs nothing. Every method and
every evaluation reads these same batches, so a result never depends on which algorithm prepared its data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from circuits.tasks.task import Task, TaskBatch


@dataclass(frozen=True, eq=False)
class SessionBatch:
    """One batch of a session's examples, on the model's device, cut after its last read position."""

    number: int  # its place in the session's batch plan
    index: Tensor  # [b] long (CPU): the examples' positions in the session's split
    clean: Tensor  # [b, P] long
    corrupted: Tensor  # [b, P] long
    attention_mask: Tensor  # [b, P]
    positions: Tensor  # [b, K] long: the positions the metric reads (pass as logit_positions=)
    readout: TaskBatch  # the batch re-indexed for logits taken at `positions` only ([b, K, V])
    group: int  # the batch of ``batch_size`` examples this one is, or is a sub-batch of (a memory budget's chunk)

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def repeated(self, times: int) -> TaskBatch:
        """The readout batch ``times`` times over (the metric of C circuits of this batch in one call)."""
        idx = torch.arange(len(self), device=self.positions.device).repeat(times)
        return self.readout.index(idx)


def plan_batches(task: Task, batch_size: int, device: torch.device,
                 examples_per_pass: int | None = None) -> list[SessionBatch]:
    """``task``'s examples in batches of ``batch_size``, grouped by the length up to their last read position.
    ``examples_per_pass``: each batch cut further into sub-batches of that many examples (a memory budget's
    chunks), each cut after its own last read position (``SessionBatch.group``: the batch it is part of)."""
    data = task.as_batch()
    last = data.positions.masked_fill(~data.position_mask, 0).max(1).values  # [n] last read position
    order = torch.sort(last, descending=True, stable=True).indices
    step = min(batch_size, examples_per_pass or batch_size)
    batches: list[SessionBatch] = []
    for start in range(0, len(task), batch_size):
        for part in range(start, min(start + batch_size, len(task)), step):
            idx = order[part:min(part + step, start + batch_size)]
            sub = data.index(idx).to(device)
            P = int(last[idx].max()) + 1
            batches.append(SessionBatch(len(batches), idx, sub.clean[:, :P], sub.corrupted[:, :P],
                                        sub.attention_mask[:, :P], sub.positions, sub.readout_view(),
                                        group=start // batch_size))
    return batches
