"""What an edge outside the circuit carries instead of its sender's output.

Three ablations, one shape contract (``[S, B|1, P|1, d]``, broadcast by the patched forward):

* ``corrupted`` - each sender's output on the paired counterfactual prompt (same length as the clean one):
  the field's default (ACDC, EAP, MIB) because it removes only the task-relevant information.
* ``mean`` - each sender's mean output over a reference set, per position (templated tasks align
  positions; a position the reference never fills falls back to the mean over all its tokens).
* ``zero`` - nothing at all; biases, which belong to no node, stay.
"""

from __future__ import annotations

import torch
from torch import Tensor

ABLATIONS = ("corrupted", "mean", "zero")


class AblationError(ValueError):
    """The ablation cannot be built from what was given."""


@torch.no_grad()
def ablated_outputs(model, ablation: str, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                    corrupted_ids: Tensor | None = None, reference_ids: Tensor | None = None,
                    reference_mask: Tensor | None = None, batch_size: int = 32) -> Tensor:
    """Sender outputs that replace cut edges, for a batch ``input_ids [B, P]``.

    >>> from circuits.models.random import random_model
    >>> m = random_model("gpt2", n_layers=1, n_heads=2, d_model=8)
    >>> ablated_outputs(m, "zero", torch.zeros(3, 5, dtype=torch.long)).shape
    torch.Size([4, 1, 1, 8])
    """
    S, d = model.structure.n_senders, model.structure.d_model
    if ablation == "zero":
        return torch.zeros(S, 1, 1, d, dtype=model.dtype, device=model.device)
    if ablation == "corrupted":
        if corrupted_ids is None:
            raise AblationError("ablation='corrupted' needs the corrupted prompts (corrupted_ids=...); "
                                "use a task with counterfactual pairs, or ablation='mean' / 'zero'")
        if corrupted_ids.shape != input_ids.shape:
            raise AblationError(
                f"clean {tuple(input_ids.shape)} and corrupted {tuple(corrupted_ids.shape)} prompts differ in "
                "shape: every pair must have the same token length so positions line up. Rewrite the pairs "
                "(or pad both to one length with one attention mask).")
        return model.sender_outputs(corrupted_ids, attention_mask)
    if ablation == "mean":
        if reference_ids is None:
            raise AblationError("ablation='mean' needs a reference set (reference_ids=...), e.g. the task's "
                                "training split")
        return mean_outputs(model, reference_ids, reference_mask, n_positions=input_ids.shape[1],
                            batch_size=batch_size)
    raise AblationError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")


@torch.no_grad()
def mean_outputs(model, reference_ids: Tensor, reference_mask: Tensor | None = None, *,
                 n_positions: int | None = None, batch_size: int = 32) -> Tensor:
    """``[S, 1, P, d]``: per-position mean of every sender's output over the real tokens of a reference set."""
    if reference_mask is None:
        reference_mask = torch.ones_like(reference_ids)
    S, d = model.structure.n_senders, model.structure.d_model
    P_ref = reference_ids.shape[1]
    P = n_positions or P_ref
    total = torch.zeros(S, P_ref, d, dtype=torch.float32, device=model.device)
    count = torch.zeros(P_ref, dtype=torch.float32, device=model.device)
    for i in range(0, len(reference_ids), batch_size):
        ids, mask = reference_ids[i:i + batch_size], reference_mask[i:i + batch_size].to(model.device)
        out = model.sender_outputs(ids, mask).float()  # [S, b, P_ref, d]
        total += torch.einsum("sbpd,bp->spd", out, mask.float())
        count += mask.float().sum(0)
    overall = total.sum(1) / count.sum().clamp(min=1)  # [S, d]: for positions the reference never fills
    per_pos = torch.where(count[None, :, None] > 0, total / count.clamp(min=1)[None, :, None], overall[:, None])
    if P > P_ref:  # later positions than any reference prompt: the position-free mean
        per_pos = torch.cat([per_pos, overall[:, None].expand(S, P - P_ref, d)], dim=1)
    return per_pos[:, None, :P].to(model.dtype)
