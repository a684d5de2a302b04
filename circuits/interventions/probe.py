"""Attribution: the plain residual stream whose backward pass scores every edge (EAP, EAP-IG, node-AP).

Every receiver gets its own gradient: q, k and v of each head from :meth:`GradientProbe.project_qkv`'s backward,
each MLP and the logits from hooks on their input. Each gradient is turned into edge scores at once,
``scores[S, R] += diff_S . dM/d input_R`` summed over batch and positions (one matrix product per receiver
group), so no gradient tensor outlives its layer's backward.

Positions: with ``position_chunk`` the q/k/v backward computes the per-head input gradients ``[H, B, p, d]`` and
their score products ``p`` positions at a time (scores are sums over positions, the norm and the projections are
position-wise: the same scores up to float summation order). The forward, the attention's own backward (every
key position) and the single-receiver hooks (MLPs, logits: ``[1, B, P, d]``) are not chunked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from circuits.interventions.attention import project
from circuits.interventions.residual import PlainResidual, Receivers

if TYPE_CHECKING:  # pragma: no cover
    from circuits.graph.structure import GraphStructure
    from circuits.interventions.rules import BackwardRule
    from circuits.models.architectures import Attention, Norm


class GradientProbe(PlainResidual):
    """The plain residual stream, plus attribution: every receiver gets its own gradient (module docstring).

    ``ablated [S, B|1, P|1, d]``: the ablated sender outputs; ``scores [S, R]``: the accumulator the backward
    adds to. ``diffs [S, B, P, d]`` are the sender differences the scores weigh (clean - ablated for EAP-IG);
    when not given they are this run's own outputs minus ``ablated`` (EAP). ``overrides`` maps a sender index to
    the output it must write instead of its own (``[k, B, P, d]``: integrated gradients over activations; sender
    0, the input, ``[1, B, P, d]``). ``repeats``: the run holds T stacked copies of the batch (``T * B`` rows,
    e.g. EAP-IG's interpolation steps) that share ``diffs``; their gradients are summed before the score
    products, so T steps cost one. ``rule``: a backward rule (:mod:`circuits.interventions.rules`) in place of
    the gradient; the run must use ``rule.apply(spec)`` (``CircuitSession.backward_objective`` does), and the probe
    applies the rule's q/k/v scales and frozen norm to the q/k/v receivers it scores itself. ``position_chunk``:
    positions per chunk of the q/k/v backward (module docstring; None: all at once). ``positions``: score every
    position apart (position-aware edges): ``scores [S, R, L]`` with ``L`` at least this run's ``P`` positions,
    ``scores[s, r, p] += sum_b diff_s[b, p] . dM/d input_r[b, p]``; the sender differences are then held
    position-major (``[P, S, B*d]``), so each receiver group's scores are one batched product over positions.
    """

    def __init__(self, ablated: Tensor, scores: Tensor, diffs: Tensor | None = None,
                 overrides: dict[int, Tensor] | None = None, repeats: int = 1, rule: BackwardRule | None = None,
                 position_chunk: int | None = None, positions: bool = False):
        if repeats != 1 and diffs is None:
            raise ValueError("stacked copies (repeats > 1) need shared diffs: a run's own outputs differ per copy")
        super().__init__(record=False)
        self.per_head = True  # every head's output is a sender the scores weigh
        self.keeps_every_position = True  # differentiated: outputs at every position
        self.repeats = int(repeats)
        self.overrides = overrides or {}
        self.ablated = ablated  # [S, B|1, P|1, d]
        self.scores = scores  # [S, R] accumulator
        self.diffs = diffs
        self.rule = rule
        self.qkv_scale = (1.0, 1.0, 1.0) if rule is None else rule.qkv_scale
        self.position_chunk = position_chunk
        self.positions = positions
        if positions and scores.dim() != 3:
            raise ValueError(f"positions=True scores every position: give scores [S, R, L], got {tuple(scores.shape)}")
        if not positions and scores.dim() != 2:
            raise ValueError(f"scores must be [S, R] (or [S, R, L] with positions=True), got {tuple(scores.shape)}")

    def begin(self, first: Tensor, structure: GraphStructure) -> Tensor:
        super().begin(first, structure)
        if 0 in self.overrides:
            first = self.overrides[0][0]
        elif not first.requires_grad:
            first = first.detach().requires_grad_(torch.is_grad_enabled())
        S = self.scores.shape[0]
        self.own_diffs = self.diffs is None
        B, P, d = first.shape
        if self.positions:
            if P > self.scores.shape[-1]:
                raise ValueError(f"this run has {P} positions but the scores hold {self.scores.shape[-1]}")
            self.buffer = (first.new_empty(P, S, B * d) if self.diffs is None else  # position-major [P, S, B*d]
                           self.diffs.permute(2, 0, 1, 3).reshape(P, S, -1))  # shared by T stacked copies
        else:
            self.buffer = first.new_empty(S, first.numel()) if self.diffs is None else self.diffs.reshape(S, -1)
        self.stream = first
        self.n_written = 0
        self._record(first[None])
        self.n_written = 1
        return first

    def _record(self, outputs: Tensor) -> None:  # [k, B, P, d]
        if self.own_diffs:
            n, k = self.n_written, outputs.shape[0]
            diff = outputs.detach() - self.ablated[n:n + k]  # [k, B, P, d]
            if self.positions:
                self.buffer[:, n:n + k] = diff.permute(2, 0, 1, 3).reshape(diff.shape[2], k, -1)
            else:
                self.buffer[n:n + k] = diff.reshape(k, -1)

    def _write(self, outputs: Tensor) -> None:  # [k, B, P, d]: the next k senders
        if self.n_written in self.overrides:
            outputs = self.overrides[self.n_written]
        self._record(outputs)
        self.stream = self.stream + outputs.sum(0)
        self.n_written += outputs.shape[0]

    def read(self, receivers: Receivers, then: int | None = None) -> Tensor:
        """``[1, B, P, d]``: the stream. A single receiver (an MLP, the logits) gets its gradient from a hook
        here; a layer's q/k/v receivers share one normalised input, and :meth:`project_qkv` scores them."""
        if isinstance(receivers, int):
            receivers = slice(receivers, receivers + 1)
        assert isinstance(receivers, slice), "attribution reads whole receiver groups"
        x = self.stream[None]
        self.last_read = (self.n_written, receivers)
        if receivers.stop - receivers.start == 1 and x.requires_grad:
            x = x.view_as(x)  # a node of its own, so the hook sees this receiver's gradient only
            n = self.n_written
            x.register_hook(lambda grad, n=n, rs=receivers: self._score(grad, n, rs))
        if receivers.start == self.structure.logits_receiver:
            # the forward ends here. The graph's backward nodes refer to this probe (hooks, _ProbedProjection), so
            # a probe holding the graph through its stream would be a cycle that only the garbage collector frees:
            # every run's graph and buffer would stay alive across passes (eap-ig-activations' peak grew with steps)
            self.stream = self.stream.detach()
        return x

    def project_qkv(self, x: Tensor, attn: Attention, norm: Norm) -> tuple[Tensor, Tensor, Tensor] | None:
        """``q, k, v [H, B, P, e]`` of the heads that just read ``x [1, B, P, d]`` (one shared stream).

        The forward is the plain model's (one norm, one projection per weight). The backward gives every q, k
        and v receiver its own input gradient, ``norm_vjp(x, grad_h @ W_h^T)``, scores it at once, and hands
        upstream the sum of those gradients, which *is* the gradient of the shared stream: so autograd never
        differentiates the norm and the projections a second time (:class:`_ProbedProjection`).
        """
        if not x.requires_grad:  # no gradient to score (a probe run under torch.no_grad)
            return None
        n, receivers = self.last_read
        if any(t is not None and t.requires_grad for t in (attn.W_Q, attn.W_K, attn.W_V, norm.weight)):
            raise RuntimeError("attribution runs differentiate activations only: build the spec through "
                               "CircuitModel.spec, whose weight views carry no autograd history")
        return _ProbedProjection.apply(x, self, n, receivers.start, attn, norm, self.structure.n_kv_receivers)

    def _score(self, grad: Tensor, n: int, receivers: slice) -> None:  # grad [R, T*B, P, d]
        if self.positions:
            return self._score_by_position(grad, n, receivers, slice(0, grad.shape[2]))
        R = grad.shape[0]
        flat = grad.reshape(R, self.repeats, -1)  # T stacked copies of the batch (EAP-IG steps): sum them first
        flat = flat[:, 0] if self.repeats == 1 else flat.sum(1, dtype=torch.promote_types(flat.dtype, torch.float32))
        self.scores[:n, receivers] += _fp32_product(self.buffer[:n], flat)  # [n, R]

    def _score_positions(self, grad: Tensor, n: int, receivers: slice, positions: slice, P: int) -> None:
        """:meth:`_score` of ``grad [R, T*B, p, d]``, the gradient at ``positions`` (of ``P``) only."""
        if self.positions:
            return self._score_by_position(grad, n, receivers, positions)
        R, d = grad.shape[0], grad.shape[-1]
        p = positions.stop - positions.start
        acc = torch.promote_types(grad.dtype, torch.float32)  # half-precision products accumulate in float32
        flat = grad.reshape(R, self.repeats, -1, p * d).sum(1, dtype=acc)  # [R, B, p*d]: the stacked copies summed
        B = flat.shape[1]
        senders = self.buffer[:n].view(n, B, P * d)[:, :, positions.start * d:positions.stop * d]  # [n, B, p*d]
        # [B, n, R] -> [n, R]; a half-precision chunk is cast whole: it is p/P of the buffer
        contribution = torch.bmm(senders.transpose(0, 1).to(acc), flat.permute(1, 2, 0)).sum(0)
        self.scores[:n, receivers] += contribution.to(self.scores.dtype)


    def _score_by_position(self, grad: Tensor, n: int, receivers: slice, positions: slice) -> None:
        """Position-aware scores of ``grad [R, T*B, p, d]`` at ``positions``: ``[n, R, p]`` added, one batched
        product over the p positions (the stacked copies summed first, in float32 at least)."""
        R, p, d = grad.shape[0], grad.shape[2], grad.shape[3]
        acc = torch.promote_types(grad.dtype, torch.float32)
        g = grad.reshape(R, self.repeats, -1, p, d).sum(1, dtype=acc)  # [R, B, p, d]
        B = g.shape[1]
        g = g.permute(2, 1, 3, 0).reshape(p, B * d, R)  # [p, B*d, R], the buffer's (example, width) order
        senders = self.buffer[positions, :n]  # [p, n, B*d], a view
        if senders.dtype == acc:
            contribution = torch.bmm(senders, g)  # [p, n, R]
        else:  # half precision: a few positions' senders cast to float32 at a time, never the whole buffer
            step = max(1, FP32_CHUNK_ELEMENTS // max(1, senders[0].numel()))
            contribution = torch.cat([torch.bmm(senders[i:i + step].to(acc), g[i:i + step])
                                      for i in range(0, p, step)])  # [p, n, R]
        self.scores[:n, receivers, positions] += contribution.permute(1, 2, 0).to(self.scores.dtype)

#: Elements of one operand chunk that :func:`_fp32_product` casts to float32 at a time (16 MB).
FP32_CHUNK_ELEMENTS = 2**22


def _fp32_product(a: Tensor, b: Tensor) -> Tensor:
    """``a [n, K] @ b [R, K]^T`` accumulated in float32 (at least): ``[n, R]``.

    Half-precision operands (a bf16/fp16 model's sender differences and gradients) are cast in chunks of the
    reduction dimension ``K = B * P * d``, so no float32 copy of the whole ``[S, B*P*d]`` buffer is made and every
    partial sum is a float32 one (a bf16 matmul rounds its output to bf16: about 3 significant digits per batch).
    """
    acc = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    if a.dtype == acc and b.dtype == acc:
        return a @ b.T
    K = a.shape[1]
    step = max(1, FP32_CHUNK_ELEMENTS // max(a.shape[0], b.shape[0], 1))
    out = torch.zeros(a.shape[0], b.shape[0], dtype=acc, device=a.device)
    for k in range(0, K, step):
        out.addmm_(a[:, k:k + step].to(acc), b[:, k:k + step].to(acc).T)
    return out


class _ProbedProjection(torch.autograd.Function):
    """``norm(x) @ W_{Q,K,V}`` for all heads, whose backward scores each head's q/k/v receiver (see
    :meth:`GradientProbe.project_qkv`). Weights are constants here (attribution freezes them).

    ``G`` k (and v) receivers: ``H`` (MIB's, one per query head: k and v come out ``[H, B, P, e]``, each head's own
    gradient) or the key/value groups (grouped receivers: ``[G, B, P, e]``, made once; the attention hands them to
    the heads, so each arrives here with the sum of its heads' gradients, the group receiver's own)."""

    @staticmethod
    def forward(ctx, x: Tensor, probe: "GradientProbe", n: int, r0: int, attn, norm, G: int):  # x [1, B, P, d]
        H = attn.n_heads
        xn = norm(x)
        qkv = [project(xn, W, b, h) for W, b, h in ((attn.W_Q, attn.b_Q, H), (attn.W_K, attn.b_K, G),
                                                    (attn.W_V, attn.b_V, G))]
        ctx.probe, ctx.n, ctx.r0, ctx.attn, ctx.norm, ctx.sizes = probe, n, r0, attn, norm, (H, G, G)
        ctx.save_for_backward(x)
        return tuple(qkv)

    @staticmethod
    def backward(ctx, *grads: Tensor):  # q [H, B, P, e], k and v [G, B, P, e] (None when unused)
        (x,) = ctx.saved_tensors
        attn, norm, probe = ctx.attn, ctx.norm, ctx.probe
        x_hat, inv = _norm_stats(norm, x[0])  # [B, P, d], [B, P, 1]
        frozen = bool(getattr(norm, "frozen", False))  # a backward rule froze the norm's statistics
        total = torch.zeros_like(x_hat)
        P = x_hat.shape[1]
        step = probe.position_chunk or P
        r = ctx.r0
        for i, (g, W, size) in enumerate(zip(grads, (attn.W_Q, attn.W_K, attn.W_V), ctx.sizes)):
            r, first = r + size, r
            if g is None:
                continue
            if probe.qkv_scale[i] != 1.0:  # a backward rule's q/k/v gradient scale (GIM)
                g = g * probe.qkv_scale[i]
            receivers = slice(first, r)
            if step >= P:
                g_x = _norm_vjp_heads(norm, x_hat, inv, g, W, frozen)  # [H | G, B, P, d]: each receiver's own gradient
                probe._score(g_x, ctx.n, receivers)
                total += g_x.sum(0)
                continue
            for p0 in range(0, P, step):  # position chunks: g_x [H | G, B, p, d]
                at = slice(p0, min(P, p0 + step))
                g_x = _norm_vjp_heads(norm, x_hat[:, at], inv[:, at], g[:, :, at], W, frozen)
                probe._score_positions(g_x, ctx.n, receivers, at, P)
                total[:, at] += g_x.sum(0)
        return total[None].to(x.dtype), None, None, None, None, None, None


def _norm_stats(norm, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(x_hat, inv)`` of the norm at ``x [B, P, d]``: normalised input and 1/sigma (or 1/rms), ``[B, P, 1]``."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    if norm.kind == "layernorm":
        mu = xf.mean(-1, keepdim=True)
        inv = torch.rsqrt(((xf - mu) ** 2).mean(-1, keepdim=True) + norm.eps)
        return (xf - mu) * inv, inv
    inv = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps)
    return xf * inv, inv


def _norm_vjp_heads(norm, x_hat: Tensor, inv: Tensor, g: Tensor, W: Tensor, frozen: bool = False) -> Tensor:
    """Each head's gradient at the norm's input, from its projection gradient ``g [H, B, P, e]`` through
    ``norm(x) @ W_h`` (``W [K, d, e]``; head h uses ``W[h // (H / K)]``, grouped keys/values): ``[H, B, P, d]``.

    LayerNorm: ``inv * (gw - mean(gw) - x_hat * mean(gw * x_hat))`` with ``gw = (g @ W_h^T) * w``. The norm
    weight is folded into ``W``, and ``mean(gw)`` is a product with ``W``'s column sums, so the only passes over
    ``[H, B, P, d]`` are the projection, one reduction and two in-place updates. RMSNorm has no mean term.
    ``frozen``: the statistics are constants (a backward rule's frozen norm): ``inv * (gw - mean(gw))``.
    """
    K, d = W.shape[0], W.shape[1]
    H = g.shape[0]
    Ww = norm.weight.to(x_hat.dtype)[None, :, None] * W.to(x_hat.dtype)  # [K, d, e]
    gk = g.to(x_hat.dtype).reshape(K, H // K, *g.shape[1:])  # [K, H/K, B, P, e]
    gw = torch.einsum("kjbpe,kde->kjbpd", gk, Ww).reshape(H, *g.shape[1:3], d)  # [H, B, P, d]
    if not frozen:
        proj = torch.einsum("hbpd,bpd->hbp", gw, x_hat) / d  # mean(gw * x_hat)
        gw.addcmul_(x_hat[None], proj[..., None], value=-1.0)
    if norm.kind == "layernorm":
        mean = torch.einsum("kjbpe,ke->kjbp", gk, Ww.sum(1)).reshape(H, *g.shape[1:3]) / d  # mean(gw)
        gw.sub_(mean[..., None])
    return gw.mul_(inv[None]).to(g.dtype)


