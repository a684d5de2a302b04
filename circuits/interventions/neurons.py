"""Neuron-level interventions: an MLP's hidden neurons as units a circuit keeps or cuts, batched over circuits.

An MLP computes ``out = W_out h + b_out`` from its hidden activations ``h [.., m]`` (``act(W_in x + b_in)``, or
``act(W_gate x) * (W_in x)`` when gated: Llama's product, :meth:`~circuits.models.architectures.Mlp.hidden`). A
neuron circuit sets, per layer and neuron, a mask ``n`` in [0, 1]:
``h' = n * h(this run) + (1 - n) * h(ablated)``, where "ablated" is the neuron's activation in the paired
corrupted run, its per-position mean over a reference set, or zero (as for sender outputs,
:mod:`circuits.interventions.ablation`). ``n = 1`` everywhere is the model itself (exactly: ``h * 1 + a * 0``);
``n = 0`` for every neuron of an MLP is that MLP's ablated output under ``corrupted`` and ``mean`` (the output
is linear in ``h``), and under ``zero`` its output bias ``b_out``, a constant no neuron owns.

Every strategy here wraps another residual strategy (the edge-masked stream of C circuits, the gradient probe, the
plain stream) and changes one thing, the MLP (:meth:`ResidualStrategy.mlp`); everything else is the inner
strategy's, so edge masks and neuron masks combine and the skipped-node savings of the inner stream stay exact.
Shapes: ``L`` layers, ``m`` hidden neurons, ``C`` circuits, ``N = C * B`` rows, ``T`` stacked attribution steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from circuits.interventions.ablation import AblationError, check_ablation, per_position_mean
from circuits.interventions.residual import PlainResidual, Receivers, ResidualStrategy

if TYPE_CHECKING:  # pragma: no cover
    from circuits.graph.structure import GraphStructure
    from circuits.models.architectures import Attention, Mlp, Norm
    from circuits.models.circuit_model import CircuitModel


class NeuronError(AblationError):
    """A neuron-level run cannot start as asked (a model without MLPs, masks of the wrong shape)."""


def mlp_shape(model: CircuitModel) -> tuple[int, int]:
    """``(L, m)``: the model's layers and hidden neurons per MLP; a clear error for attention-only models."""
    layers = model.spec.layers
    if not layers or layers[0].mlp is None:
        raise NeuronError(f"model {model.name!r} has no MLPs, so it has no neurons to score or cut; use node- or "
                          "edge-level circuits (level='node' / 'edge')")
    return len(layers), layers[0].mlp.d_hidden


class _Wrapped(ResidualStrategy):
    """A strategy that is ``inner`` in everything but the MLP (subclasses override :meth:`mlp`)."""

    def __init__(self, inner: ResidualStrategy):
        self.inner = inner
        self.n_circuits = inner.n_circuits
        self.circuit_axis = inner.circuit_axis
        self.per_head = inner.per_head
        # the last layer is not computed at the read positions only: the ablated activations are per position
        self.keeps_every_position = True
        self.rule = getattr(inner, "rule", None)  # a gradient probe's backward rule (CircuitSession.backward_objective)

    def begin(self, first: Tensor, structure: GraphStructure) -> Tensor:
        self.structure = structure
        return self.inner.begin(first, structure)

    def heads(self, layer: int) -> list[int]:
        return self.inner.heads(layer)

    def computes_mlp(self, layer: int) -> bool:
        return self.inner.computes_mlp(layer)

    def read(self, receivers: Receivers, then: int | None = None) -> Tensor:
        return self.inner.read(receivers, then)

    def project_qkv(self, x: Tensor, attn: Attention, norm: Norm) -> tuple[Tensor, Tensor, Tensor] | None:
        return self.inner.project_qkv(x, attn, norm)

    def write_heads(self, layer: int, heads: list[int], outputs: Tensor | None) -> None:
        self.inner.write_heads(layer, heads, outputs)

    def write_mlp(self, layer: int, output: Tensor | None) -> None:
        self.inner.write_mlp(layer, output)

    def add_constant(self, bias: Tensor) -> None:
        self.inner.add_constant(bias)

    def recorded(self) -> Tensor | None:
        return self.inner.recorded()


class NeuronMasked(_Wrapped):
    """``inner`` (usually a :class:`~circuits.interventions.masked.MaskedResidual` of C circuits) whose MLP neurons
    are mixed by ``masks [C, L, m]`` (or ``[L, m]``) between this run's and ``ablated [L, B|1, P|1, m]``.

    A layer whose mask is 1 for every neuron of every circuit runs its MLP unchanged; masks that take gradients
    (``dM/dn``, the definition neuron EAP is tested against) mix every layer."""

    def __init__(self, inner: ResidualStrategy, masks: Tensor, ablated: Tensor):
        super().__init__(inner)
        masks = masks if masks.dim() == 3 else masks[None]  # [C, L, m]
        if masks.shape[0] != inner.n_circuits:
            raise NeuronError(f"neuron masks are for {masks.shape[0]} circuits but the edge masks for "
                              f"{inner.n_circuits}; give one [L, m] neuron mask per circuit")
        if ablated.dim() != 4 or ablated.shape[0] != masks.shape[1] or ablated.shape[-1] != masks.shape[2]:
            raise NeuronError(f"ablated activations must be [L={masks.shape[1]}, B|1, P|1, m={masks.shape[2]}], "
                              f"got {tuple(ablated.shape)}")
        self.masks = masks
        self.ablated = ablated
        # [L]: the layers with a neuron cut in some circuit (every layer when the masks take gradients)
        self.cut: list[bool] = ([True] * masks.shape[1] if masks.requires_grad
                                else (masks != 1).any(0).any(-1).tolist())

    def mlp(self, layer: int, mlp: Mlp, x: Tensor) -> Tensor:  # x [1, N, P, d]
        if not self.cut[layer]:
            return mlp(x)
        h = mlp.hidden(x)  # [1, N, P, m]
        C = self.masks.shape[0]
        n = self.masks[:, layer].to(h.dtype)[:, None, None]  # [C, 1, 1, m]
        abl = self.ablated[layer].to(h.dtype)  # [B|1, P|1, m]
        mixed = h.view(C, -1, *h.shape[2:]) * n + abl * (1 - n)  # [C, B, P, m]: exact at n = 0 and n = 1
        return mlp.project(mixed.view(h.shape))


class NeuronProbe(_Wrapped):
    """A :class:`~circuits.interventions.probe.GradientProbe` that also scores every neuron:
    ``scores[l, i] += sum over examples and positions of diff[l, i] * dM/dh[l, i]``.

    ``diffs [L, B, P, m]``: the neuron differences the scores weigh (clean - ablated, EAP-IG); when not given, this
    run's own activations minus ``ablated [L, B|1, P|1, m]`` (EAP). ``repeats``: the run stacks T copies of the
    batch that share ``diffs`` (EAP-IG's steps); their gradients are summed before the product, as the probe does."""

    def __init__(self, inner: ResidualStrategy, ablated: Tensor, scores: Tensor, diffs: Tensor | None = None,
                 repeats: int = 1):
        super().__init__(inner)
        if repeats != 1 and diffs is None:
            raise ValueError("stacked copies (repeats > 1) need shared diffs: a run's own activations differ per copy")
        self.ablated = ablated
        self.scores = scores  # [L, m] accumulator
        self.diffs = diffs
        self.repeats = int(repeats)

    def mlp(self, layer: int, mlp: Mlp, x: Tensor) -> Tensor:  # x [1, T*B, P, d]
        h = mlp.hidden(x)  # [1, T*B, P, m]
        if h.requires_grad:
            diff = self.diffs[layer] if self.diffs is not None else h.detach()[0] - self.ablated[layer]  # [B, P, m]
            h.register_hook(lambda grad, layer=layer, diff=diff: self._score(grad, layer, diff))
        return mlp.project(h)

    def _score(self, grad: Tensor, layer: int, diff: Tensor) -> None:  # grad [1, T*B, P, m]
        acc = torch.promote_types(grad.dtype, torch.float32)
        m = grad.shape[-1]
        g = grad.reshape(self.repeats, -1, m).sum(0, dtype=acc)  # [B*P, m]: the stacked copies summed
        self.scores[layer] += (diff.reshape(-1, m).to(acc) * g).sum(0).to(self.scores.dtype)  # diff [B, P, m]


class HiddenRecorder(_Wrapped):
    """``inner`` (default: the plain model; ``PlainResidual(record=True)`` also records sender outputs) recording
    every MLP's hidden activations: :meth:`hidden` ``[L, N, P, m]`` after the run."""

    def __init__(self, inner: ResidualStrategy | None = None):
        super().__init__(PlainResidual() if inner is None else inner)
        self._hidden: list[Tensor] = []

    def mlp(self, layer: int, mlp: Mlp, x: Tensor) -> Tensor:
        h = mlp.hidden(x)  # [1, N, P, m]
        self._hidden.append(h.detach()[0])
        return mlp.project(h)

    def hidden(self) -> Tensor:  # [L, N, P, m]
        return torch.stack(self._hidden)


@torch.no_grad()
def record_hidden(model: CircuitModel, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """``[L, B, P, m]``: every MLP neuron's activation on these inputs."""
    mlp_shape(model)
    recorder = HiddenRecorder()
    model.run(input_ids, attention_mask, residual=recorder)
    return recorder.hidden()


@torch.no_grad()
def record_senders_and_hidden(model: CircuitModel, input_ids: Tensor, attention_mask: Tensor | None = None
                              ) -> tuple[Tensor, Tensor]:
    """``(sender outputs [S, B, P, d], neuron activations [L, B, P, m])`` of one run on these inputs."""
    mlp_shape(model)
    recorder = HiddenRecorder(PlainResidual(record=True))
    run = model.run(input_ids, attention_mask, residual=recorder)
    assert run.sender_outputs is not None
    return run.sender_outputs, recorder.hidden()


@torch.no_grad()
def mean_hidden(model: CircuitModel, reference_ids: Tensor, reference_mask: Tensor | None = None, *,
                n_positions: int | None = None, batch_size: int = 32) -> Tensor:
    """``[L, 1, P, m]``: per-position mean of every neuron's activation over the real tokens of a reference set
    (the same rule as :func:`~circuits.interventions.ablation.mean_outputs`)."""
    return per_position_mean(lambda ids, mask: record_hidden(model, ids, mask), model.device, model.dtype,
                             reference_ids, reference_mask, n_positions=n_positions, batch_size=batch_size)


@torch.no_grad()
def hidden_ablation(model: CircuitModel, ablation: str, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                    corrupted_ids: Tensor | None = None, reference_ids: Tensor | None = None,
                    reference_mask: Tensor | None = None, batch_size: int = 32) -> Tensor:
    """``[L, B|1, P|1, m]``: what a cut neuron carries on the batch ``input_ids [B, P]`` (arguments as
    :func:`~circuits.interventions.ablation.build_ablation`)."""
    ablation = check_ablation(ablation)
    L, m = mlp_shape(model)
    if ablation == "zero":
        return torch.zeros(L, 1, 1, m, dtype=model.dtype, device=model.device)
    if ablation == "corrupted":
        if corrupted_ids is None or corrupted_ids.shape != input_ids.shape:
            raise NeuronError("ablation='corrupted' needs corrupted prompts of the clean prompts' shape "
                              "(corrupted_ids=...)")
        return record_hidden(model, corrupted_ids, attention_mask)
    if reference_ids is None:
        raise NeuronError("ablation='mean' needs a reference set (reference_ids=...), e.g. the task's training split")
    return mean_hidden(model, reference_ids, reference_mask, n_positions=input_ids.shape[1], batch_size=batch_size)
