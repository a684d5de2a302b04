"""The decomposed forward pass: one model run in which every sender writes separately and every receiver reads.

One code path serves the plain run (equal to the Hugging Face logits), the recorded run (every sender's
output, the cache ablations are built from) and the edge-patched run (a batch of circuits, masks
differentiable). Which of those it is depends only on the residual strategy
(:mod:`circuits.interventions.residual`).

Shapes: ``B`` examples, ``P`` positions, ``d`` model width, ``H`` query heads, ``G`` key/value groups,
``e`` head width, ``S`` senders, ``R`` receivers, ``C`` circuits, ``N = C * B`` rows actually computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuits.interventions.residual import GradientProbe, MaskedResidual, PlainResidual
from circuits.models.architectures import Attention, Norm, TransformerSpec


@dataclass
class ForwardResult:
    logits: Tensor  # [B, P, V], or [C, B, P, V] when masks were [C, S, R]
    sender_outputs: Tensor | None = None  # [S, B, P, d] when recorded


def position_ids_for(attention_mask: Tensor | None, shape: tuple[int, int], device: torch.device) -> Tensor:
    """Positions count real tokens only, so left padding does not shift a prompt's positions."""
    if attention_mask is None:
        return torch.arange(shape[1], device=device).expand(shape)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def decomposed_forward(spec: TransformerSpec, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                       masks: Tensor | None = None, ablated: Tensor | None = None,
                       record: bool = False, probe: dict | None = None,
                       logit_positions: Tensor | None = None, ablated_is_a_run: bool = False,
                       cached: Tensor | None = None, computed: Tensor | None = None) -> ForwardResult:
    """Run ``spec`` on ``input_ids [B, P]``.

    ``masks [C, S, R]`` or ``[S, R]`` with ``ablated [S, B|1, P|1, d]`` patches every edge
    (1 = the sender's output in this run, 0 = its ablated output); without masks it is the plain model.
    ``record`` returns every sender's output (plain runs, and patched runs of one circuit: there a skipped
    sender's entry is its ablated output, what every receiver reads from it). ``probe`` (keyword arguments of
    :class:`~circuits.interventions.residual.GradientProbe`) makes the run an attribution run: the backward
    pass of anything computed from its logits accumulates edge scores. ``logit_positions [B, K]`` unembeds
    only those positions (logits ``[B, K, V]``): a task reads a few positions, and the unembedding of a large
    vocabulary is otherwise a third of the forward. In runs that record nothing and need no gradient, the last
    layer's MLP, which only the logits read, is computed at those positions too (its outputs elsewhere are
    never read; a recorded or differentiated run computes it everywhere).

    Idle nodes are skipped in patched runs without gradients: a head or MLP with no outgoing edge in any of the
    C circuits is never computed (its output is never read), and with ``ablated_is_a_run`` (``ablated`` are the
    outputs of one real forward on these positions: the corrupted ablation) neither is a node none of whose
    incoming edges is in its circuit, since it would write exactly its ablated output. Small circuits then
    cost a fraction of a forward.

    ``cached [S, B, P, d]`` with ``computed [S]`` (bool, patched runs): only the senders marked ``computed``
    are computed; every other sender writes its ``cached`` output, the same in every circuit. Valid when the
    cache holds what those senders output in each of the C circuits, e.g. the outputs of a circuit the C
    circuits differ from only in edges into computed nodes, whose descendants are all computed too (ACDC's
    candidates: one receiver's edges vary, so only its node and what that node feeds are recomputed).
    """
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

    C = 1
    if masks is not None:
        if record and masks.dim() == 3 and masks.shape[0] != 1:
            raise ValueError("record=True records one run: give a plain run or the masks of one circuit")
        if ablated is None:
            raise ValueError("patching needs the ablated sender outputs (ablated=...): see circuits.interventions.ablation")
        _check_patch_inputs(structure, masks, ablated, B, P, first.shape[-1])
        C = masks.shape[0] if masks.dim() == 3 else 1
        active = None
        if not (masks.requires_grad or ablated.requires_grad):
            active = active_senders(structure, masks, ablated_is_a_run)
        resid = MaskedResidual(first, masks, ablated.to(first.dtype), structure, active, shared=cached is not None)
        positions = positions.repeat(C, 1)  # [N, P]
        if attention_mask is not None:
            attention_mask = attention_mask.repeat(C, 1)
    elif probe is not None:
        if not first.requires_grad and 0 not in probe.get("overrides", {}):
            first = first.detach().requires_grad_(torch.is_grad_enabled())
        resid = GradientProbe(first, **probe)
    else:
        resid = PlainResidual(first, structure.n_senders, record=record)
    per_head = masks is not None or record or probe is not None  # else heads are summed inside W_O
    read_rows = None if logit_positions is None else logit_positions.to(first.device).repeat(C, 1)  # [N, K]
    # the last MLP feeds only the logits: runs that record nothing and need no gradient compute it at read_rows only
    readout_only = read_rows is not None and not record and probe is None and not torch.is_grad_enabled()
    recording = None  # patched run of one circuit, recorded: [S, B, P, d], skipped senders at their ablated output
    if record and masks is not None:
        recording = ablated.to(first.dtype).expand(structure.n_senders, B, P, first.shape[-1]).clone()
        recording[0] = first

    allowed = _allowed_keys(attention_mask, positions.shape, first.device, spec.sliding_window)  # [N, P, P]
    H = structure.n_heads
    skipping = masks is not None and active is not None
    if cached is not None or computed is not None:
        if masks is None or cached is None or computed is None:
            raise ValueError("cached sender outputs need masks and computed (the senders this run computes)")
        computed = computed.detach().cpu().bool()
        if recording is not None:
            recording[~computed] = cached[~computed.to(cached.device)].to(recording.dtype)
        computed = computed.tolist()

    def held(senders: list[int]) -> dict:  # write() arguments for senders whose outputs come from the cache
        return {"held": cached[senders], "held_senders": senders} if senders else {}

    def note(senders: list[int], outputs: Tensor) -> None:  # outputs [k, N, P, d] of a recorded patched run
        if recording is not None and senders:
            recording[senders] = outputs.reshape(len(senders), B, P, -1)

    for layer_idx, layer in enumerate(spec.layers):
        senders = structure.layer_senders(layer_idx)
        heads = list(range(H))
        has_mlp = layer.mlp is not None
        if skipping:
            heads = [h for h in heads if resid.active[senders.start + h]]
            has_mlp = has_mlp and resid.active[structure.mlp_sender(layer_idx)]
        work = heads if computed is None else [h for h in heads if computed[senders.start + h]]  # computed heads
        mlp_work = has_mlp and (computed is None or computed[structure.mlp_sender(layer_idx)])
        mlp_r = structure.mlp_receiver(layer_idx) if mlp_work else None
        z, attn = None, layer.attn
        if work:
            receivers = structure.attn_receivers(layer_idx)
            if len(work) < H:  # only the computed heads' q, k, v receivers read
                receivers = [receivers.start + i * H + h for i in range(3) for h in work]
                attn = _head_subset(layer.attn, work)
            x = resid.read(receivers, then=mlp_r)  # [3H' | 1, N, P, d]
            qkv = None
            if probe is not None and x.requires_grad:  # attribution: q/k/v whose backward scores the receivers
                qkv = resid.project_qkv(x, attn, layer.attn_norm)
            z = _attention_pattern_values(attn, layer.attn_norm, x, positions, allowed, qkv)  # [H', N, P, e]
        if mlp_work and spec.parallel_attn_mlp:
            mlp_in = resid.read(mlp_r)
        if z is None:
            resid.write(None, group=H, **held([senders.start + h for h in heads]))
        elif per_head:
            out = torch.matmul(z.flatten(1, 2), attn.W_O).view(len(work), *z.shape[1:3], -1)  # [H', N, P, d]
            note([senders.start + h for h in work], out)
            computed_heads = set(work)
            rest = [senders.start + h for h in heads if h not in computed_heads]  # active heads from the cache
            resid.write(out, group=H, **held(rest))
        else:
            resid.write(torch.einsum("hnpe,hed->npd", z, attn.W_O)[None])
        if layer.attn.b_O is not None:
            resid.add_constant(layer.attn.b_O)
        if has_mlp and not mlp_work:
            resid.write(None, group=1, **held([structure.mlp_sender(layer_idx)]))
            continue
        if mlp_work and not spec.parallel_attn_mlp:
            mlp_in = resid.read(mlp_r)
        if mlp_work and readout_only and layer_idx == len(spec.layers) - 1:
            index = read_rows[None, ..., None].expand(1, *read_rows.shape, mlp_in.shape[-1])  # [1, N, K, d]
            out = torch.zeros_like(mlp_in).scatter_(2, index, layer.mlp(layer.mlp_norm(mlp_in.gather(2, index))))
            resid.write(out)  # [1, N, P, d], zero outside the readout positions (read by nothing)
        elif mlp_work:
            out = layer.mlp(layer.mlp_norm(mlp_in))  # [1, N, P, d]
            note([structure.mlp_sender(layer_idx)], out)
            resid.write(out)
        elif skipping and layer.mlp is not None:
            resid.write(None, group=1)

    final = resid.read(structure.logits_receiver)[0]  # [N, P, d]
    if read_rows is not None:  # [N, P, d] -> [N, K, d]
        final = final.gather(1, read_rows[..., None].expand(*read_rows.shape, final.shape[-1]))
    final = spec.final_norm(final)
    logits = final @ spec.W_U
    if spec.b_U is not None:
        logits = logits + spec.b_U
    if masks is not None and masks.dim() == 3:
        logits = logits.view(C, B, logits.shape[1], -1)
    outputs = recording if recording is not None else resid.recorded() if record else None
    return ForwardResult(logits, outputs)


def active_senders(structure, masks: Tensor, ablated_is_a_run: bool = False) -> Tensor:
    """``[S]`` bool: the senders a patched run of ``masks [C, S, R]`` must compute. A sender is needed when, in
    some circuit, one of its outgoing edges is in the circuit and (if ``ablated_is_a_run``) so is one of its
    incoming edges; otherwise its output in every circuit is either never read or exactly its ablated one."""
    from circuits.graph.pruning import receiver_node

    m = masks.detach()
    m = (m[None] if m.dim() == 2 else m) != 0
    m = m & structure.edge_mask.to(m.device)
    needed = m.any(2)  # [C, S]: feeds something
    if ablated_is_a_run:
        fed = torch.zeros(m.shape[0], structure.n_senders + 1, device=m.device)
        fed.index_add_(1, receiver_node(structure, m.device), m.any(1).float())  # input edges per node
        fed[:, 0] = 1.0  # the input embedding is its own source
        needed = needed & (fed[:, :-1] > 0)
    return needed.any(0).cpu()


def _head_subset(attn: Attention, heads: list[int]) -> Attention:
    """The attention of ``heads`` only (each with its own key/value weights, grouped or not)."""
    import dataclasses

    idx = torch.tensor(heads, dtype=torch.long, device=attn.W_Q.device)
    kv = idx // (attn.n_heads // attn.n_kv_heads)
    pick = (lambda t, i: None if t is None else t.index_select(0, i))
    return dataclasses.replace(attn, W_Q=pick(attn.W_Q, idx), W_K=pick(attn.W_K, kv), W_V=pick(attn.W_V, kv),
                               W_O=pick(attn.W_O, idx), b_Q=pick(attn.b_Q, idx), b_K=pick(attn.b_K, kv),
                               b_V=pick(attn.b_V, kv))


def _check_patch_inputs(structure, masks: Tensor, ablated: Tensor, B: int, P: int, d: int) -> None:
    S, R = structure.n_senders, structure.n_receivers
    if masks.shape[-2:] != (S, R) or masks.dim() not in (2, 3):
        raise ValueError(f"masks must be [S, R] or [C, S, R] with S={S} senders and R={R} receivers "
                         f"({structure.describe()}), got {tuple(masks.shape)}")
    if ablated.dim() != 4 or ablated.shape[0] != S or ablated.shape[-1] != d:
        raise ValueError(f"ablated sender outputs must be [S={S}, B, P, d={d}] (or broadcastable), "
                         f"got {tuple(ablated.shape)}")
    if ablated.shape[1] not in (1, B) or ablated.shape[2] not in (1, P):
        raise ValueError(f"ablated outputs {tuple(ablated.shape)} do not broadcast to batch {B} x {P} positions: "
                         "build them from the same batch (corrupted ablation) or as means ([S, 1, P, d]).")


def _allowed_keys(attention_mask: Tensor | None, shape: torch.Size, device: torch.device,
                  sliding_window: int | None) -> Tensor:
    """``[N, P, P]`` bool: query position q may attend to key position k (causal, real keys, window)."""
    N, P = shape
    q = torch.arange(P, device=device)
    allowed = q[None, :] <= q[:, None]  # [P(q), P(k)]
    if sliding_window is not None:
        allowed = allowed & (q[:, None] - q[None, :] < sliding_window)
    allowed = allowed[None].expand(N, P, P)
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, :]
    return allowed


def _attention_pattern_values(attn: Attention, norm: Norm, x: Tensor, positions: Tensor, allowed: Tensor,
                              qkv: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """Per-head attention. ``x`` is ``[3H, N, P, d]`` (every q, k, v input its own, H each) or ``[1, N, P, d]``
    (one stream for all); returns ``z [H, N, P, e]``. ``qkv``: projections already made (``[H, N, P, e]`` each)."""
    H = attn.n_heads
    if qkv is not None:
        q, k, v = qkv
    elif x.shape[0] == 1:
        xn = norm(x)
        q, k, v = (_project(xn, W, b, H) for W, b in ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V)))
    elif x.dtype in (torch.float32, torch.float64):
        # 3H separate inputs: fold the norm into the projections instead of materialising 3H normalised copies
        q, k, v = (_project_folded(x[i * H:(i + 1) * H], norm, W, b, H)
                   for i, (W, b) in enumerate(((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V))))
    else:  # half precision: normalise exactly as the model does, the order of roundings matters there
        xn = norm(x)
        q, k, v = (_project(xn[i * H:(i + 1) * H], W, b, H)
                   for i, (W, b) in enumerate(((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V))))
    if attn.rotary is not None:
        cos, sin = attn.rotary(q, positions)  # [N, P, r]
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scale  # [H, N, P, P]
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    # softmax in at least fp32 (as HF does for bf16/fp16 models), never below the model's own precision
    pattern = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
    return torch.matmul(pattern, v)


def _project_folded(x: Tensor, norm: Norm, W: Tensor, b: Tensor | None, n_heads: int) -> Tensor:
    """``project(norm(x))`` for per-head inputs ``x [H, N, P, d]`` without writing ``norm(x)``.

    LayerNorm: ``((x - mu) / sigma * w + beta) @ W + b = (x @ (w W) - mu (1 @ w W)) / sigma + (beta @ W + b)``;
    RMSNorm: ``(x / rms * w) @ W = (x @ (w W)) / rms``. Only per-token statistics are computed from ``x``.
    """
    K = W.shape[0]
    folded = norm.weight[None, :, None] * W  # [K, d, e]
    out = _project(x, folded, None, n_heads)  # [H, N, P, e]
    per_head = (lambda t: t) if K == n_heads else (lambda t: t.repeat_interleave(n_heads // K, dim=0))
    d = x.shape[-1]
    mean_square = torch.linalg.vector_norm(x, dim=-1).square() / d  # [H, N, P]; one fast pass (var_mean is slow)
    if norm.kind == "layernorm":
        mean = x.mean(-1)
        var = (mean_square - mean.square()).clamp(min=0)
        out = (out - mean[..., None] * per_head(folded.sum(1))[:, None, None]) * torch.rsqrt(var + norm.eps)[..., None]
        bias = torch.einsum("d,kde->ke", norm.bias, W) if norm.bias is not None else None
        bias = bias if b is None else b if bias is None else bias + b
    else:
        out = out * torch.rsqrt(mean_square + norm.eps)[..., None]
        bias = b
    return out if bias is None else out + per_head(bias)[:, None, None]


def _project(x: Tensor, W: Tensor, b: Tensor | None, n_heads: int) -> Tensor:
    """Each query head's projection of its own input. ``x [H | 1, N, P, d]``, ``W [K, d, e]`` with ``K`` = H
    (queries) or G (grouped keys/values: head h uses group ``h // (H / G)``'s weight, never a copied one)."""
    K = W.shape[0]
    if x.shape[0] == 1:  # one shared input: project once per weight, then give each query head its group's
        out = torch.einsum("npd,kde->knpe", x[0], W)
        if b is not None:
            out = out + b[:, None, None]
        return out if K == n_heads else out.repeat_interleave(n_heads // K, dim=0)
    group = n_heads // K
    xg = x.view(K, group, *x.shape[1:])  # [K, H/K, N, P, d]
    out = torch.matmul(xg.flatten(1, 3), W).view(K, group, *x.shape[1:3], W.shape[-1])  # [K, H/K, N, P, e]
    if b is not None:
        out = out + b[:, None, None, None]
    return out.flatten(0, 1)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding on the first ``r`` dims of each head (all of them, or Pythia's partial fraction)."""
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    half = r // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    out = rot * cos + rotated * sin
    return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out
