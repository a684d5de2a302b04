"""Peak activation memory of one circuit run, estimated from the tensors the code holds: the one place that
sizes passes (:class:`~circuits.session.CircuitSession` chunks its examples, stacked steps and positions by it,
and refuses a run that cannot fit before any forward).

Three kinds of pass (``rows``: the rows of one forward; ``b`` examples, ``P`` positions, ``K`` read positions,
``p`` the position chunk of the attribution backward, ``isz`` the model dtype's bytes):

* ``"attribution"``: a forward and backward through :class:`~circuits.interventions.probe.GradientProbe` on
  ``rows = T x b`` (EAP: T = 1; EAP-IG: T stacked interpolation steps; EAP-IG-activations: T = 1 with the clean
  outputs held besides the differences). Held: the sender differences ``[S, b, P, d]`` (EAP-IG: and the clean
  outputs, ``sender_copies = 2``); autograd's saved activations per layer per row (the stream, the norms' inputs,
  q/k/v ``[H + 2G, rows, P, e]``, the attention pattern ``[H, rows, P, P]``, the MLP hidden ``[rows, P, d_mlp]``,
  gated: three of them); the forward's per-head outputs ``[H, rows, P, d]``; the backward's per-head input
  gradients ``[H, rows, p, d]`` in float32 (chunked over positions: ``p <= P``); the readout ``[rows, K, V]``
  with its float32 softmax and gradient.
* ``"patched"``: one no-grad patched forward of ``c`` circuits on ``b`` examples (``rows = c x b``), counted
  in ``[rows, P, d]`` rows: the masked residual's sender buffer ``[1 + S, rows, P, d]`` (allocated whole when
  the pass begins), the MLP's partial sum (1) and the pass's masks ``[c, S, R]`` (``PATCHED_MASK_BYTES``
  per edge); besides them, per layer, the largest of three transients, each
  freed before the next layer's read: the read of the ``R`` receivers a layer's heads read (``R = 3H``, or
  ``H + 2G`` with grouped k/v): up to ``R`` distinct mixes plus, when receivers share a mix, its ``R``-row
  gather (``2R + 1``); the attention: those ``R + 1`` inputs, q/k/v and their rotated and per-query-head
  copies, the output (``PATCHED_HEADS``) and the scores ``[H, rows, P, P]`` with their float32 softmax, and in
  half precision the RMSNorm's two float32 copies of the ``R`` inputs (LayerNorm: one normalised copy); the
  MLP: its hidden ``[rows, P, d_mlp]`` tensors. Then the readout ``[rows, K, V]`` with float32 copies. Besides
  the rows, once per pass: the weights a layer copies when it computes only some of its heads (a sparse
  circuit's layers: :func:`~circuits.interventions.attention.head_subset` picks their q/o rows and their own or
  their groups' k/v rows) and, in fp32, the norm-folded projection weights (``project_folded``); at 8B width
  ~300 MiB per pass, which dominate a pass of few rows. Measured against a storage-tracking dispatch mode in
  ``tests/test_patched_memory.py``.
* ``"trained"``: one training step of one circuit (``rows = b``): the forward and backward of
  :class:`~circuits.interventions.masked.MaskedResidual` with float masks that require grad (edge pruning,
  MAttr). Nothing is skipped (every sender is computed, no receivers share a mix). Held: the sender buffer
  ``[1 + S, rows, P, d]`` (the mixes' backward reads the rows in place) and the parameters, masks, their
  gradients and Adam's state (``TRAINED_MASK_BYTES`` per ``[S, R]`` entry); autograd's saved activations per
  layer as in the attribution kind (q/k/v per query head) plus what the read of the ``R`` head inputs leaves
  saved: in float32 the read itself (``R + 1`` rows, the norm folded into the projections) and, per pass, the
  folded q/k/v weights; in half precision RMSNorm's float32 copy of the R inputs, LayerNorm's read. The
  forward's transient: the sender differences ``[S, rows, P, d]`` it holds until it ends, plus a layer's outputs
  (half precision RMSNorm: two more float32 copies of the R inputs); the backward's: the senders' gradients (one
  read's ``[S, ...]`` and those accumulated, ``TRAINED_GRADS``) plus a layer's read gradient (half precision
  RMSNorm: float32, of the R inputs). The readout and its float32 KL as in attribution. Measured against the
  storage-tracking mode in ``tests/test_trained_memory.py`` (1.13-1.34x the tracked peak).

Finer runs add what they read (:func:`estimate_peak`'s ``by_position``, ``neurons``, ``held``): position-aware
patched passes their masks ``[c, S, R, P]`` (a read mixes each position apart but adds the base in place, so it
stays within ``2R + 1`` rows) and position-aware attribution its float32 scores ``[S, R, P]``; neuron circuits the
neurons' ablation ``[L, b|1, P|1, m]``, their masks ``[c, L, m]`` and a layer's mix of this run's hidden
activations with the ablated ones (``NEURON_MIX`` more ``[rows, P, m]``), neuron attribution the neuron
differences it holds per layer (EAP 1, EAP-IG 2 ``[L, b, P, m]``); incremental patching (exact, node and neuron
patching) the batch's held clean run ``[S, b, P, d]``. Measured against the storage-tracking mode in
``tests/test_fine_memory.py``.

Each adds the ablation the run reads: ``corrupted`` holds ``[S, b, P, d]``, ``mean`` ``[S, 1, P, d]``, ``zero``
nothing. The coefficients are named constants (``SAVED_*``) so measured peaks (``benchmarks/memory_scale.py``)
can be compared against them term by term. The weights are not part of a pass's estimate; what a session keeps
across passes (batches' ablations, :mod:`circuits.session.cache`) is kept only while it fits beside the largest
fitted pass, and what a run holds for every example throughout (ACDC's fast search: ``resident_held``) is set
beside the passes by :meth:`~circuits.session.CircuitSession.fit`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from circuits.models.circuit_model import CircuitModel

KINDS = ("attribution", "patched", "trained")
GB = 2**30

# autograd's saved activations per layer and row, in units of the dtype's bytes (see the module docstring)
SAVED_STREAM = 6  # x [P, d] copies: the stream at each read, the norms' inputs and outputs
SAVED_QKV = 2  # q, k, v [H + 2G, P, e] and their rotated copies
SAVED_PATTERN = 2  # attention scores and pattern [H, P, P]
SAVED_MLP_GATED = 4  # gate, act(gate), up, their product [P, d_mlp] (SwiGLU)
SAVED_MLP = 2  # pre-activation and activation [P, d_mlp]
# a patched pass, in [P, d] rows per circuit x example (see the module docstring)
PATCHED_READ = 2  # a read: up to R distinct mixes [R, rows, P, d] and, when receivers share one, the R-row gather
PATCHED_HEADS = 8  # attention besides its R inputs: q, k, v, rotated q, k, per-query-head k, v, the heads' z
PATCHED_HALF_RMS = 2  # half-precision RMSNorm of the R inputs: x in float32 and x / rms in float32
PATCHED_MLP_GATED = 3  # gate, up and their product [P, d_mlp] (SwiGLU)
PATCHED_MLP = 2  # pre-activation and activation [P, d_mlp]
PATCHED_MASK_BYTES = 8  # per circuit and edge: the pass's stacked float32 masks, the model-dtype copy, two bool ones
# position-aware masks [c, S, R, P]: per circuit, edge and position, the pass's masks in the model dtype plus this
# many bytes (the bool view of the edges some position keeps; the float32 stack they are cut from stays on the host)
POSITION_MASK_EXTRA_BYTES = 1
# neuron circuits: a layer's MLP mixes this run's hidden activations with the ablated ones (the mix and its inputs
# [rows, P, m] besides the MLP's own), and an attribution run holds per layer the neuron differences [b, P, m] it
# weighs (EAP-IG: and the clean activations they come from)
NEURON_MIX = 2
NEURON_BACKWARD = 3  # scoring a layer's neurons: the steps' summed gradient, the differences and their product,
# [b, P, m] in float32
# a trained step (forward + backward through MaskedResidual, masks that require grad), see the module docstring
TRAINED_READ = 1  # float32: a layer's read [R + 1, rows, P, d], saved by the projections the norm is folded into
TRAINED_HALF_RMS = 1  # half-precision RMSNorm: its float32 copy of the R inputs, saved
TRAINED_HALF_RMS_FORWARD = 2  # ... and, while it normalises, two more float32 copies of them
TRAINED_HALF_RMS_BACKWARD = 5  # its backward: float32 gradients of the R inputs
TRAINED_HALF_LN = 1  # half-precision LayerNorm: the R + 1 rows of the read (or its normalised copy), saved
TRAINED_READ_BACKWARD = 1  # the gradient of a layer's read [R + 1, rows, P, d] (model dtype)
TRAINED_HALF_LN_BACKWARD = 2  # half-precision LayerNorm's backward: the read's gradient in float32
TRAINED_GRADS = 2  # the senders' gradients [S, rows, P, d]: one read's, and those accumulated from later reads
TRAINED_MASK_BYTES = 24  # per [S, R] entry: parameters, masks, their gradients and Adam's state, in float32
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": GB, "gb": GB, "gib": GB, "t": 2**40, "tb": 2**40, "tib": 2**40}


@dataclass(frozen=True)
class ModelWidths:
    """What the estimate needs of a model: its widths and its dtype's size in bytes."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int  # 0: attention-only
    vocab: int
    n_senders: int
    gated: bool  # SwiGLU MLP (Llama, Qwen2)
    itemsize: int
    head_inputs: int = 0  # receivers a layer's heads read: 3H, or H + 2G with grouped k/v (0: 3H)
    rms_norm: bool = False  # RMSNorm (normalises in float32), else LayerNorm
    n_receivers: int = 0  # receivers of the graph (a patched pass's masks are [c, S, n_receivers])

    @classmethod
    def of(cls, model: CircuitModel) -> ModelWidths:
        spec, s = model.spec, model.structure
        attn, mlp = spec.layers[0].attn, spec.layers[0].mlp
        return cls(n_layers=s.n_layers, n_heads=s.n_heads, n_kv_heads=attn.n_kv_heads, d_model=spec.d_model,
                   d_head=int(attn.W_Q.shape[-1]), d_mlp=0 if mlp is None else int(mlp.W_in.shape[1]),
                   vocab=int(spec.W_U.shape[1]), n_senders=s.n_senders,
                   gated=mlp is not None and mlp.W_gate is not None,
                   itemsize=torch.finfo(model.dtype).bits // 8, head_inputs=s.n_heads + 2 * s.n_kv_receivers,
                   rms_norm=spec.layers[0].attn_norm.kind == "rmsnorm", n_receivers=s.n_receivers)


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak activation bytes of one pass, by term (module docstring). ``total`` counts the forward's and the
    backward's transients once (they do not coexist)."""

    kind: str
    ablated: int  # the ablation read: [S, b, P, d] (corrupted), [S, 1, P, d] (mean), 0 (zero)
    senders: int  # sender differences (and clean outputs) [S, b, P, d]; patched: the buffer, partial sum, masks
    saved: int  # autograd's saved activations (attribution only)
    forward_transient: int  # per-head outputs [H, rows, P, d]; patched: a layer's read, attention or MLP
    backward_transient: int  # per-head input gradients [H, rows, p, d] in float32 (attribution only)
    readout: int  # logits [rows, K, V] and their float32 copies
    weight_copies: int = 0  # a head subset's weight rows, fp32's folded projections (once per pass, not per row)
    held: int = 0  # the full model's sender outputs an incremental pass reads [S, b, P, d] (per copy)
    ablated_neurons: int = 0  # of ``ablated``: what cut MLP neurons carry [L, b|1, P|1, m] (neuron circuits)

    @property
    def total(self) -> int:  # ``ablated_neurons`` is part of ``ablated``
        return (self.ablated + self.held + self.senders + self.saved
                + max(self.forward_transient, self.backward_transient) + self.readout + self.weight_copies)

    def describe(self) -> str:
        names = {"ablated_neurons": "of which neurons"}
        terms = ", ".join(f"{names.get(f.name, f.name)} {format_bytes(getattr(self, f.name))}" for f in fields(self)[1:]
                          if getattr(self, f.name))
        return f"{format_bytes(self.total)} ({terms})"


def estimate_peak(widths: ModelWidths, kind: str, *, examples: int, positions: int, read_positions: int = 1,
                  steps: int = 1, circuits: int = 1, position_chunk: int | None = None, sender_copies: int = 1,
                  ablation: str = "corrupted", by_position: bool = False, neurons: int = 0,
                  held: int = 0) -> MemoryEstimate:
    """The peak of one ``kind`` pass over ``examples`` x ``positions`` (``steps`` stacked copies of the batch for
    attribution, ``circuits`` for a patched pass); ``position_chunk``: the positions of one chunk of the
    attribution backward (default all); ``sender_copies``: [S, b, P, d] tensors an attribution run holds (EAP 1,
    EAP-IG 2). The runs of finer circuits: ``by_position``, position-aware edges (patched: masks ``[c, S, R, P]``;
    attribution: float32 scores ``[S, R, P]``); ``neurons``, MLP neurons as units (patched: 1, the neuron mix;
    attribution: the ``[L, b, P, m]`` tensors it holds, EAP 1, EAP-IG 2), which also adds the neurons' ablation;
    ``held``: copies of the full model's sender outputs ``[S, b, P, d]`` an incremental pass reads (exact, node and
    neuron patching: 1, the batch's clean run; what ACDC's fast search holds for every example is not a pass's, see
    :meth:`~circuits.session.CircuitSession.fit`'s ``resident_held``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    w, b, P, K = widths, int(examples), int(positions), int(read_positions)
    isz, d, S, H = w.itemsize, w.d_model, w.n_senders, w.n_heads
    stream = P * d  # one [P, d] row
    ablated = {"corrupted": S * b * stream, "mean": S * stream}.get(ablation, 0) * isz
    ablated_neurons = 0
    if neurons:  # what a cut neuron carries: [L, b|1, P|1, m]
        ablated_neurons = {"corrupted": b * P, "mean": P}.get(ablation, 1) * w.n_layers * w.d_mlp * isz
    ablated += ablated_neurons
    held_bytes = int(held) * S * b * stream * isz
    if kind == "trained":
        return _trained(widths, ablated, b, P, K)
    if kind == "patched":
        rows = int(circuits) * b
        R = w.head_inputs or 3 * H
        read = PATCHED_READ * R + 1
        attention = (R + 1 + PATCHED_HEADS) * stream * isz + H * P * P * (3 * isz + 4)  # scores, softmax in fp32
        if isz < 4:  # half precision normalises the R inputs as the model does
            attention += PATCHED_HALF_RMS * R * stream * 4 if w.rms_norm else R * stream * isz
        hidden = (PATCHED_MLP_GATED if w.gated else PATCHED_MLP) + (NEURON_MIX if neurons else 0)
        mlp = (3 * stream + hidden * P * w.d_mlp) * isz
        transient = max(read * stream * isz, attention, mlp)
        masks = int(circuits) * S * w.n_receivers * PATCHED_MASK_BYTES
        if by_position:
            masks += int(circuits) * S * w.n_receivers * P * (isz + POSITION_MASK_EXTRA_BYTES)
        if neurons:
            masks += int(circuits) * w.n_layers * w.d_mlp * isz
        return MemoryEstimate(kind, ablated, senders=(S + 2) * rows * stream * isz + masks, saved=0,
                              forward_transient=rows * transient, backward_transient=0,
                              readout=rows * K * w.vocab * (isz + 8), weight_copies=head_subset_weights(w),
                              held=held_bytes, ablated_neurons=ablated_neurons)
    rows = int(steps) * b
    p = P if position_chunk is None else min(P, int(position_chunk))
    mlp = (SAVED_MLP_GATED if w.gated else SAVED_MLP) * P * w.d_mlp
    per_layer = SAVED_STREAM * stream + SAVED_QKV * (H + 2 * w.n_kv_heads) * P * w.d_head + SAVED_PATTERN * H * P * P
    senders = int(sender_copies) * S * b * stream * isz + int(neurons) * w.n_layers * b * P * w.d_mlp * isz
    if by_position:  # the float32 score accumulators [S, R, P]
        senders += S * w.n_receivers * P * 4
    backward = H * rows * p * d * (4 + isz) + H * b * p * d * 4  # fp32 gradients, their cast, step sum
    if neurons:  # a layer's neuron gradient [rows, P, m] (not chunked over positions) and its float32 products
        backward = max(backward, rows * P * w.d_mlp * isz + NEURON_BACKWARD * b * P * w.d_mlp * 4)
    return MemoryEstimate(
        kind, ablated, senders=senders,
        saved=w.n_layers * rows * (per_layer + mlp) * isz,
        forward_transient=2 * H * rows * stream * isz,  # the heads' outputs and their differences from the ablated
        backward_transient=backward,
        readout=rows * K * w.vocab * (isz + 12), held=held_bytes, ablated_neurons=ablated_neurons)


def head_subset_weights(w: ModelWidths, subset: bool = True) -> int:
    """Bytes of weights a patched layer copies, the same for one row or many: when it computes a subset of its
    heads (at most ``H - 1``; the estimate assumes one may), their ``W_Q`` and ``W_O`` rows and the ``W_K``,
    ``W_V`` rows they use (one per head with per-head k/v inputs, one per group with grouped ones), held through
    the layer; in fp32 (and fp64) also one norm-folded projection weight at a time (``project_folded``:
    ``[h, d, e]``, all ``H`` heads' when the layer computes them all). ``subset=False``: the folded weight only
    (every layer computes all its heads)."""
    H, de, isz = w.n_heads, w.d_model * w.d_head, w.itemsize
    folded = isz >= 4
    if H < 2 or not subset:  # no proper subset: only the folded projection
        return H * de * isz if folded else 0
    h = H - 1
    grouped = 0 < w.head_inputs < 3 * H
    kv = min(w.n_kv_heads, h) if grouped else h
    return ((2 * h + 2 * kv) * de + (H * de if folded else 0)) * isz


def _trained(w: ModelWidths, ablated: int, b: int, P: int, K: int) -> MemoryEstimate:
    """One trained step of one circuit on ``b`` examples (``rows = b``): module docstring, kind ``"trained"``."""
    isz, d, S, H, e = w.itemsize, w.d_model, w.n_senders, w.n_heads, w.d_head
    stream = P * d  # one [P, d] row
    R = w.head_inputs or 3 * H
    mlp = (SAVED_MLP_GATED if w.gated else SAVED_MLP) * P * w.d_mlp * isz
    pattern = H * P * P * (4 if isz >= 4 else 4 + isz)  # the float32 softmax (half precision: and its cast)
    per_layer = (SAVED_STREAM * stream + SAVED_QKV * 3 * H * P * e) * isz + pattern + mlp  # per row
    fixed = 0  # per pass, not per row
    if isz >= 4:  # the norm folded into the projections: the read is saved, and the folded q/k/v weights
        per_layer += TRAINED_READ * (R + 1) * stream * isz
        fixed = w.n_layers * (H + 2 * w.n_kv_heads) * d * e * isz
        layer_forward, layer_backward = H * stream * isz, TRAINED_READ_BACKWARD * (R + 1) * stream * isz
    elif w.rms_norm:  # half precision normalises the R inputs in float32 as the model does
        per_layer += TRAINED_HALF_RMS * R * stream * 4
        layer_forward, layer_backward = TRAINED_HALF_RMS_FORWARD * R * stream * 4, \
            TRAINED_HALF_RMS_BACKWARD * R * stream * 4
    else:
        per_layer += TRAINED_HALF_LN * (R + 1) * stream * isz
        layer_forward, layer_backward = (R + 1) * stream * isz, TRAINED_HALF_LN_BACKWARD * (R + 1) * stream * isz
    n_edges = S * (w.n_receivers or 3 * H * w.n_layers + 1)
    return MemoryEstimate(
        "trained", ablated, senders=(S + 1) * b * stream * isz + n_edges * TRAINED_MASK_BYTES,
        saved=w.n_layers * b * per_layer,
        forward_transient=b * (S * stream * isz + layer_forward),  # the sender differences held, a layer's work
        backward_transient=b * (TRAINED_GRADS * S * stream * isz + layer_backward),
        readout=b * K * w.vocab * (isz + 12), weight_copies=fixed)


def format_bytes(n: float) -> str:
    """``"1.5 GB"`` (powers of 1024)."""
    for unit, size in (("TB", 2**40), ("GB", GB), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def parse_memory(value: int | float | str, where: str = "memory_budget") -> int:
    """Bytes from ``4GB``, ``512 MB``, ``1.5GiB``, ``2e9`` or an integer (units are powers of 1024); a
    :class:`ValueError` naming ``where`` for anything else (negative, zero, not a size)."""
    if isinstance(value, bool):
        raise ValueError(f"{where} {value!r}: expected a size such as 4GB or 512MB, or a number of bytes")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError(f"{where} {value!r}: expected a size such as 4GB or 512MB, or a number of bytes")
        number, unit = float(match.group(1)), match.group(2).lower()
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{where} {value!r}: a memory budget must be a positive size, e.g. 4GB")
    return max(1, int(number * _UNITS[unit]))
