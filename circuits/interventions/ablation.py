"""What an edge outside the circuit carries instead of its sender's output.

Three ablations, one shape contract (``[S, B|1, P|1, d]``, broadcast by the patched forward):

* ``corrupted`` - each sender's output on the paired counterfactual prompt (same length as the clean one):
  the field's default (ACDC, EAP, MIB) because it removes only the task-relevant information.
* ``mean`` - each sender's mean output over a reference set, per position (templated tasks align
  positions; a position the reference never fills falls back to the mean over all its tokens).
* ``zero`` - nothing at all; biases, which belong to no node, stay.

:class:`Ablated` carries the outputs with the kind that made them, because one saving is exact for one kind
only: under ``corrupted`` a node none of whose incoming edges is kept writes exactly its ablated output (it
*is* the corrupted run there), so a patched forward need not compute it. The kind is set by whoever built the
outputs, never claimed by a caller, so the saving cannot be applied to means or zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from circuits.errors import CircuitsError

if TYPE_CHECKING:  # pragma: no cover
    from circuits.models.circuit_model import CircuitModel

ABLATIONS = ("corrupted", "mean", "zero")
#: Other tools' names for the same ablations: MIB calls the corrupted ablation "patching".
ABLATION_ALIASES = {"patching": "corrupted"}


class AblationError(CircuitsError, ValueError):
    """The ablation cannot be built from what was given."""


def check_ablation(ablation: str) -> str:
    """The canonical ablation name (the one rule every entry point applies); MIB's ``patching`` is ``corrupted``."""
    key = str(ablation).strip().lower()
    key = ABLATION_ALIASES.get(key, key)
    if key not in ABLATIONS:
        raise AblationError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)} "
                            "(MIB's 'patching' is 'corrupted')")
    return key


@dataclass(frozen=True)
class Ablated:
    """Sender outputs that replace cut edges, ``values [S, B|1, P|1, d]``, and the ablation that made them.

    ``kind`` is one of :data:`ABLATIONS`, or ``"given"`` for outputs a caller computed itself (any tensor):
    only ``corrupted`` outputs are a run of the model on these very positions (:attr:`is_a_run`).
    """

    values: Tensor
    kind: str = "given"

    def __post_init__(self) -> None:
        if self.kind not in (*ABLATIONS, "given"):
            raise AblationError(f"unknown ablation kind {self.kind!r}; choose one of {', '.join(ABLATIONS)} or 'given'")
        if self.values.dim() != 4:
            raise AblationError(f"ablated sender outputs must be [S, B|1, P|1, d], got {tuple(self.values.shape)}")

    @property
    def is_a_run(self) -> bool:
        """True when a node with no kept incoming edge writes exactly its ablated output (corrupted only)."""
        return self.kind == "corrupted"

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Ablated:
        return Ablated(self.values.to(device=device, dtype=dtype), self.kind)


def as_ablated(ablated: Ablated | Tensor) -> Ablated:
    """A tensor someone computed is ``given``: nothing is assumed about where it came from."""
    return ablated if isinstance(ablated, Ablated) else Ablated(ablated, "given")


@torch.no_grad()
def build_ablation(model: CircuitModel, ablation: str, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                   corrupted_ids: Tensor | None = None, reference_ids: Tensor | None = None,
                   reference_mask: Tensor | None = None, batch_size: int = 32) -> Ablated:
    """The :class:`Ablated` outputs of ``ablation`` for a batch ``input_ids [B, P]``."""
    ablation = check_ablation(ablation)
    S, d = model.structure.n_senders, model.spec.d_model
    if ablation == "zero":
        return Ablated(torch.zeros(S, 1, 1, d, dtype=model.dtype, device=model.device), "zero")
    if ablation == "corrupted":
        if corrupted_ids is None:
            raise AblationError("ablation='corrupted' needs the corrupted prompts (corrupted_ids=...); "
                                "use a task with counterfactual pairs, or ablation='mean' / 'zero'")
        if corrupted_ids.shape != input_ids.shape:
            raise AblationError(
                f"clean {tuple(input_ids.shape)} and corrupted {tuple(corrupted_ids.shape)} prompts differ in "
                "shape: every pair must have the same token length so positions line up. Rewrite the pairs "
                "(or pad both to one length with one attention mask).")
        return Ablated(model.sender_outputs(corrupted_ids, attention_mask), "corrupted")
    if reference_ids is None:
        raise AblationError("ablation='mean' needs a reference set (reference_ids=...), e.g. the task's training split")
    return Ablated(mean_outputs(model, reference_ids, reference_mask, n_positions=input_ids.shape[1],
                                batch_size=batch_size), "mean")


def ablated_outputs(model: CircuitModel, ablation: str, input_ids: Tensor, attention_mask: Tensor | None = None,
                    **options: Tensor | int | None) -> Tensor:
    """Sender outputs that replace cut edges, for a batch ``input_ids [B, P]`` (the values of
    :func:`build_ablation`; options as there).

    >>> from circuits.models.random import random_model
    >>> m = random_model("gpt2", n_layers=1, n_heads=2, d_model=8)
    >>> ablated_outputs(m, "zero", torch.zeros(3, 5, dtype=torch.long)).shape
    torch.Size([4, 1, 1, 8])
    """
    return build_ablation(model, ablation, input_ids, attention_mask, **options).values  # type: ignore[arg-type]


@torch.no_grad()
def mean_outputs(model: CircuitModel, reference_ids: Tensor, reference_mask: Tensor | None = None, *,
                 n_positions: int | None = None, batch_size: int = 32) -> Tensor:
    """``[S, 1, P, d]``: per-position mean of every sender's output over the real tokens of a reference set."""
    return per_position_mean(model.sender_outputs, model.device, model.dtype, reference_ids, reference_mask,
                             n_positions=n_positions, batch_size=batch_size)


def per_position_mean(outputs_of: Callable[[Tensor, Tensor], Tensor], device: torch.device, dtype: torch.dtype,
                      reference_ids: Tensor, reference_mask: Tensor | None = None, *, n_positions: int | None = None,
                      batch_size: int = 32) -> Tensor:
    """``[U, 1, P, w]``: per-position mean over the real tokens of a reference set of ``outputs_of(ids, mask)``
    (``[U, b, P_ref, w]``: sender outputs, or MLP neurons' activations). A position the reference never fills
    takes the mean over all its tokens."""
    if reference_mask is None:
        reference_mask = torch.ones_like(reference_ids)
    P_ref = reference_ids.shape[1]
    P = n_positions or P_ref
    total: Tensor | None = None
    count = torch.zeros(P_ref, dtype=torch.float32, device=device)
    for i in range(0, len(reference_ids), batch_size):
        ids, mask = reference_ids[i:i + batch_size], reference_mask[i:i + batch_size].to(device)
        out = outputs_of(ids, mask).float()  # [U, b, P_ref, w]
        part = torch.einsum("sbpd,bp->spd", out, mask.float())
        total = part if total is None else total + part
        count += mask.float().sum(0)
    assert total is not None, "an empty reference set"
    U, _, w = total.shape
    overall = total.sum(1) / count.sum().clamp(min=1)  # [U, w]: for positions the reference never fills
    per_pos = torch.where(count[None, :, None] > 0, total / count.clamp(min=1)[None, :, None], overall[:, None])
    if P > P_ref:  # later positions than any reference prompt: the position-free mean
        per_pos = torch.cat([per_pos, overall[:, None].expand(U, P - P_ref, w)], dim=1)
    return per_pos[:, None, :P].to(dtype)
