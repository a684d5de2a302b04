"""Attention, one head at a time: projections (grouped keys/values by weight index, never copied), rotary
embeddings, causal and sliding-window masks, and the per-head attention of the decomposed forward.

Shapes: ``H`` query heads, ``K`` key/value groups (or H), ``N`` rows, ``P`` positions, ``d`` model width,
``e`` head width.

Keys and values are made once per weight row (``K`` of them), rotated, and only then handed to the query heads
that use them (:func:`kv_per_query_head`). Their input is either one stream for all, one per query head (MIB's
per-head k/v receivers: head h's k from head h's own input with group ``h // (H/K)``'s weight) or one per group
(``GraphStructure.grouped_kv``: each group's k/v from the group's own input, computed once).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from circuits.models.architectures import Attention, Norm


def head_subset(attn: Attention, heads: list[int], grouped: bool = False) -> Attention:
    """The attention of ``heads`` only: each with its own key/value weights (per-head k/v inputs), or, with
    ``grouped``, the weights of the groups they are in, once each (``kv_of_head`` says which is whose)."""
    idx = torch.tensor(heads, dtype=torch.long, device=attn.W_Q.device)
    kv = idx // (attn.n_heads // attn.n_kv_heads)
    of_head = None
    if grouped:  # the groups these heads use, in order, and each head's row among them
        kv, of_head = torch.unique(kv, sorted=True, return_inverse=True)

    def pick(t: Tensor | None, i: Tensor) -> Tensor | None:
        return None if t is None else t.index_select(0, i)

    return dataclasses.replace(attn, W_Q=attn.W_Q.index_select(0, idx), W_K=attn.W_K.index_select(0, kv),
                               W_V=attn.W_V.index_select(0, kv), W_O=attn.W_O.index_select(0, idx),
                               b_Q=pick(attn.b_Q, idx), b_K=pick(attn.b_K, kv), b_V=pick(attn.b_V, kv),
                               kv_of_head=of_head)


def kv_per_query_head(t: Tensor, attn: Attention) -> Tensor:
    """``[K', N, P, e]`` keys or values, one per weight row (or already one per head) -> ``[H, N, P, e]``: each
    query head's, routed by index (``attn.kv_of_head``, or head h <- row ``h // (H / K)``)."""
    H = attn.n_heads
    if attn.kv_of_head is not None:  # a subset of heads whose groups' k/v were made once each
        return t.index_select(0, attn.kv_of_head)
    if t.shape[0] == H:
        return t
    return t.repeat_interleave(H // t.shape[0], dim=0)


def allowed_keys(attention_mask: Tensor | None, shape: torch.Size, device: torch.device,
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


def attention_values(attn: Attention, norm: Norm, x: Tensor, positions: Tensor, allowed: Tensor,
                     qkv: tuple[Tensor, Tensor, Tensor] | None = None, query_rows: Tensor | None = None) -> Tensor:
    """Per-head attention. ``x`` is ``[3H, N, P, d]`` (every q, k, v input its own, H each), ``[H + 2K, N, P, d]``
    (H queries, then one k and one v input per key/value weight row: grouped receivers) or ``[1, N, P, d]`` (one
    stream for all); returns ``z [H, N, P, e]``. ``qkv``: projections already made (q ``[H, N, P, e]``, k and v
    ``[H | K, N, P, e]``).

    ``query_rows [N, K]``: the positions whose output anything reads (the last layer's, when only the logits at a
    task's read positions follow): queries, scores and ``z [H, N, K, e]`` are computed there only, keys and
    values at every position. Exact: a query's attention depends on no other query."""
    H = attn.n_heads

    def at_queries(t: Tensor) -> Tensor:  # [h, N, P, f] -> [h, N, K, f]
        if query_rows is None:
            return t
        return t.gather(2, query_rows[None, :, :, None].expand(t.shape[0], *query_rows.shape, t.shape[-1]))

    if qkv is not None:
        q, k, v = qkv
        q = at_queries(q)
    elif x.shape[0] == 1:  # keys and values once per weight row, handed to the heads after the rotation
        xn = norm(x)
        q = project(at_queries(xn), attn.W_Q, attn.b_Q, H)
        k, v = (project(xn, W, b, W.shape[0]) for W, b in ((attn.W_K, attn.b_K), (attn.W_V, attn.b_V)))
    else:
        G = (x.shape[0] - H) // 2  # k (and v) inputs: H (one per query head) or K (one per group)
        n = H if G == H else attn.n_kv_heads  # heads the projection gives out: per input, or once per group
        xk, xv = x[H:H + G], x[H + G:H + 2 * G]
        if x.dtype in (torch.float32, torch.float64):
            # separate inputs: fold the norm into the projections instead of materialising normalised copies
            q = project_folded(at_queries(x[:H]), norm, attn.W_Q, attn.b_Q, H)
            k, v = (project_folded(xi, norm, W, b, n) for xi, W, b in ((xk, attn.W_K, attn.b_K),
                                                                        (xv, attn.W_V, attn.b_V)))
        else:  # half precision: normalise exactly as the model does, the order of roundings matters there
            xn = norm(x)
            q = project(at_queries(xn[:H]), attn.W_Q, attn.b_Q, H)
            k, v = (project(xn[H + i * G:H + (i + 1) * G], W, b, n)
                    for i, (W, b) in ((0, (attn.W_K, attn.b_K)), (1, (attn.W_V, attn.b_V))))
    if query_rows is not None:
        allowed = allowed.gather(1, query_rows[..., None].expand(*query_rows.shape, allowed.shape[-1]))  # [N, K, P]
    if attn.rotary is not None:
        cos, sin = attn.rotary(k, positions)  # [N, P, r]
        k = rotate(k, cos, sin)
        if query_rows is not None:
            cos, sin = attn.rotary(q, positions.gather(1, query_rows))  # [N, K, r]
        q = rotate(q, cos, sin)
    k, v = kv_per_query_head(k, attn), kv_per_query_head(v, attn)  # [H, N, P, e]
    scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scale  # [H, N, P | K, P]
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    if attn.softmax is not None:  # a backward rule's softmax (same forward)
        pattern = attn.softmax(scores).to(v.dtype)
    else:  # softmax in at least fp32 (as HF does for bf16/fp16 models), never below the model's own precision
        pattern = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
    return torch.matmul(pattern, v)


def project_folded(x: Tensor, norm: Norm, W: Tensor, b: Tensor | None, n_heads: int) -> Tensor:
    """``project(norm(x))`` for per-head inputs ``x [H, N, P, d]`` without writing ``norm(x)``.

    LayerNorm: ``((x - mu) / sigma * w + beta) @ W + b = (x @ (w W) - mu (1 @ w W)) / sigma + (beta @ W + b)``;
    RMSNorm: ``(x / rms * w) @ W = (x @ (w W)) / rms``. Only per-token statistics are computed from ``x``.
    """
    K = W.shape[0]
    folded = norm.weight[None, :, None] * W  # [K, d, e]
    out = project(x, folded, None, n_heads)  # [H, N, P, e]
    per_head = (lambda t: t) if K == n_heads else (lambda t: t.repeat_interleave(n_heads // K, dim=0))
    d = x.shape[-1]
    mean_square = torch.linalg.vector_norm(x, dim=-1).square() / d  # [H, N, P]; one fast pass (var_mean is slow)
    if norm.kind == "layernorm":
        mean = x.mean(-1)
        var = (mean_square - mean.square()).clamp(min=0)
        out = (out - mean[..., None] * per_head(folded.sum(1))[:, None, None]) * torch.rsqrt(var + norm.eps)[..., None]
        bias = norm.bias @ W if norm.bias is not None else None  # [K, e], a bmm over W in place (no permuted copy)
        bias = bias if b is None else b if bias is None else bias + b
    else:
        out = out * torch.rsqrt(mean_square + norm.eps)[..., None]
        bias = b
    return out if bias is None else out + per_head(bias)[:, None, None]


def project(x: Tensor, W: Tensor, b: Tensor | None, n_heads: int) -> Tensor:
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


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding on the first ``r`` dims of each head (all of them, or Pythia's partial fraction)."""
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    half = r // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    out = rot * cos + rotated * sin
    return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out
