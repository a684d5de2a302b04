"""Neuron-level discovery: MLP neurons as scored units beside heads (EAP-IG and MIB score neurons too).

Three methods, level ``"neuron"``; each returns :class:`NeuronScores`: node scores ``[n_nodes]`` (heads, MLPs and
``input`` as nodes, ``logits`` NaN) and neuron scores ``[L, m]``, with MIB's sign (positive = the unit helps):

* ``eap-neurons``: ``score[l, i] = (h_clean - h_abl)[l, i] . dM/dh[l, i]`` summed over positions, averaged over
  pairs, on the clean run (``dM/dn`` at ``n = 1`` of the neuron mask); heads get node-ap's score (the sum of their
  outgoing EAP edge scores) from the same backward. The neurons of one MLP sum to its node score (its output is
  linear in them).
* ``eap-ig-neurons``: the same products with gradients averaged over EAP-IG's interpolated inputs
  (``alpha = k / steps``, as ``eap-ig``), the differences fixed at clean - ablated.
* ``neuron-patching``: each neuron's exact effect, ablated alone, and each head's (``node-patching``): C neurons of
  one layer per pass as C circuits, recomputing only that layer's MLP and what it feeds (the full model's other
  outputs are held, :class:`~circuits.interventions.masked.IncrementalResidual`).

``circuits.discover(..., method="eap-neurons")`` returns a Graph with ``node_scores`` and ``neuron_scores``; cut it
with ``graph.top_k(k, level="neuron")`` (units: heads and neurons) and evaluate it with ``level="neuron"``.

Spread over a pool (``workers=``), the attribution methods split the batches (their scores are sums over examples)
and ``neuron-patching`` its passes, a fixed plan (:class:`NeuronPatchingPlan`) that also lets it checkpoint and resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from circuits.discovery.attribution import stacked_steps
from circuits.discovery.checkpoint import Checkpoint
from circuits.discovery.exact import NodeCuts, cut_effects, pass_plan, resumable_passes
from circuits.discovery.registry import register
from circuits.discovery.shares import batch_units, batches_in_share
from circuits.interventions.masked import HeldCircuit, IncrementalResidual
from circuits.interventions.neurons import NeuronMasked, NeuronProbe
from circuits.interventions.probe import GradientProbe
from circuits.session import CircuitSession, SessionBatch
from circuits.session.neurons import NeuronRuns


@dataclass(frozen=True)
class NeuronScores:
    """What a neuron-level method returns: ``nodes [n_nodes]`` (``logits`` NaN) and ``neurons [L, m]``."""

    nodes: Tensor
    neurons: Tensor


def _node_scores(session: CircuitSession, edge_scores: Tensor) -> Tensor:
    """``[n_nodes]``: each sender's summed outgoing edge scores (node-ap), ``logits`` NaN."""
    edge_scores = edge_scores.masked_fill(~session.structure.edge_mask.to(edge_scores.device), 0.0)
    nodes = torch.full((session.structure.n_nodes,), float("nan"))
    nodes[:-1] = edge_scores.sum(1).cpu()
    return nodes


def _as_probe(wrapped: NeuronProbe) -> GradientProbe:
    """The wrapper where the session takes a probe: it runs as its inner probe does and carries its rule."""
    return cast(GradientProbe, wrapped)


def _buffers(session: CircuitSession, runs: NeuronRuns) -> tuple[Tensor, Tensor]:
    s = session.structure
    return (torch.zeros(s.n_senders, s.n_receivers, dtype=torch.float32, device=session.device),
            torch.zeros(*runs.shape, dtype=torch.float32, device=session.device))


@register("eap-neurons", "neuron", "attribution patching of heads and MLP neurons: dM/dn at n = 1",
          memory=lambda params: {"kind": "attribution", "neurons": 1}, units=batch_units)
def eap_neurons(session: CircuitSession) -> NeuronScores:
    """Head (node) and neuron EAP scores from one forward and backward per batch (module docstring)."""
    runs = NeuronRuns(session)
    edges, neurons = _buffers(session, runs)
    for b in batches_in_share(session, "eap (neurons)"):  # the probes are freed with the call, before the next batch
        session.backward_objective(b, _as_probe(NeuronProbe(
            GradientProbe(session.ablated(b).values, edges, position_chunk=session.position_chunk),
            runs.ablated_hidden(b), neurons)))
    n = session.n_examples
    return NeuronScores(_node_scores(session, edges / n), (neurons / n).cpu())


@register("eap-ig-neurons", "neuron", "EAP-IG (inputs) of heads and MLP neurons (Hanna et al. 2024; MIB)",
          ranges={"steps": {"low": 1}},
          memory=lambda params: {"kind": "attribution", "sender_copies": 2, "steps": params["steps"], "neurons": 2},
          units=batch_units)
def eap_ig_neurons(session: CircuitSession, steps: int = 5) -> NeuronScores:
    """Head (node) and neuron EAP-IG scores, gradients averaged over ``steps`` interpolated input embeddings."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    runs = NeuronRuns(session)
    edges, neurons = _buffers(session, runs)
    for b in batches_in_share(session, f"eap-ig ({steps} steps, neurons)"):
        _eap_ig_neurons_batch(session, runs, b, edges, neurons, steps)
    n = session.n_examples * steps
    return NeuronScores(_node_scores(session, edges / n), (neurons / n).cpu())


def _eap_ig_neurons_batch(session: CircuitSession, runs: NeuronRuns, b: SessionBatch, edges: Tensor, neurons: Tensor,
                          steps: int) -> None:
    """One batch of :func:`eap_ig_neurons`, added to ``edges [S, R]`` and ``neurons [L, m]``. A function of its own so
    that its clean outputs and differences (``[S, B, P, d]``, ``[L, B, P, m]``) are freed before the next batch's."""
    ablated = session.ablated(b).values
    abl_hidden = runs.ablated_hidden(b)
    clean, clean_hidden = runs.clean_run(b)
    diffs = clean - ablated  # [S, B, P, d]
    hidden_diffs = clean_hidden - abl_hidden  # [L, B, P, m]
    del clean_hidden
    start = ablated[0].expand_as(clean[0])  # [B, P, d]: the ablated input embedding
    per_pass = stacked_steps(session, b, steps)
    for k0 in range(0, steps, per_pass):
        alphas = torch.arange(k0, min(steps, k0 + per_pass), dtype=diffs.dtype, device=diffs.device) / steps
        T = len(alphas)
        embedding = (start[None] + alphas[:, None, None, None] * diffs[0][None]).flatten(0, 1)  # [T*B, P, d]
        probe = GradientProbe(ablated, edges, diffs=diffs, overrides={0: embedding.requires_grad_(True)[None]},
                              repeats=T, position_chunk=session.position_chunk)
        wrapped = NeuronProbe(probe, abl_hidden, neurons, diffs=hidden_diffs, repeats=T)
        session.backward_objective(b, _as_probe(wrapped), repeats=T)
        del embedding, probe, wrapped  # the next step's are made without them


class NeuronPatchingPlan:
    """``neuron-patching``'s fixed work list: node patching's passes (:func:`~circuits.discovery.exact.pass_plan`
    of the node cuts), then one pass per layer and chunk of ``circuits_per_pass`` neurons, run batch after batch
    (:func:`~circuits.discovery.exact.resumable_passes`). Every score comes from one pass, so a spread run's shares
    (0 elsewhere) add up to one process's exactly."""

    def __init__(self, session: CircuitSession, circuits_per_pass: int):
        L, m = NeuronRuns(session).shape
        self.node_cuts = NodeCuts(session.structure)
        self.node_passes = pass_plan(self.node_cuts, circuits_per_pass)
        self.neuron_passes = [(layer, idx) for layer in range(L) for idx in torch.arange(m).split(circuits_per_pass)]

    def __len__(self) -> int:
        return len(self.node_passes) + len(self.neuron_passes)


def _patching_units(session: CircuitSession, circuits_per_pass: int = 32, **params) -> int:
    """What a spread run splits (``Method.units``): the passes of :class:`NeuronPatchingPlan`."""
    return len(NeuronPatchingPlan(session, circuits_per_pass))


def _neuron_cut_effects(session: CircuitSession, runs: NeuronRuns, batch: SessionBatch, layer: int,
                        idx: Tensor) -> Tensor:
    """``[len(idx)]`` float64: ``batch``'s part of the mean objective drop of each neuron ``idx`` of ``layer`` cut
    alone, one circuit each of a batched pass that recomputes only this MLP and what it feeds (the rest held)."""
    s = session.structure
    L, m = runs.shape
    edges = s.edge_mask.to(session.device, session.model.dtype)
    effects = torch.empty(len(idx), dtype=torch.float64)
    per_pass = session.circuits_per_pass_for(batch, len(idx))  # fewer under a memory budget
    with torch.no_grad():
        held = session.held_full(batch)
        exact = held.exact.clone()
        exact[s.mlp_sender(layer)] = False  # recompute this MLP and what it feeds, hold the rest
        held = HeldCircuit(held.mask, held.outputs, exact)
        for start in range(0, len(idx), per_pass):
            chunk = idx[start:start + per_pass]
            c = len(chunk)
            masks = torch.ones(c, L, m, dtype=session.model.dtype)
            masks[torch.arange(c), layer, chunk] = 0  # [c, L, m]: one cut neuron per circuit
            inner = IncrementalResidual(edges[None].expand(c, *edges.shape), session.ablated(batch), held)
            logits = session.run(batch, NeuronMasked(inner, masks.to(session.device), runs.ablated_hidden(batch)))
            session.forwards += 1
            cut = session.objective(logits, batch).double().cpu()  # [c, b]
            effects[start:start + c] = (session.objective_full[batch.index][None] - cut).sum(1) / session.n_examples
    return effects


@register("neuron-patching", "neuron", "each head's and MLP neuron's exact effect, ablated alone (batched)",
          checkpoints=True, ranges={"circuits_per_pass": {"low": 1}}, units=_patching_units,
          memory=lambda params: {"kind": "patched", "neurons": 1, "held": 1})
def neuron_patching(session: CircuitSession, circuits_per_pass: int = 32,
                    checkpoint: Checkpoint | None = None) -> NeuronScores:
    """Exact single-unit effects: objective(full) - objective(all but that unit), averaged over pairs. The passes
    are a fixed plan (:class:`NeuronPatchingPlan`), run batch after batch (each batch's clean run held once): a run
    with ``checkpoint`` resumes to the same scores."""
    s = session.structure
    runs = NeuronRuns(session)
    plan = NeuronPatchingPlan(session, circuits_per_pass)
    n_node = len(plan.node_passes)

    def run_pass(batch: SessionBatch, p: int, results: dict[str, Tensor]) -> None:
        if p < n_node:
            results["nodes"][plan.node_passes[p]] += cut_effects(session, batch, plan.node_cuts, plan.node_passes[p])
        else:
            layer, idx = plan.neuron_passes[p - n_node]
            results["neurons"][layer, idx] += _neuron_cut_effects(session, runs, batch, layer, idx)

    zeros = {"nodes": torch.zeros(s.n_senders, dtype=torch.float64),
             "neurons": torch.zeros(*runs.shape, dtype=torch.float64)}
    results = resumable_passes(session, len(plan), run_pass, zeros, checkpoint=checkpoint,
                               description="neuron patching")
    nodes = torch.full((s.n_nodes,), float("nan"))
    nodes[:-1] = results["nodes"].float()
    return NeuronScores(nodes, results["neurons"].float())
