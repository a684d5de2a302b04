"""Neuron-level circuits on a :class:`~circuits.session.CircuitSession`: its batches, ablation and metric, with
MLP neurons as units besides heads (:mod:`circuits.interventions.neurons`).

A neuron circuit is an edge mask ``[S, R]`` (the edges between its nodes: kept heads, the MLPs with a kept neuron,
``input`` and ``logits``) and a neuron mask ``[L, m]``; C of them run as one batch of ``C * B`` rows, as edge
circuits do. What is the same for every circuit is computed once per batch: the session's ablated sender outputs
and baselines, and here the ablated neuron activations (the corrupted run's, means over the session's reference
set, or zero).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from circuits.interventions.masked import MaskedResidual
from circuits.interventions.neurons import (
    NeuronMasked,
    hidden_ablation,
    mean_hidden,
    mlp_shape,
    record_senders_and_hidden,
)
from circuits.session.session import CircuitMetrics, SessionError
from circuits.tasks.metrics import Metric

if TYPE_CHECKING:  # pragma: no cover
    from circuits.session.batches import SessionBatch
    from circuits.session.session import CircuitSession


class NeuronRuns:
    """Neuron-level runs of ``session`` (module docstring). Holds the ablated activations of each batch."""

    def __init__(self, session: CircuitSession):
        self.session = session
        try:
            self.n_layers, self.d_mlp = mlp_shape(session.model)
        except ValueError as err:
            raise SessionError(str(err)) from None
        self._mean: Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(L, m)``: the neuron masks' and scores' shape."""
        return self.n_layers, self.d_mlp

    def ablated_hidden(self, batch: SessionBatch) -> Tensor:
        """``[L, B|1, P|1, m]``: what a cut neuron carries on ``batch`` (kept while it fits beside the passes,
        :meth:`CircuitSession.cached`)."""
        s = self.session
        if s.ablation == "mean":
            if self._mean is None:
                ref = s.reference.as_batch()
                P = max(int(b.clean.shape[1]) for b in s.batches)
                self._mean = mean_hidden(s.model, ref.clean, ref.attention_mask, n_positions=P,
                                         batch_size=min(s.batch_size, s.examples_per_pass or s.batch_size))
            return self._mean[:, :, :batch.clean.shape[1]]
        return s.cached("neuron-ablated", batch, lambda: hidden_ablation(
            s.model, s.ablation, batch.clean, batch.attention_mask, corrupted_ids=batch.corrupted))

    def clean_run(self, batch: SessionBatch) -> tuple[Tensor, Tensor]:
        """``(sender outputs [S, B, P, d], neuron activations [L, B, P, m])`` of the clean prompts: one run."""
        return record_senders_and_hidden(self.session.model, batch.clean, batch.attention_mask)

    def check_masks(self, edges: Tensor, neurons: Tensor) -> tuple[Tensor, Tensor]:
        """``(edges [C, S, R], neurons [C, L, m])``, or a :class:`SessionError` naming the shapes expected."""
        st = self.session.structure
        edges = edges[None] if edges.dim() == 2 else edges
        neurons = neurons[None] if neurons.dim() == 2 else neurons
        if tuple(edges.shape[1:]) != (st.n_senders, st.n_receivers):
            raise SessionError(f"edge masks must be [C, {st.n_senders}, {st.n_receivers}], got {tuple(edges.shape)}")
        if tuple(neurons.shape[1:]) != self.shape or neurons.shape[0] != edges.shape[0]:
            raise SessionError(f"neuron masks must be [C={edges.shape[0]}, L={self.n_layers}, m={self.d_mlp}] (one per "
                               f"edge mask), got {tuple(neurons.shape)}")
        return edges, neurons

    def circuit_metrics(self, edges: Tensor, neurons: Tensor, *, metric: Metric | None = None, kl: bool = False,
                        circuits_per_pass: int | None = None) -> CircuitMetrics:
        """The metric (and with ``kl`` the KL to the full model) of every neuron circuit ``(edges [C, S, R],
        neurons [C, L, m])`` on every example (float64, CPU, split order), as
        :meth:`CircuitSession.circuit_metrics` for edge circuits."""
        s = self.session
        metric = s.metric if metric is None else metric
        edges, neurons = self.check_masks(edges, neurons)
        s.fit("patched", neurons=1)
        C = edges.shape[0]
        out_m = torch.empty(C, s.n_examples, dtype=torch.float64)
        out_kl = torch.empty(C, s.n_examples, dtype=torch.float64) if kl else None
        with torch.no_grad():
            for b in s.batches:
                per_pass = s.circuits_per_pass_for(b, circuits_per_pass)
                ablated = s.ablated(b)
                hidden = self.ablated_hidden(b)
                for start in range(0, C, per_pass):
                    rows = slice(start, min(C, start + per_pass))
                    e = edges[rows].to(s.device, s.model.dtype)
                    n = neurons[rows].to(s.device, s.model.dtype)
                    logits = s.run(b, NeuronMasked(MaskedResidual(e, ablated), n, hidden))  # [c, b, K, V]
                    s.forwards += 1
                    out_m[rows, b.index] = s.metric_values(logits, b, metric).double().cpu()
                    if out_kl is not None:
                        out_kl[rows, b.index] = out_m[rows, b.index] if metric.name == "kl" else \
                            s.metric_values(logits, b, Metric("kl")).double().cpu()
        return CircuitMetrics(out_m, out_kl)
