"""What each receiver reads from the residual stream: the plain sum, or the edge-masked mix.

The decomposed forward (:mod:`circuits.interventions.forward`) writes every sender's output here and asks,
for each group of receivers, what they read. Two strategies answer the same question:

* :class:`PlainResidual` - the ordinary model: every receiver reads the running sum.
* :class:`MaskedResidual` - DESIGN.md's edge intervention. Receiver R reads
  ``sum_S m[S, R] * out_S + (1 - m[S, R]) * abl_S = sum_S abl_S + sum_S m[S, R] * (out_S - abl_S)``
  where ``out_S`` is sender S's output in *this* run and ``abl_S`` its ablated output (corrupted run,
  a mean, or zero). Masks are continuous, differentiable, and batched over circuits: ``m [C, S, R]`` runs
  C circuits on the same B examples as one batch of ``N = C * B`` rows.

Attention output biases belong to no head, so they are a constant of the stream (equal in clean and ablated
runs) and are added for every receiver after their layer, whatever the mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuits.graph.structure import GraphStructure


class PlainResidual:
    """The unmodified residual stream; optionally records each sender's output (an ablation cache)."""

    def __init__(self, first: Tensor, n_senders: int, record: bool = False):
        self.stream = first  # [N, P, d]
        self.n_written = 1
        self.record: list[Tensor] | None = [first] if record else None

    def write(self, outputs: Tensor, group: int | None = None) -> None:  # [k, N, P, d]: the next k senders
        self.stream = self.stream + outputs.sum(0)
        self.n_written += outputs.shape[0]
        if self.record is not None:
            self.record.append(outputs)

    def add_constant(self, bias: Tensor) -> None:
        self.stream = self.stream + bias

    def read(self, receivers: slice | int | list[int], then: int | None = None) -> Tensor:
        """``[1, N, P, d]``: every receiver reads the same stream (broadcast over receivers)."""
        return self.stream[None]

    def recorded(self) -> Tensor:
        """``[S, N, P, d]``: every sender's output, in sender order."""
        assert self.record is not None
        return torch.cat([self.record[0][None], *self.record[1:]])


class GradientProbe:
    """The plain residual stream, plus attribution: every receiver gets its own gradient.

    The forward is the plain model's; the backward yields ``dM/d input_R`` separately for every receiver (q,
    k and v of each head from :meth:`project_qkv`'s backward, each MLP and the logits from hooks on their
    input), and turns it at once into edge scores, ``scores[S, R] += diff_S . dM/d input_R`` summed over batch
    and positions (one matrix product per receiver group), so no gradient tensor outlives its layer's backward.

    ``diffs [S, B, P, d]`` are the sender differences the scores weigh (clean - ablated for EAP-IG); when not
    given they are this run's own outputs minus ``ablated`` (EAP). ``overrides`` maps a sender index to the
    output it must write instead of its own (``[k, B, P, d]``: integrated gradients over activations).
    ``repeats``: the run holds T stacked copies of the batch (``T * B`` rows, e.g. EAP-IG's interpolation
    steps) that share ``diffs``; their gradients are summed before the score products, so T steps cost one.
    """

    def __init__(self, first: Tensor, ablated: Tensor, scores: Tensor, diffs: Tensor | None = None,
                 overrides: dict[int, Tensor] | None = None, repeats: int = 1):
        if repeats != 1 and diffs is None:
            raise ValueError("stacked copies (repeats > 1) need shared diffs: a run's own outputs differ per copy")
        self.repeats = int(repeats)
        self.overrides = overrides or {}
        if 0 in self.overrides:
            first = self.overrides[0][0]
        self.ablated = ablated  # [S, B|1, P|1, d]
        self.scores = scores  # [S, R] accumulator
        S = scores.shape[0]
        self.shape = first.shape  # [B, P, d]
        self.own_diffs = diffs is None
        self.buffer = first.new_empty(S, first.numel()) if diffs is None else diffs.reshape(S, -1)
        self.stream = first
        self.n_written = 0
        self._record(first[None])
        self.n_written = 1

    def _record(self, outputs: Tensor) -> None:  # [k, B, P, d]
        if self.own_diffs:
            n, k = self.n_written, outputs.shape[0]
            self.buffer[n:n + k] = (outputs.detach() - self.ablated[n:n + k]).reshape(k, -1)

    def write(self, outputs: Tensor, group: int | None = None) -> None:  # [k, B, P, d]: the next k senders
        if self.n_written in self.overrides:
            outputs = self.overrides[self.n_written]
        self._record(outputs)
        self.stream = self.stream + outputs.sum(0)
        self.n_written += outputs.shape[0]

    def add_constant(self, bias: Tensor) -> None:
        self.stream = self.stream + bias

    def read(self, receivers: slice | int, then: int | None = None) -> Tensor:
        """``[1, B, P, d]``: the stream. A single receiver (an MLP, the logits) gets its gradient from a hook
        here; a layer's q/k/v receivers share one normalised input, and :meth:`project_qkv` scores them."""
        if isinstance(receivers, int):
            receivers = slice(receivers, receivers + 1)
        x = self.stream[None]
        self.last_read = (self.n_written, receivers)
        if receivers.stop - receivers.start == 1 and x.requires_grad:
            x = x.view_as(x)  # a node of its own, so the hook sees this receiver's gradient only
            n = self.n_written
            x.register_hook(lambda grad, n=n, rs=receivers: self._score(grad, n, rs))
        return x

    def project_qkv(self, x: Tensor, attn, norm) -> tuple[Tensor, Tensor, Tensor]:
        """``q, k, v [H, B, P, e]`` of the heads that just read ``x [1, B, P, d]`` (one shared stream).

        The forward is the plain model's (one norm, one projection per weight). The backward gives every q, k
        and v receiver its own input gradient, ``norm_vjp(x, grad_h @ W_h^T)``, scores it at once, and hands
        upstream the sum of those gradients, which *is* the gradient of the shared stream: so autograd never
        differentiates the norm and the projections a second time (:class:`_ProbedProjection`).
        """
        n, receivers = self.last_read
        if any(t is not None and t.requires_grad for t in (attn.W_Q, attn.W_K, attn.W_V, norm.weight)):
            raise RuntimeError("attribution runs differentiate activations only: build the spec through "
                               "CircuitModel.spec, whose weight views carry no autograd history")
        return _ProbedProjection.apply(x, self, n, receivers.start, attn, norm)

    def _score(self, grad: Tensor, n: int, receivers: slice) -> None:  # grad [R, T*B, P, d]
        R = grad.shape[0]
        flat = grad.reshape(R, self.repeats, -1)  # T stacked copies of the batch (EAP-IG steps): sum them first
        flat = flat[:, 0] if self.repeats == 1 else flat.sum(1)
        contribution = self.buffer[:n] @ flat.T  # [n, R]
        self.scores[:n, receivers] += contribution.to(self.scores.dtype)


class _ProbedProjection(torch.autograd.Function):
    """``norm(x) @ W_{Q,K,V}`` for all heads, whose backward scores each head's q/k/v receiver (see
    :meth:`GradientProbe.project_qkv`). Weights are constants here (attribution freezes them)."""

    @staticmethod
    def forward(ctx, x: Tensor, probe: "GradientProbe", n: int, r0: int, attn, norm):  # x [1, B, P, d]
        from circuits.interventions.forward import _project

        H = attn.n_heads
        xn = norm(x)
        qkv = [_project(xn, W, b, H) for W, b in ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V))]
        ctx.probe, ctx.n, ctx.r0, ctx.attn, ctx.norm = probe, n, r0, attn, norm
        ctx.save_for_backward(x)
        return tuple(qkv)

    @staticmethod
    def backward(ctx, *grads: Tensor):  # each [H, B, P, e] (None when unused)
        (x,) = ctx.saved_tensors
        attn, norm, probe = ctx.attn, ctx.norm, ctx.probe
        H = attn.n_heads
        x_hat, inv = _norm_stats(norm, x[0])  # [B, P, d], [B, P, 1]
        total = torch.zeros_like(x_hat)
        for i, (g, W) in enumerate(zip(grads, (attn.W_Q, attn.W_K, attn.W_V))):
            if g is None:
                continue
            g_x = _norm_vjp_heads(norm, x_hat, inv, g, W)  # [H, B, P, d]: each head's own input gradient
            probe._score(g_x, ctx.n, slice(ctx.r0 + i * H, ctx.r0 + (i + 1) * H))
            total += g_x.sum(0)
        return total[None].to(x.dtype), None, None, None, None, None


def _norm_stats(norm, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(x_hat, inv)`` of the norm at ``x [B, P, d]``: normalised input and 1/sigma (or 1/rms), ``[B, P, 1]``."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    if norm.kind == "layernorm":
        mu = xf.mean(-1, keepdim=True)
        inv = torch.rsqrt(((xf - mu) ** 2).mean(-1, keepdim=True) + norm.eps)
        return (xf - mu) * inv, inv
    inv = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps)
    return xf * inv, inv


def _norm_vjp_heads(norm, x_hat: Tensor, inv: Tensor, g: Tensor, W: Tensor) -> Tensor:
    """Each head's gradient at the norm's input, from its projection gradient ``g [H, B, P, e]`` through
    ``norm(x) @ W_h`` (``W [K, d, e]``; head h uses ``W[h // (H / K)]``, grouped keys/values): ``[H, B, P, d]``.

    LayerNorm: ``inv * (gw - mean(gw) - x_hat * mean(gw * x_hat))`` with ``gw = (g @ W_h^T) * w``. The norm
    weight is folded into ``W``, and ``mean(gw)`` is a product with ``W``'s column sums, so the only passes over
    ``[H, B, P, d]`` are the projection, one reduction and two in-place updates. RMSNorm has no mean term.
    """
    K, d = W.shape[0], W.shape[1]
    H = g.shape[0]
    Ww = norm.weight.to(x_hat.dtype)[None, :, None] * W.to(x_hat.dtype)  # [K, d, e]
    gk = g.to(x_hat.dtype).reshape(K, H // K, *g.shape[1:])  # [K, H/K, B, P, e]
    gw = torch.einsum("kjbpe,kde->kjbpd", gk, Ww).reshape(H, *g.shape[1:3], d)  # [H, B, P, d]
    proj = torch.einsum("hbpd,bpd->hbp", gw, x_hat) / d  # mean(gw * x_hat)
    gw.addcmul_(x_hat[None], proj[..., None], value=-1.0)
    if norm.kind == "layernorm":
        mean = torch.einsum("kjbpe,ke->kjbp", gk, Ww.sum(1)).reshape(H, *g.shape[1:3]) / d  # mean(gw)
        gw.sub_(mean[..., None])
    return gw.mul_(inv[None]).to(g.dtype)


class MaskedResidual:
    """Edge-masked residual stream for ``C`` circuits at once.

    ``masks``: ``[C, S, R]`` (or ``[S, R]`` for one circuit) in ``[0, 1]``; ``ablated``: ``[S, B, P, d]``
    or anything that broadcasts to it (``[S, 1, P, d]`` per-position means, ``[S, 1, 1, d]`` zero).
    Only entries where the edge exists are read (a receiver sees the senders before it).

    The cost is memory traffic, not arithmetic, so: sender differences ``out - ablated`` live in one
    contiguous buffer ``[C, 1 + A, B*P*d]`` whose row 0 is the base (ablated outputs and biases, mask 1), so
    each read is a single matrix product per circuit with no separate add; and when a layer's heads read the
    buffer, the same pass can start the mix of that layer's MLP (``then=``), which then only adds the heads
    written since. :class:`_MixSenders` keeps autograd exact through the buffer.

    ``active [S]`` (bool, runs without gradients): the senders the forward computes; the others are skipped
    (their difference is zero in every circuit, or never read) and only their ablated output enters the base.
    With ``shared`` such runs also hold what is the same in every circuit once, not C times: the base, the input
    embedding and the senders written with ``held=`` (outputs cached from a reference run) sit in a shared
    buffer ``[1 + A, B*P*d]`` that every circuit's read multiplies by its own mask rows (without ``held``
    senders that is one more product per read than the single one above, so it is asked for only with them).
    """

    def __init__(self, first: Tensor, masks: Tensor, ablated: Tensor, structure: GraphStructure,
                 active: Tensor | None = None, shared: bool = False):
        if masks.dim() == 2:
            masks = masks[None]
        S = structure.n_senders
        self.C, _, self.R = masks.shape
        self.ablated = ablated  # [S, B|1, P|1, d]
        self.B, self.P, self.d = first.shape
        self.n_upstream = structure.n_upstream.tolist()
        act = torch.ones(S, dtype=torch.bool) if active is None else active.detach().cpu().bool().clone()
        act[0] = True  # the input embedding is always written
        self.active = act.tolist()
        A = int(act.sum())
        self.masks = masks.to(first.dtype)  # [C, S, R]
        self.sharing = shared and active is not None
        X = self.B * self.P * self.d
        self.buffer = first.new_empty(self.C, 1 + A, X)  # per-circuit rows (row 0: the base, without sharing)
        self.shared = first.new_empty(1 + A, X) if self.sharing else None  # rows the same in every circuit
        self.rows: list[int] = []  # the senders in buffer rows 1, 2, ... (in order)
        self.shared_rows: list[int] = []  # the senders in shared rows 1, 2, ...
        self.chunks: list[tuple[int, Tensor]] = []  # (first buffer row, autograd-tracked diff [k, C, B, P, d])
        self.n_written = 0  # senders accounted for, written or skipped
        self.base = torch.zeros((), dtype=first.dtype, device=first.device)  # sum of ablated outputs + biases
        self.partial: dict[int, tuple[int, Tensor, Tensor]] = {}  # receiver -> (senders mixed, sum, base then)
        self._ones = torch.ones(self.C, 1, self.R, dtype=first.dtype, device=first.device)
        if self.sharing:
            self.write(None, 1, held=first[None])
        else:
            self.write(first[None, None].expand(1, self.C, *first.shape), 1)

    @property
    def N(self) -> int:
        return self.C * self.B

    def _ablated_of(self, senders: list[int]) -> Tensor:  # [k, B|1, P|1, d]
        a, k = senders[0], len(senders)
        return self.ablated[a:a + k] if senders[-1] - a == k - 1 else self.ablated[senders]

    def write(self, outputs: Tensor | None, group: int | None = None, *, held: Tensor | None = None,
              held_senders: list[int] | None = None) -> None:
        """The next ``group`` senders (default: as many as given). ``outputs [k, N, P, d]`` (or
        ``[k, C, B, P, d]``): those computed in this run, in order; ``held [h, B, P, d]``: outputs that are the
        same in every circuit, of ``held_senders`` (default: the first ``h`` of the group). Together they are
        exactly the group's active senders."""
        n = self.n_written
        k = 0 if outputs is None else outputs.shape[0]
        h = 0 if held is None else held.shape[0]
        group = k + h if group is None else group
        if held is not None and held_senders is None:
            held_senders = list(range(n, n + h))
        held_set = set(held_senders or ())
        active = [s for s in range(n, n + group) if self.active[s]]
        computed = [s for s in active if s not in held_set]
        assert len(computed) == k and len(active) == k + h, "write the outputs of exactly the active senders"
        self.base = self.base + self.ablated[n:n + group].sum(0)  # every sender's ablated output, skipped or not
        if h and self.sharing:
            at = len(self.shared_rows) + 1
            rows = self.shared[at:at + h].view(h, self.B, self.P, self.d)
            torch.sub(held, self._ablated_of(held_senders), out=rows)
            self.shared_rows += held_senders
        elif h:  # with gradients every circuit has its own rows: the held outputs are copied C times
            expanded = held[:, None].expand(h, self.C, *held.shape[1:])
            self._write_rows(held_senders, expanded)
        if k:
            view = outputs if outputs.dim() == 5 else outputs.view(k, self.C, self.B, self.P, self.d)
            self._write_rows(computed, view)
        self.n_written += group

    def _write_rows(self, senders: list[int], outputs: Tensor) -> None:  # outputs [k, C, B, P, d]
        k = len(senders)
        at = len(self.rows) + 1
        abl = self._ablated_of(senders)[:, None]  # [k, 1, B|1, P|1, d]
        rows = self.buffer[:, at:at + k].transpose(0, 1).view(outputs.shape)
        if torch.is_grad_enabled() and (outputs.requires_grad or abl.requires_grad):
            diff = outputs - abl
            rows.copy_(diff.detach())
        else:  # no autograd: write the difference straight into the buffer, one pass
            diff = torch.sub(outputs, abl, out=rows)
        self.chunks.append((at, diff))
        self.rows += senders

    def add_constant(self, bias: Tensor) -> None:
        self.base = self.base + bias

    def _flat_base(self) -> Tensor:  # [X]
        return self.base.expand(self.B, self.P, self.d).reshape(-1)

    def _mask_rows(self, senders: list[int], receivers: slice | list[int]) -> Tensor:  # [C, n, R]
        a, k = senders[0], len(senders)
        m = self.masks[:, a:a + k] if senders[-1] - a == k - 1 else self.masks[:, senders]
        if isinstance(receivers, slice):
            return m[:, :, receivers]
        return m.index_select(2, torch.as_tensor(receivers, device=m.device))

    def _mix(self, receivers: slice | list[int], start: int) -> Tensor:
        """``[R, C, X]``: mask-weighted sum of senders ``start .. n_written`` (plus the base when start is 0)."""
        import bisect

        n_r = receivers.stop - receivers.start if isinstance(receivers, slice) else len(receivers)
        out = None
        c0 = bisect.bisect_left(self.rows, start)  # index in self.rows of the first sender to mix
        if c0 < len(self.rows) or (start == 0 and not self.sharing):
            chunks = [c for r, c in self.chunks if r >= c0 + 1]
            m = self._mask_rows(self.rows[c0:], receivers) if c0 < len(self.rows) else self._ones[:, :0, :n_r]
            if start == 0 and not self.sharing:
                self.buffer[:, 0] = self._flat_base()
                m = torch.cat([self._ones[:, :, :n_r], m], dim=1)  # [C, 1 + n, R]
                out = _MixSenders.apply(m, self.buffer, 0, len(self.rows) + 1, *chunks).transpose(0, 1)
            else:
                out = _MixSenders.apply(m, self.buffer, c0 + 1, len(self.rows) + 1, *chunks).transpose(0, 1)
        if self.sharing:
            s0 = bisect.bisect_left(self.shared_rows, start)
            if start == 0:
                self.shared[0] = self._flat_base()
                first_row = 0
            else:
                first_row = s0 + 1
            n_s = len(self.shared_rows) + 1 - first_row
            if n_s:
                m = self._mask_rows(self.shared_rows[s0:], receivers) if s0 < len(self.shared_rows) else None
                if start == 0:
                    m = self._ones[:, :, :n_r] if m is None else torch.cat([self._ones[:, :, :n_r], m], dim=1)
                rows = self.shared[first_row:first_row + n_s]  # [n, X]
                part = torch.matmul(m.permute(2, 0, 1).reshape(n_r * self.C, n_s), rows).view(n_r, self.C, -1)
                out = part if out is None else part.add_(out)
        return out

    def read(self, receivers: slice | int | list[int], then: int | None = None) -> Tensor:
        """``[R, N, P, d]``: each receiver's own masked mix of the senders written so far. ``then``: a receiver
        read next whose mix can start in this pass (a layer's MLP, read after its heads)."""
        if isinstance(receivers, int):
            receivers = [receivers]
        listed = list(range(receivers.start, receivers.stop)) if isinstance(receivers, slice) else list(receivers)
        assert all(self.n_upstream[r] == self.n_written for r in listed), \
            "receivers must read exactly the senders written before them"
        R = len(listed)
        if R == 1 and listed[0] in self.partial:  # finish a sum begun when earlier receivers read the buffer
            done, mixed, base_then = self.partial.pop(listed[0])
            if self.base is not base_then:
                mixed = mixed + (self.base - base_then).expand(self.B, self.P, self.d).reshape(-1)
            if (self.rows and self.rows[-1] >= done) or (self.shared_rows and self.shared_rows[-1] >= done):
                mixed = mixed + self._mix(listed, done)
        else:
            ahead = then is not None and R > 1 and self.n_upstream[then] >= self.n_written
            index = receivers if isinstance(receivers, slice) and not ahead else listed + ([then] if ahead else [])
            if isinstance(receivers, slice) and ahead and then == receivers.stop:
                index = slice(receivers.start, then + 1)  # contiguous: a view of the masks, no gather
            mixed = self._mix(index, 0)  # [R (+1), C, X]
            if ahead:
                self.partial[then] = (self.n_written, mixed[-1:], self.base)
                mixed = mixed[:-1]
        return mixed.reshape(R, self.N, self.P, self.d)


class _MixSenders(torch.autograd.Function):
    """``out[c] = m[c]^T @ buffer[c, start:stop]``, differentiated into the masks and into each sender-diff
    chunk (so gradients reach upstream senders, as EAP needs). Sender rows never change once written, so
    the backward pass reads them in place; the base row (row 0, mask fixed at 1) takes no gradient."""

    @staticmethod
    def forward(ctx, m: Tensor, buffer: Tensor, start: int, stop: int, *chunks: Tensor) -> Tensor:
        rows = buffer[:, start:stop]  # [C, n, X]
        ctx.with_base = start == 0
        ctx.rows = rows[:, 1:] if ctx.with_base else rows
        ctx.chunk_shapes = [c.shape for c in chunks]
        ctx.save_for_backward(m)
        return torch.bmm(m.transpose(1, 2), rows)  # [C, R, X]

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # [C, R, X]
        (m,) = ctx.saved_tensors
        if ctx.with_base:
            m = m[:, 1:]
        needs = ctx.needs_input_grad
        grad_m = None
        if needs[0]:
            grad_m = torch.bmm(ctx.rows, grad_out.transpose(1, 2))  # [C, n, R]
            if ctx.with_base:
                grad_m = torch.cat([torch.zeros_like(grad_m[:, :1]), grad_m], dim=1)
        grads: list[Tensor | None] = [None] * len(ctx.chunk_shapes)
        if any(needs[4:]):
            grad_rows = torch.bmm(m, grad_out)  # [C, n, X]
            at = 0
            for i, shape in enumerate(ctx.chunk_shapes):  # [k, C, B, P, d]
                grads[i] = grad_rows[:, at:at + shape[0]].transpose(0, 1).reshape(shape)
                at += shape[0]
        return (grad_m, None, None, None, *grads)
