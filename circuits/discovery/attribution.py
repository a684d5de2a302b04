"""Gradient attribution: EAP, EAP-IG (inputs and activations) and node-level attribution patching.

All of them score edge ``S -> R`` as ``(out_S(clean) - out_S(ablated)) . g_R`` summed over positions (or, with
``positions=True``, kept per position: ``[S, R, L]`` position-aware scores, Haklay et al. 2025) and averaged over
pairs, where ``g_R`` is a gradient of the objective with respect to receiver R's input; they
differ only in *where* that gradient is taken:

* ``eap`` (Syed et al. 2023): on the clean run. This is exactly ``dM/dm[S, R]`` at ``m = 1``.
* ``eap-ig`` (Hanna et al. 2024, EAP-IG "inputs"): averaged over runs whose input embedding is interpolated
  between the ablated and the clean input, at ``alpha = k / steps`` for ``k = 0 .. steps - 1`` (the points of
  the EAP-IG reference code and MIB, a left Riemann sum of the integral from ablated to clean). With
  ``steps=1`` it is the gradient at the ablated input. As ``steps`` grows, the sum of all scores approaches
  the total effect ``M(clean) - M(ablated)`` (completeness of integrated gradients).
* ``eap-ig-activations`` (EAP-IG "activations", MIB): for each sender group in turn (the input; each layer's
  heads; each MLP) its output is set to ``ablated + alpha (clean - ablated)``, ``alpha = k / steps`` for
  ``k = 1 .. steps``, the rest of the model running on the clean input; gradients are averaged over all
  (group, alpha) runs, as the reference code does.
* ``gim`` / ``relp``: EAP-IG (5 steps) whose backward follows GIM's or RelP's rules instead of the gradient
  (:mod:`circuits.interventions.rules`); ``eap`` and ``eap-ig`` take the same rules as ``rule=``.
* ``node-ap``: attribution patching of nodes. A node's output enters every downstream receiver with weight 1,
  so its score is the sum of its outgoing EAP edge scores; it comes out of the same single pass.

One forward and one backward per batch (EAP-IG: per group of stacked steps). The model's weight views carry no
autograd history (``CircuitModel.spec``), so gradients flow to activations only, and every receiver's gradient
is turned into scores inside its own backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuits.discovery.registry import DiscoveryError, register
from circuits.discovery.shares import batch_units, batches_in_share
from circuits.interventions import rules
from circuits.interventions.probe import GradientProbe
from circuits.interventions.rules import BackwardRule, resolve_rule
from circuits.session import CircuitSession, SessionBatch

# Rows (stacked steps x examples) of one attribution pass: beyond ~100 rows a CPU pass gets slower per row and
# activation memory grows with no gain; on GPUs larger passes would pay, but memory is the limit there.
MAX_ROWS_PER_PASS = 96


def _stacked_steps(params: dict) -> dict:
    """EAP-IG's memory plan (:meth:`CircuitSession.fit`): clean outputs and differences held, up to all steps
    stacked in one pass (exactly ``steps_per_pass`` when it is given)."""
    fixed = params.get("steps_per_pass")
    plan = {"kind": "attribution", "sender_copies": 2, "steps": fixed or params["steps"], "fixed_steps": bool(fixed)}
    return {**plan, "by_position": True} if params.get("positions") else plan


def _attribution_plan(params: dict) -> dict:
    """EAP's memory plan: one forward and backward per batch (position-aware: ``[S, R, L]`` scores)."""
    return {"kind": "attribution", "by_position": True} if params.get("positions") else {"kind": "attribution"}


def stacked_steps(session: CircuitSession, b: SessionBatch, steps: int, steps_per_pass: int | None = None) -> int:
    """EAP-IG's interpolation steps stacked in one pass over ``b``: ``steps_per_pass``, or as many as keep the pass
    within :data:`MAX_ROWS_PER_PASS` rows; at most what a memory budget allows (``session.steps_per_pass``)."""
    per_pass = steps_per_pass or max(1, min(steps, MAX_ROWS_PER_PASS // len(b)))
    return min(per_pass, session.steps_per_pass or per_pass)


def _scores_buffer(session: CircuitSession, positions: bool = False) -> Tensor:
    """``[S, R]`` zeros, or ``[S, R, L]`` for position-aware scores (``L = session.n_positions``: it raises
    :class:`~circuits.session.PositionAlignmentError` for pairs of several lengths, before any forward)."""
    s = session.structure
    shape = (s.n_senders, s.n_receivers) + ((session.n_positions,) if positions else ())
    return torch.zeros(shape, dtype=torch.float32, device=session.device)


def _finish(session: CircuitSession, scores: Tensor, n_steps: int = 1) -> Tensor:
    scores /= session.n_examples * n_steps
    edges = session.structure.edge_mask.to(scores.device)
    return scores.masked_fill_(~(edges if scores.dim() == 2 else edges[..., None]), 0.0)


@register("eap", "edge", "edge attribution patching (Syed et al. 2023): dM/dm at m = 1",
          ranges={"rule": {"choices": rules.RULES}}, memory=_attribution_plan,
          units=batch_units)
def eap(session: CircuitSession, rule: str | BackwardRule = "gradient", positions: bool = False) -> Tensor:
    """``[S, R]`` EAP scores: ``dM/dm`` at ``m = 1``. ``rule``: the backward pass ("gradient", or the backward
    rules "gim" and "relp" of :mod:`circuits.interventions.rules`). ``positions``: ``[S, R, L]`` position-aware
    scores, ``dM/dm[S, R, p]`` (their sum over positions is the ``[S, R]`` score)."""
    backward = _rule(rule)
    scores = _scores_buffer(session, positions)
    for b in batches_in_share(session, "eap"):
        session.backward_objective(b, GradientProbe(session.ablated(b).values, scores, rule=backward,
                                                    position_chunk=session.position_chunk, positions=positions))
    return _finish(session, scores)


def _rule(rule: str | BackwardRule | None) -> BackwardRule | None:
    try:
        return resolve_rule(rule)
    except ValueError as err:
        raise DiscoveryError(str(err)) from None


@register("node-ap", "node", "attribution patching on heads and MLPs", memory=lambda params: {"kind": "attribution"},
          units=batch_units)
def node_ap(session: CircuitSession) -> Tensor:
    """``[n_nodes]`` node attribution: each sender's summed outgoing EAP scores (``logits`` gets NaN)."""
    edge_scores = eap(session)
    nodes = torch.full((session.structure.n_nodes,), float("nan"), device=edge_scores.device)
    nodes[:-1] = edge_scores.sum(1)
    return nodes


def _clean_diffs(session: CircuitSession, b: SessionBatch, ablated: Tensor) -> tuple[Tensor, Tensor]:
    """Clean sender outputs ``[S, B, P, d]`` and their differences from the ablated ones."""
    with torch.no_grad():
        clean = session.model.sender_outputs(b.clean, b.attention_mask)
    return clean, clean - ablated


@register("eap-ig", "edge", "EAP with integrated gradients over the input embedding (Hanna et al. 2024)",
          ranges={"steps": {"low": 1}, "steps_per_pass": {"low": 1}, "rule": {"choices": rules.RULES}},
          memory=lambda params: _stacked_steps(params),
          units=batch_units)
def eap_ig(session: CircuitSession, steps: int = 5, steps_per_pass: int | None = None,
           rule: str | BackwardRule = "gradient", positions: bool = False) -> Tensor:
    """``[S, R]`` EAP-IG with the input embedding interpolated from ablated to clean.

    ``steps_per_pass``: interpolation steps stacked into one forward/backward (default: as many as keep a pass
    within :data:`MAX_ROWS_PER_PASS` rows). The steps share the sender differences, so their receiver gradients
    are summed before the score products: stacking all steps makes those products cost one step's. ``rule``:
    the backward pass, as for :func:`eap`. ``positions``: ``[S, R, L]`` position-aware scores.
    """
    backward = _rule(rule)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if steps_per_pass is not None and steps_per_pass < 1:
        raise ValueError(f"steps_per_pass must be at least 1 (or None for automatic), got {steps_per_pass}")
    scores = _scores_buffer(session, positions)
    for b in batches_in_share(session, f"eap-ig ({steps} steps)"):
        _eap_ig_batch(session, b, scores, steps, steps_per_pass, backward, positions)
    return _finish(session, scores, steps)


def _eap_ig_batch(session: CircuitSession, b: SessionBatch, scores: Tensor, steps: int, steps_per_pass: int | None,
                  backward: BackwardRule | None, positions: bool) -> None:
    """One batch of :func:`eap_ig`, its scores added to ``scores``. A function of its own so that its clean outputs
    and differences ``[S, B, P, d]`` are freed when it returns, before the next batch's are made."""
    ablated = session.ablated(b).values
    clean, diffs = _clean_diffs(session, b, ablated)
    start = ablated[0].expand_as(clean[0])  # [B, P, d]: the ablated input embedding
    per_pass = stacked_steps(session, b, steps, steps_per_pass)
    for k0 in range(0, steps, per_pass):
        alphas = torch.arange(k0, min(steps, k0 + per_pass), dtype=diffs.dtype, device=diffs.device) / steps
        T = len(alphas)
        embedding = (start[None] + alphas[:, None, None, None] * diffs[0][None])  # [T, B, P, d]
        embedding = embedding.flatten(0, 1).detach().requires_grad_(True)
        probe = GradientProbe(ablated, scores, diffs=diffs, overrides={0: embedding[None]}, repeats=T,
                              rule=backward, position_chunk=session.position_chunk, positions=positions)
        session.backward_objective(b, probe, repeats=T)
        del embedding, probe  # the next step's are made without them


@register("eap-ig-activations", "edge", "EAP-IG interpolating each sender group's activations (MIB)",
          ranges={"steps": {"low": 1}}, memory=lambda params: {**_attribution_plan(params), "sender_copies": 2},
          units=batch_units)
def eap_ig_activations(session: CircuitSession, steps: int = 5, positions: bool = False) -> Tensor:
    """``[S, R]`` EAP-IG with each sender group's output interpolated in turn (MIB's ``ig-activations``);
    ``positions``: ``[S, R, L]`` position-aware scores."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    s = session.structure
    groups = [slice(0, 1)]
    for layer in range(s.n_layers):
        heads = s.layer_senders(layer)
        groups.append(slice(heads.start, heads.start + s.n_heads))
        if s.has_mlp:
            groups.append(slice(s.mlp_sender(layer), s.mlp_sender(layer) + 1))
    scores = _scores_buffer(session, positions)
    for b in batches_in_share(session, f"eap-ig-activations ({steps} steps)"):
        _eap_ig_activations_batch(session, b, scores, groups, steps, positions)
    return _finish(session, scores, steps * len(groups))


def _eap_ig_activations_batch(session: CircuitSession, b: SessionBatch, scores: Tensor, groups: list[slice],
                              steps: int, positions: bool) -> None:
    """One batch of :func:`eap_ig_activations` (its tensors freed when it returns, as :func:`_eap_ig_batch`)."""
    ablated = session.ablated(b).values
    clean, diffs = _clean_diffs(session, b, ablated)
    for group in groups:
        abl = ablated[group].expand_as(clean[group])
        for k in range(1, steps + 1):
            value = abl + (k / steps) * diffs[group]  # [k, B, P, d]
            if group.start == 0:
                value = value.detach().requires_grad_(True)
            session.backward_objective(b, GradientProbe(ablated, scores, diffs=diffs, overrides={group.start: value},
                                                        position_chunk=session.position_chunk, positions=positions))
            del value


@register("gim", "edge", "EAP-IG with GIM's backward (Edin et al. 2025): frozen norms, softmax gradient at "
          "temperature 2, q/k/v gradients scaled 1/4, 1/4, 1/2",
          ranges={"steps": {"low": 1}, "softmax_temperature": {"low": 0, "low_open": True}},
          memory=lambda params: _stacked_steps(params),
          units=batch_units)
def gim(session: CircuitSession, steps: int = 5, softmax_temperature: float = 2.0) -> Tensor:
    """``[S, R]``: :func:`eap_ig` with :func:`circuits.interventions.rules.gim` as the backward."""
    return eap_ig(session, steps=steps, rule=rules.gim(softmax_temperature=softmax_temperature))


@register("relp", "edge", "EAP-IG with RelP's LRP rules (Rezaei Jafari et al. 2025): LN-rule, identity rule, "
          "half rule; attention='ah' adds the AH-rule",
          ranges={"steps": {"low": 1}, "attention": {"choices": rules.ATTENTION_RULES}},
          memory=lambda params: _stacked_steps(params),
          units=batch_units)
def relp(session: CircuitSession, steps: int = 5, attention: str = "gradient") -> Tensor:
    """``[S, R]``: :func:`eap_ig` with :func:`circuits.interventions.rules.relp` as the backward."""
    try:
        rule = rules.relp(attention=attention)
    except ValueError as err:
        raise DiscoveryError(str(err)) from None
    return eap_ig(session, steps=steps, rule=rule)
