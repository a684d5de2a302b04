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

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def repeated(self, times: int) -> TaskBatch:
        """The readout batch ``times`` times over (the metric of C circuits of this batch in one call)."""
        idx = torch.arange(len(self), device=self.positions.device).repeat(times)
        return self.readout.index(idx)


def plan_batches(task: Task, batch_size: int, device: torch.device) -> list[SessionBatch]:
    """``task``'s examples in batches of ``batch_size``, grouped by the length up to their last read position."""
    data = task.as_batch()
    last = data.positions.masked_fill(~data.position_mask, 0).max(1).values  # [n] last read position
    order = torch.sort(last, descending=True, stable=True).indices
    batches = []
    for number, start in enumerate(range(0, len(task), batch_size)):
        idx = order[start:start + batch_size]
        sub = data.index(idx).to(device)
        P = int(last[idx].max()) + 1
        batches.append(SessionBatch(number, idx, sub.clean[:, :P], sub.corrupted[:, :P], sub.attention_mask[:, :P],
                                    sub.positions, sub.readout_view()))
    return batches
