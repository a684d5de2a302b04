"""The decomposed forward pass: one model run in which every sender writes separately and every receiver reads.

One loop serves the plain run (equal to the Hugging Face logits), the recorded run (every sender's output),
attribution and the edge-patched runs of C circuits: which of those it is depends only on the residual strategy
it is given (:mod:`circuits.interventions.residual`), through one interface.

Shapes: ``B`` examples, ``P`` positions, ``d`` model width, ``H`` query heads, ``e`` head width, ``S`` senders,
``R`` receivers, ``C`` circuits, ``N = C * B`` rows actually computed, ``K`` read positions, ``V`` vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from circuits.interventions.attention import allowed_keys, attention_values, head_subset
from circuits.interventions.residual import PlainResidual, ResidualStrategy

if TYPE_CHECKING:  # pragma: no cover
    from circuits.models.architectures import TransformerSpec


@dataclass(frozen=True)
class ForwardResult:
    logits: Tensor  # [B, P, V], [C, B, P, V] for a circuit axis; K instead of P with logit_positions
    sender_outputs: Tensor | None = None  # [S, B, P, d] when the strategy records


def position_ids_for(attention_mask: Tensor | None, shape: tuple[int, int], device: torch.device) -> Tensor:
    """Positions count real tokens only, so left padding does not shift a prompt's positions."""
    if attention_mask is None:
        return torch.arange(shape[1], device=device).expand(shape)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def decomposed_forward(spec: TransformerSpec, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                       residual: ResidualStrategy | None = None, logit_positions: Tensor | None = None
                       ) -> ForwardResult:
    """Run ``spec`` on ``input_ids [B, P]`` with ``residual`` (default: the plain model).

    ``logit_positions [B, K]`` unembeds only those positions (logits ``[B, K, V]``): a task reads a few positions,
    and the unembedding of a large vocabulary is otherwise a third of the forward. When the strategy needs no
    output at every position and no gradient is taken, the last layer, which only the logits read, is computed
    at those positions only: its MLP, and its heads' queries and outputs (keys and values need every position).
    """
    residual = PlainResidual() if residual is None else residual
    B, P = input_ids.shape
    structure = spec.structure
    if spec.max_positions is not None and P > spec.max_positions:
        raise ValueError(f"sequence length {P} exceeds the model's context of {spec.max_positions} positions")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {(B, P)}")
    positions = position_ids_for(attention_mask, (B, P), input_ids.device)  # [B, P]
    first = spec.token_embed[input_ids]  # [B, P, d]: the `input` sender
    if spec.pos_embed is not None:
        first = first + spec.pos_embed[positions]
    first = residual.begin(first, structure)

    C = residual.n_circuits
    if C > 1:
        positions = positions.repeat(C, 1)  # [N, P]
        attention_mask = None if attention_mask is None else attention_mask.repeat(C, 1)
    read_rows = None if logit_positions is None else logit_positions.to(first.device).repeat(C, 1)  # [N, K]
    readout_only = read_rows is not None and not residual.keeps_every_position and not torch.is_grad_enabled()
    allowed = allowed_keys(attention_mask, positions.shape, first.device, spec.sliding_window)  # [N, P, P]
    H = structure.n_heads

    for layer_idx, layer in enumerate(spec.layers):
        heads = residual.heads(layer_idx)
        mlp_work = layer.mlp is not None and residual.computes_mlp(layer_idx)
        mlp_r = structure.mlp_receiver(layer_idx) if mlp_work else None
        outputs = None
        if heads:
            all_heads = structure.attn_receivers(layer_idx)
            receivers: slice | list[int] = all_heads
            attn = layer.attn
            if len(heads) < H:  # only the computed heads' q, k, v receivers read (k, v: their groups', if grouped)
                receivers = structure.head_inputs(layer_idx, heads)
                attn = head_subset(layer.attn, heads, grouped=structure.grouped_kv)
            x = residual.read(receivers, then=mlp_r)  # [3H' | H' + 2G' | 1, N, P, d]
            qkv = residual.project_qkv(x, attn, layer.attn_norm)
            last = readout_only and layer_idx == len(spec.layers) - 1  # only the read positions are read after it
            query_rows = read_rows if last else None
            z = attention_values(attn, layer.attn_norm, x, positions, allowed, qkv, query_rows)  # [H', N, P|K, e]
            if residual.per_head:
                outputs = torch.matmul(z.flatten(1, 2), attn.W_O).view(len(heads), *z.shape[1:3], -1)  # [H', N, ., d]
            else:  # heads summed inside W_O
                outputs = torch.einsum("hnpe,hed->npd", z, attn.W_O)[None]
            if query_rows is not None:  # [h, N, K, d] -> [h, N, P, d], zero where nothing reads
                index = query_rows[None, ..., None].expand(outputs.shape[0], *query_rows.shape, outputs.shape[-1])
                outputs = x.new_zeros(outputs.shape[0], outputs.shape[1], P, outputs.shape[-1]).scatter_(2, index,
                                                                                                         outputs)
        if mlp_r is not None and spec.parallel_attn_mlp:
            mlp_in = residual.read(mlp_r)
        residual.write_heads(layer_idx, heads, outputs)
        if heads:  # the buffer holds the outputs now: the next read must not find this layer's inputs held
            del x, qkv, z, outputs
        if layer.attn.b_O is not None:
            residual.add_constant(layer.attn.b_O)
        if layer.mlp is None or layer.mlp_norm is None:
            continue
        if mlp_r is None:
            residual.write_mlp(layer_idx, None)
            continue
        if not spec.parallel_attn_mlp:
            mlp_in = residual.read(mlp_r)
        if readout_only and read_rows is not None and layer_idx == len(spec.layers) - 1:
            index = read_rows[None, ..., None].expand(1, *read_rows.shape, mlp_in.shape[-1])  # [1, N, K, d]
            out = torch.zeros_like(mlp_in).scatter_(2, index, residual.mlp(layer_idx, layer.mlp,
                                                                     layer.mlp_norm(mlp_in.gather(2, index))))
        else:
            out = residual.mlp(layer_idx, layer.mlp, layer.mlp_norm(mlp_in))  # [1, N, P, d]
        residual.write_mlp(layer_idx, out)
        del mlp_in, out

    final = residual.read(structure.logits_receiver)[0]  # [N, P, d]
    if read_rows is not None:  # [N, P, d] -> [N, K, d]
        final = final.gather(1, read_rows[..., None].expand(*read_rows.shape, final.shape[-1]))
    logits = spec.final_norm(final) @ spec.W_U
    if spec.b_U is not None:
        logits = logits + spec.b_U
    if residual.circuit_axis:
        logits = logits.view(C, B, logits.shape[1], -1)
    return ForwardResult(logits, residual.recorded())
