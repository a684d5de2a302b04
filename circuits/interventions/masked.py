"""Edge-masked residual streams: DESIGN.md's edge intervention for C circuits at once, and its incremental form.

Receiver R reads ``sum_S m[S, R] * out_S + (1 - m[S, R]) * abl_S = sum_S abl_S + sum_S m[S, R] * (out_S - abl_S)``
where ``out_S`` is sender S's output in *this* run and ``abl_S`` its ablated output (corrupted run, a mean, or
zero). Masks are continuous, differentiable, and batched over circuits: ``m [C, S, R]`` runs C circuits on the
same B examples as one batch of ``N = C * B`` rows.

Two savings, each exact by construction:

* :class:`MaskedResidual` skips idle nodes in runs without gradients: a node with no outgoing edge in any of the
  C circuits is never read, and, when the ablated outputs are a run (:attr:`Ablated.is_a_run`, the corrupted
  ablation), a node none of whose incoming edges is kept writes exactly its ablated output. Small circuits then
  cost a fraction of a forward.
* :class:`IncrementalResidual` holds every sender's output in a circuit run before (:class:`HeldCircuit`) and
  recomputes only the nodes whose input differs from it in some candidate, and their descendants: the set is
  derived from the masks, never given, so a candidate cannot read a stale output.

:class:`PositionMaskedResidual` is the same intervention with a position axis, ``m [C, S, R, P]``: position-aware
circuits, whose edges may be kept at some positions only.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from circuits.interventions.ablation import Ablated, as_ablated
from circuits.interventions.residual import Receivers, ResidualStrategy

if TYPE_CHECKING:  # pragma: no cover
    from circuits.graph.structure import GraphStructure


def active_senders(structure: GraphStructure, masks: Tensor, ablated_is_a_run: bool) -> Tensor:
    """``[S]`` bool: the senders a patched run of ``masks [C, S, R]`` must compute. A sender is needed when, in
    some circuit, one of its outgoing edges is in the circuit and (if the ablated outputs are a run) so is one of
    its incoming edges; otherwise its output in every circuit is either never read or exactly its ablated one."""
    m = masks.detach()
    m = (m[None] if m.dim() == 2 else m) != 0
    m = m & structure.edge_mask.to(m.device)
    needed = m.any(2)  # [C, S]: feeds something
    if ablated_is_a_run:
        fed = structure.nodes_fed(m.any(1))  # [C, S + 1]: nodes with an input edge
        fed[:, 0] = True  # the input embedding is its own source
        needed = needed & fed[:, :-1]
    return needed.any(0).cpu()


class MaskedResidual(ResidualStrategy):
    """Edge-masked residual stream for ``C`` circuits at once (module docstring).

    ``masks``: ``[C, S, R]`` (or ``[S, R]`` for one circuit) in ``[0, 1]``; ``ablated``: :class:`Ablated` (or a
    tensor, taken as ``given``) ``[S, B, P, d]`` or anything that broadcasts to it (``[S, 1, P, d]``
    per-position means, ``[S, 1, 1, d]`` zero). Only entries where the edge exists are read. ``record``: the run
    of one circuit returns every sender's output in it (a skipped sender's entry is its ablated output, what
    every receiver reads from it).

    The cost is memory traffic, not arithmetic, so: sender differences ``out - ablated`` live in one
    contiguous buffer ``[C, 1 + A, B*P*d]`` whose row 0 is the base (ablated outputs and biases, mask 1), so
    each read is a single matrix product per circuit with no separate add; and when a layer's heads read the
    buffer, the same pass can start the mix of that layer's MLP (``then=``), which then only adds the heads
    written since. :class:`_MixSenders` keeps autograd exact through the buffer. Runs that hold outputs
    (:class:`IncrementalResidual`) keep what is the same in every circuit once, not C times: the base, the input
    embedding and the held senders sit in a shared buffer ``[1 + A, B*P*d]`` that every circuit's read
    multiplies by its own mask rows.
    """

    per_head = True
    _shares = False  # hold the rows common to every circuit once (subclasses that hold outputs)
    _mask_dims = 3  # [C, S, R]

    def __init__(self, masks: Tensor, ablated: Ablated | Tensor, *, record: bool = False):
        self.circuit_axis = masks.dim() == self._mask_dims
        self.masks_in = masks if masks.dim() == self._mask_dims else masks[None]  # [C, S, R]
        self.n_circuits = self.masks_in.shape[0]
        self.abl = as_ablated(ablated)
        if record and self.n_circuits != 1:
            raise ValueError("record=True records one run: give the masks of one circuit")
        self.record = record
        self.keeps_every_position = record
        self.recording: Tensor | None = None

    def begin(self, first: Tensor, structure: GraphStructure) -> Tensor:
        super().begin(first, structure)
        B, P, d = first.shape
        masks, values = self.masks_in, self.abl.values
        S = structure.n_senders
        self._check_masks(structure, P)
        if values.shape[0] != S or values.shape[-1] != d:
            raise ValueError(f"ablated sender outputs must be [S={S}, B, P, d={d}] (or broadcastable), "
                             f"got {tuple(values.shape)}")
        if values.shape[1] not in (1, B) or values.shape[2] not in (1, P):
            raise ValueError(f"ablated outputs {tuple(values.shape)} do not broadcast to batch {B} x {P} positions: "
                             "build them from the same batch (corrupted ablation) or as means ([S, 1, P, d]).")
        is_a_run = self.abl.is_a_run and tuple(values.shape[1:3]) == (B, P)
        active = None
        if not (masks.requires_grad or values.requires_grad):
            active = active_senders(structure, self._edge_view(), is_a_run)
        self._setup(first, values.to(first.dtype), structure, active)
        if self.record:
            self.recording = self.ablated.expand(S, B, P, d).clone()
            self.recording[0] = first
        return first

    def _check_masks(self, structure: GraphStructure, P: int) -> None:
        S, R = structure.n_senders, structure.n_receivers
        if tuple(self.masks_in.shape[-2:]) != (S, R):
            raise ValueError(f"masks must be [S, R] or [C, S, R] with S={S} senders and R={R} receivers "
                             f"({structure.describe()}), got {tuple(self.masks_in.shape)}")

    def _edge_view(self) -> Tensor:  # [C, S, R]: which edges any position of a circuit keeps
        return self.masks_in

    def _new_buffer(self, first: Tensor, rows: int) -> Tensor:  # [C, rows, B*P*d]
        return first.new_empty(self.C, rows, self.B * self.P * self.d)

    def _setup(self, first: Tensor, ablated: Tensor, structure: GraphStructure, active: Tensor | None) -> None:
        masks = self.masks_in
        S = structure.n_senders
        self.C, self.R = masks.shape[0], masks.shape[2]
        self.ablated = ablated  # [S, B|1, P|1, d]
        self.B, self.P, self.d = first.shape
        self.n_upstream = structure.n_upstream.tolist()
        act = torch.ones(S, dtype=torch.bool) if active is None else active.detach().cpu().bool().clone()
        act[0] = True  # the input embedding is always written
        self.skipping = active is not None
        self.active = act.tolist()
        A = int(act.sum())
        self.masks = masks.to(first.dtype)  # [C, S, R]
        self.sharing = self._shares and active is not None
        X = self.B * self.P * self.d
        self.buffer = self._new_buffer(first, 1 + A)  # per-circuit rows (row 0: the base, without sharing)
        self.shared = first.new_empty(1 + A, X) if self.sharing else None  # rows the same in every circuit
        self.rows: list[int] = []  # the senders in buffer rows 1, 2, ... (in order)
        self.shared_rows: list[int] = []  # the senders in shared rows 1, 2, ...
        self.chunks: list[tuple[int, Tensor]] = []  # (first buffer row, autograd-tracked diff [k, C, B, P, d])
        self.n_written = 0  # senders accounted for, written or skipped
        self.base = torch.zeros((), dtype=first.dtype, device=first.device)  # sum of ablated outputs + biases
        self.partial: dict[int, tuple[int, Tensor, Tensor]] = {}  # receiver -> (senders mixed, sum, base then)
        self._ones = torch.ones(self.C, 1, self.R, dtype=first.dtype, device=first.device)
        if self.sharing:
            self._write(None, 1, held=first[None])
        else:
            self._write(first[None, None].expand(1, self.C, *first.shape), 1)

    # ---- the forward's interface ------------------------------------------------------------------------------
    def heads(self, layer: int) -> list[int]:
        start = self.structure.layer_senders(layer).start
        return [h for h in range(self.structure.n_heads) if self._computes(start + h)]

    def computes_mlp(self, layer: int) -> bool:
        return self.structure.has_mlp and self._computes(self.structure.mlp_sender(layer))

    def _computes(self, sender: int) -> bool:
        return self.active[sender]

    def _held(self, senders: list[int]) -> dict:  # _write() arguments for active senders this run does not compute
        return {}

    def write_heads(self, layer: int, heads: list[int], outputs: Tensor | None) -> None:
        start = self.structure.layer_senders(layer).start
        senders = [start + h for h in heads]
        computed = set(heads)
        rest = [start + h for h in range(self.structure.n_heads) if self.active[start + h] and h not in computed]
        self._note(senders, outputs)
        self._write(outputs, group=self.structure.n_heads, **self._held(rest))

    def write_mlp(self, layer: int, output: Tensor | None) -> None:
        sender = self.structure.mlp_sender(layer)
        if output is not None:
            self._note([sender], output)
        self._write(output, group=1, **self._held([sender] if output is None and self.active[sender] else []))

    def _note(self, senders: list[int], outputs: Tensor | None) -> None:  # outputs [k, N, P, d] of a recorded run
        if self.recording is not None and senders and outputs is not None:
            self.recording[senders] = outputs.reshape(len(senders), self.B, self.P, -1)

    def recorded(self) -> Tensor | None:
        return self.recording

    @property
    def N(self) -> int:
        return self.C * self.B

    def _ablated_of(self, senders: list[int]) -> Tensor:  # [k, B|1, P|1, d]
        a, k = senders[0], len(senders)
        return self.ablated[a:a + k] if senders[-1] - a == k - 1 else self.ablated[senders]

    def _write(self, outputs: Tensor | None, group: int | None = None, *, held: Tensor | None = None,
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
        held_senders = held_senders or []
        held_set = set(held_senders)
        active = [s for s in range(n, n + group) if self.active[s]]
        computed = [s for s in active if s not in held_set]
        assert len(computed) == k and len(active) == k + h, "write the outputs of exactly the active senders"
        self.base = self.base + self.ablated[n:n + group].sum(0)  # every sender's ablated output, skipped or not
        if held is not None and self.shared is not None:
            at = len(self.shared_rows) + 1
            rows = self.shared[at:at + h].view(h, self.B, self.P, self.d)
            torch.sub(held, self._ablated_of(held_senders), out=rows)
            self.shared_rows += held_senders
        elif held is not None:  # with gradients every circuit has its own rows: the held outputs are copied C times
            expanded = held[:, None].expand(h, self.C, *held.shape[1:])
            self._write_rows(held_senders, expanded)
        if outputs is not None:
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
        n_r = receivers.stop - receivers.start if isinstance(receivers, slice) else len(receivers)
        out: Tensor | None = None
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
        if self.shared is not None:
            s0 = bisect.bisect_left(self.shared_rows, start)
            if start == 0:
                self.shared[0] = self._flat_base()
                first_row = 0
            else:
                first_row = s0 + 1
            n_s = len(self.shared_rows) + 1 - first_row
            if n_s:
                shared_m = self._mask_rows(self.shared_rows[s0:], receivers) if s0 < len(self.shared_rows) else None
                if start == 0:
                    ones = self._ones[:, :, :n_r]
                    m = ones if shared_m is None else torch.cat([ones, shared_m], dim=1)
                else:
                    assert shared_m is not None
                    m = shared_m
                rows = self.shared[first_row:first_row + n_s]  # [n, X]
                part = torch.matmul(m.permute(2, 0, 1).reshape(n_r * self.C, n_s), rows).view(n_r, self.C, -1)
                out = part if out is None else part.add_(out)
        assert out is not None, "a read mixes at least the base"
        return out

    def read(self, receivers: Receivers, then: int | None = None) -> Tensor:
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
            wanted = listed + [then] if then is not None and ahead else listed
            same = self._same_mix(wanted)
            if same is not None:  # [U, C, X]: one mix per distinct mask column
                unique, inverse = same
                mixed = self._mix(unique, 0)
                if then is not None and ahead:
                    last = int(inverse[-1])
                    self.partial[then] = (self.n_written, mixed[last:last + 1].clone(), self.base)  # frees the mix
                    inverse = inverse[:-1]
                if bool((inverse == inverse[0]).all()):  # one stream for all: the forward normalises it once
                    return mixed[int(inverse[0])].reshape(1, self.N, self.P, self.d)
                mixed = mixed.index_select(0, inverse.to(mixed.device))
                return mixed.reshape(R, self.N, self.P, self.d)
            index: slice | list[int] = receivers if isinstance(receivers, slice) and not ahead else wanted
            if isinstance(receivers, slice) and then is not None and ahead and then == receivers.stop:
                index = slice(receivers.start, then + 1)  # contiguous: a view of the masks, no gather
            mixed = self._mix(index, 0)  # [R (+1), C, X]
            if then is not None and ahead:
                self.partial[then] = (self.n_written, mixed[-1:].clone(), self.base)  # not the whole mix held
                mixed = mixed[:-1]
        return mixed.reshape(R, self.N, self.P, self.d)

    def _same_mix(self, receivers: list[int]) -> tuple[list[int], Tensor] | None:
        """Receivers whose masks over the senders written so far are the same in every circuit read the same mix
        (downstream of a single cut, every q, k, v and MLP input of a layer): ``(one receiver per distinct mix,
        [len(receivers)] index of each one's)``, or None when all differ or the masks take gradients (each
        receiver's mask entries then need their own gradient)."""
        if len(receivers) < 2 or self.masks.requires_grad:
            return None
        cols = self.masks[:, :self.n_written].index_select(2, torch.as_tensor(receivers, device=self.masks.device))
        cols = cols.permute(2, 0, 1).reshape(len(receivers), -1)  # [R', C * n_written]
        distinct, inverse = torch.unique(cols, dim=0, return_inverse=True)
        if distinct.shape[0] == len(receivers):
            return None
        first = torch.full((distinct.shape[0],), len(receivers), dtype=torch.long, device=inverse.device)
        first.scatter_reduce_(0, inverse, torch.arange(len(receivers), device=inverse.device), reduce="amin")
        order = first.argsort()  # distinct mixes in the order their first receiver comes
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order), device=order.device)
        return [receivers[int(i)] for i in first[order]], rank[inverse].cpu()



class PositionMaskedResidual(MaskedResidual):
    """:class:`MaskedResidual` whose masks carry a position axis: ``m [C, S, R, P]`` (or ``[S, R, P]``).

    Receiver R at position p reads ``sum_S abl_S[p] + m[S, R, p] * (out_S[p] - abl_S[p])``: the edge intervention
    of position-aware circuits (Haklay et al. 2025), where an edge may be in the circuit at some positions only.
    Positions are those of this run's batch (``P`` of the input); a session slices longer masks to its batches.

    The sender differences live position-major, ``[C, P, 1 + A, B*d]``, so a read is one batched product over
    (circuit, position) pairs, ``[R, n] @ [n, B*d]`` each, with no copy of the buffer. Runs without gradients only
    (attribution scores positions through :class:`~circuits.interventions.probe.GradientProbe`); idle senders are
    skipped as in the parent (a sender is idle when no position of any circuit uses its edges).
    """

    _mask_dims = 4  # [C, S, R, P]

    def __init__(self, masks: Tensor, ablated: Ablated | Tensor, *, record: bool = False):
        if masks.dim() not in (3, 4):
            raise ValueError(f"position masks must be [S, R, P] or [C, S, R, P], got {tuple(masks.shape)}")
        if masks.requires_grad:
            raise ValueError("position masks run without gradients: score positions with "
                             "GradientProbe(positions=True), or give masks that do not require grad")
        super().__init__(masks, ablated, record=record)

    def _check_masks(self, structure: GraphStructure, P: int) -> None:
        S, R = structure.n_senders, structure.n_receivers
        if tuple(self.masks_in.shape[1:]) != (S, R, P):
            raise ValueError(f"position masks must be [S, R, P] or [C, S, R, P] with S={S} senders, R={R} receivers "
                             f"({structure.describe()}) and P={P} positions of this batch, got "
                             f"{tuple(self.masks_in.shape)}")

    def _edge_view(self) -> Tensor:  # [C, S, R]
        return self.masks_in.detach().ne(0).any(-1)

    def _new_buffer(self, first: Tensor, rows: int) -> Tensor:  # [C, P, rows, B*d]
        return first.new_empty(self.C, self.P, rows, self.B * self.d)

    def _write_rows(self, senders: list[int], outputs: Tensor) -> None:  # outputs [k, C, B, P, d]
        k = len(senders)
        at = len(self.rows) + 1
        abl = self._ablated_of(senders)[:, None]  # [k, 1, B|1, P|1, d]
        rows = self.buffer[:, :, at:at + k].view(self.C, self.P, k, self.B, self.d).permute(2, 0, 3, 1, 4)
        torch.sub(outputs, abl, out=rows)  # [k, C, B, P, d], written position-major
        self.rows += senders

    def read(self, receivers: Receivers, then: int | None = None) -> Tensor:
        """``[R, N, P, d]``: each receiver's masked mix, position by position (``then`` is not needed: every
        read mixes all senders written so far in one product)."""
        if isinstance(receivers, int):
            receivers = [receivers]
        listed = list(range(receivers.start, receivers.stop)) if isinstance(receivers, slice) else list(receivers)
        assert all(self.n_upstream[r] == self.n_written for r in listed), \
            "receivers must read exactly the senders written before them"
        C, P, B, d, n, R = self.C, self.P, self.B, self.d, len(self.rows), len(listed)
        dev = self.masks.device
        m = self.masks.index_select(1, torch.as_tensor(self.rows, device=dev))
        m = m.index_select(2, torch.as_tensor(listed, device=dev))  # [C, n, R, P]
        m = m.permute(0, 3, 2, 1).reshape(C * P, R, n)  # [C*P, R, n]
        rows = self.buffer[:, :, 1:1 + n].flatten(0, 1)  # [C*P, n, B*d], a view
        mixed = torch.bmm(m, rows).view(C, P, R, B, d)
        mixed += self.base.expand(B, P, d).transpose(0, 1)[None, :, None]  # [1, P, 1, B, d]: no R-row copy of it
        return mixed.permute(2, 0, 3, 1, 4).reshape(R, self.N, P, d)  # the one copy: to the reads' layout


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
        # written in the [R, C, X] layout the reads return, so reshaping them to [R, N, P, d] copies nothing
        out = rows.new_empty(m.shape[2], m.shape[0], rows.shape[2]).transpose(0, 1)  # [C, R, X] view
        return torch.bmm(m.transpose(1, 2), rows, out=out)

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


@dataclass(frozen=True, eq=False)
class HeldCircuit:
    """A circuit run before and every sender's output in it: what an :class:`IncrementalResidual` reuses.

    ``mask [S, R]`` (CPU), ``outputs [S, B, P, d]``; ``exact [S]`` (bool): the senders whose entry is their real
    output in that circuit (a sender the run skipped holds its ablated output, which is right only where it is
    never read, so it is recomputed wherever a candidate reads it).
    """

    mask: Tensor
    outputs: Tensor
    exact: Tensor

    def __post_init__(self) -> None:
        S = self.mask.shape[0]
        if self.outputs.dim() != 4 or self.outputs.shape[0] != S or tuple(self.exact.shape) != (S,):
            raise ValueError(f"a held circuit is mask [S, R], outputs [S, B, P, d] and exact [S] with one S; got "
                             f"{tuple(self.mask.shape)}, {tuple(self.outputs.shape)}, {tuple(self.exact.shape)}")

    @classmethod
    def of_model(cls, structure: GraphStructure, outputs: Tensor) -> HeldCircuit:
        """The full model, from a recorded plain run (``PlainResidual(record=True)``): every output exact."""
        return cls(structure.edge_mask.float(), outputs, torch.ones(structure.n_senders, dtype=torch.bool))


class IncrementalResidual(MaskedResidual):
    """:class:`MaskedResidual` that computes only what the candidates change relative to a :class:`HeldCircuit`.

    A node is recomputed when, in some candidate, one of its incoming edges has another mask than in ``held``, or
    it is read but ``held`` has no real output for it; so is every node those feed through the candidates' edges
    (:meth:`~circuits.graph.structure.GraphStructure.descendants`). Every other sender writes its held output,
    the same in every circuit, held once. ACDC's candidates differ from the circuit as it was when their
    receiver's tests began in that receiver's edges only, so each costs the receiver's node and what it feeds.
    Runs without gradients only. ``record`` (one circuit) returns its outputs; :meth:`held_circuit` wraps them.
    """

    _shares = True

    def __init__(self, masks: Tensor, ablated: Ablated | Tensor, held: HeldCircuit, *, record: bool = False):
        super().__init__(masks, ablated, record=record)
        if masks.requires_grad:
            raise ValueError("incremental runs hold outputs computed without gradients; use MaskedResidual for "
                             "differentiable masks")
        self.held = held

    def begin(self, first: Tensor, structure: GraphStructure) -> Tensor:
        B, P, _ = first.shape
        if tuple(self.held.outputs.shape[1:3]) != (B, P):
            raise ValueError(f"held outputs {tuple(self.held.outputs.shape)} are not of this batch ({B} x {P})")
        first = super().begin(first, structure)  # decides the active senders
        edges = structure.edge_mask
        masks = self.masks_in.detach().cpu().float() * edges  # [C, S, R]; entries off the graph are never read
        S = structure.n_senders
        changed = torch.zeros(S + 1, dtype=torch.bool)
        differs = (masks != (self.held.mask * edges)[None]).any(0).any(0)  # [R]
        changed |= structure.nodes_fed(differs)
        changed[:S] |= torch.tensor(self.active) & ~self.held.exact  # read here, not held exactly
        self.computed = structure.descendants(changed, (masks != 0).any(0))  # [S]
        self._computed = self.computed.tolist()
        if self.recording is not None:
            keep = ~self.computed.to(self.recording.device)
            self.recording[keep] = self.held.outputs[keep].to(self.recording.dtype)
        return first

    def _computes(self, sender: int) -> bool:
        return self.active[sender] and self._computed[sender]

    def _held(self, senders: list[int]) -> dict:
        return {"held": self.held.outputs[senders], "held_senders": senders} if senders else {}

    def held_circuit(self) -> HeldCircuit:
        """After a recorded run: this circuit and its outputs, to hold for the next candidates."""
        assert self.recording is not None, "record=True keeps the outputs"
        active = torch.tensor(self.active, dtype=torch.bool)
        exact = active & (self.computed | self.held.exact)
        return HeldCircuit(self.masks_in[0].detach().cpu().float(), self.recording, exact)
