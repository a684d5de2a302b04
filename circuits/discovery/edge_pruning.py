"""Edge pruning (Bhaskar et al. 2024): learn one hard-concrete mask per edge by gradient descent.

Every edge ``S -> R`` gets a gate ``z`` (:mod:`circuits.discovery.hard_concrete`, location ``log_alpha``) that
mixes the clean and ablated sender outputs as DESIGN.md's edge intervention does
(``input_R = sum_S z_SR out_S + (1 - z_SR) abl_S``). Adam minimizes

    KL(full model || masked model)  +  lambda1 * (s - t) + lambda2 * (s - t)^2

over ``log_alpha``, where ``s = 1 - mean P(z > 0)`` is the expected sparsity and ``t`` the target, warmed up
linearly from 0 to ``target_sparsity`` over the first half of the steps. ``lambda1, lambda2`` are Lagrange
multipliers trained by gradient *ascent* (as Edge Pruning does), so the sparsity constraint is enforced however
the KL trades against it. ``metric="task"`` trains on the task's metric instead of KL (maximized).

The circuit: the ``round((1 - target_sparsity) * n_edges)`` edges with the highest ``log_alpha`` (exactly the
target, as Edge Pruning's deterministic masks keep the expected number of non-zero gates), pruned to
input -> logits paths. Scores = ``softplus(log_alpha)`` of the final gates: increasing in ``log_alpha`` (higher =
kept more surely = more important), so ``graph.top_k(k)`` reproduces the circuit, and never negative: a closed
gate means "not needed", not "hurts" (DESIGN.md's sign), and must rank low under ``|score|`` too (AUROC).
Degenerate outcomes (an empty circuit, every edge, training far
from the target) are never returned silently: a warning names the setting to change.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import Tensor

from circuits.discovery import hard_concrete as hc
from circuits.discovery.acdc import objective_metric
from circuits.discovery.checkpoint import Checkpoint
from circuits.discovery.progress import progress
from circuits.discovery.registry import METHODS, DiscoveryError, register
from circuits.graph.pruning import prune
from circuits.session import CircuitSession


def _eap_ig_then_trained(params: dict) -> list[dict]:
    """edge-pruning-eap-ig's memory plans (:meth:`CircuitSession.fit`): its EAP-IG phase (eap-ig's own plan at
    ``ig_steps``), then the training."""
    return METHODS["eap-ig"].memory_plans({"steps": params["ig_steps"]}) + [{"kind": "trained"}]


@register("edge-pruning", "edge", "edge pruning (Bhaskar et al. 2024): hard-concrete edge masks trained for low KL "
          "at a target sparsity", checkpoints=True, memory=lambda params: {"kind": "trained"},
          ranges={"target_sparsity": {"low": 0, "high": 1}, "steps": {"low": 1}, "lr": {"low": 0, "low_open": True},
                  "seed": {"low": 0}, "metric": {"choices": ("kl", "task")}})
def edge_pruning(session: CircuitSession, target_sparsity: float = 0.95, steps: int = 500, lr: float = 0.1,
                 seed: int = 0, metric: str = "kl", init_log_alpha: float = 3.0,
                 checkpoint: Checkpoint | None = None,
                 on_progress: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor]:
    """``(scores [S, R] = softplus(log_alpha), in_graph [S, R] bool)``.

    ``target_sparsity``: fraction of edges removed (0.95 keeps 5%). ``steps``: Adam steps, one data batch
    each (batches cycle). ``lr``: learning rate of ``log_alpha`` and of the Lagrange multipliers. ``seed``:
    initial noise and gate samples. ``metric``: ``"kl"`` (KL to the full model at the readout positions) or
    ``"task"``. ``init_log_alpha``: starting gate location (3.0: every gate open with probability ~0.99).
    Under a memory budget a batch may run as several passes (:meth:`CircuitSession.fit`, kind ``"trained"``);
    a step's gradient is accumulated over them, so the gates are those of the unbudgeted run.
    """
    return train_edge_gates(session, init_log_alpha, target_sparsity=target_sparsity, steps=steps, lr=lr, seed=seed,
                            metric=metric, checkpoint=checkpoint, on_progress=on_progress, name="edge-pruning")


@register("edge-pruning-eap-ig", "edge", "edge pruning whose gates start from EAP-IG's ranking (Mondorf et al. "
          "2025): log_alpha = 3 (2r - 1), r the normalised rank of |EAP-IG score|", checkpoints=True,
          memory=_eap_ig_then_trained,
          ranges={"target_sparsity": {"low": 0, "high": 1}, "steps": {"low": 1}, "lr": {"low": 0, "low_open": True},
                  "seed": {"low": 0}, "metric": {"choices": ("kl", "task")}, "ig_steps": {"low": 1}})
def edge_pruning_eap_ig(session: CircuitSession, target_sparsity: float = 0.95, steps: int = 200, lr: float = 0.1,
                        seed: int = 0, metric: str = "kl", ig_steps: int = 5,
                        checkpoint: Checkpoint | None = None,
                        on_progress: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor]:
    """:func:`edge_pruning` started from EAP-IG (``ig_steps`` steps) instead of every gate open: each gate's
    location is ``3 (2r - 1)``, ``r`` in [0, 1] the normalised rank of the edge's ``|EAP-IG score|``, so the edges
    EAP-IG ranks first start open (``log_alpha = 3``) and the last closed (``-3``). 200 steps by default: the
    start is already close to a circuit."""
    from circuits.discovery.attribution import eap_ig
    from circuits.discovery.ensemble import signed_normalized_rank

    s = session.structure
    mask = s.edge_mask.to(session.device)
    ranks = signed_normalized_rank(eap_ig(session, steps=ig_steps), mask).abs()  # [S, R]: r of |score|
    order = s.edge_order.to(session.device)
    init = 3.0 * (2.0 * ranks[order[:, 0], order[:, 1]].float() - 1.0)  # [E] in MIB order
    return train_edge_gates(session, init, target_sparsity=target_sparsity, steps=steps, lr=lr, seed=seed,
                            metric=metric, checkpoint=checkpoint, on_progress=on_progress,
                            name="edge-pruning-eap-ig")


def train_edge_gates(session: CircuitSession, init_log_alpha: float | Tensor, *, target_sparsity: float, steps: int,
                     lr: float, seed: int, metric: str, checkpoint: Checkpoint | None,
                     on_progress: Callable[[int], None] | None, name: str) -> tuple[Tensor, Tensor]:
    """Edge pruning's training loop from gate locations ``init_log_alpha`` (a number, or ``[E]`` in MIB edge
    order), plus 1% noise; returns ``(scores, in_graph)`` as :func:`edge_pruning`. ``name``: the progress bar's
    and the result record's."""
    if not 0.0 <= target_sparsity <= 1.0:
        raise DiscoveryError(f"target_sparsity is the fraction of edges removed and must lie in [0, 1], "
                             f"got {target_sparsity}")
    if steps < 1:
        raise DiscoveryError(f"steps must be at least 1, got {steps}")
    if not lr > 0:
        raise DiscoveryError(f"lr must be positive, got {lr}")
    m = objective_metric(session, metric)
    session.fit("trained")  # before any forward: a batch's passes fit the memory budget, or the run is refused
    model, s = session.model, session.structure
    order = s.edge_order.to(model.device)  # [E, 2]
    E = order.shape[0]
    groups = session.batch_groups  # one step per batch, over the passes it runs as

    gen = torch.Generator().manual_seed(seed)
    start_at = init_log_alpha.float().cpu() if isinstance(init_log_alpha, Tensor) else float(init_log_alpha)
    log_alpha = (start_at + 0.01 * torch.randn(E, generator=gen, dtype=torch.float32)).to(model.device)
    log_alpha.requires_grad_(True)
    lambdas = torch.zeros(2, device=model.device, requires_grad=True)
    opt = torch.optim.Adam([log_alpha], lr=lr)
    opt_lambda = torch.optim.Adam([lambdas], lr=lr, maximize=True)
    start = 0
    state = checkpoint.load() if checkpoint is not None else None
    if state:
        with torch.no_grad():
            log_alpha.copy_(state["log_alpha"])
            lambdas.copy_(state["lambdas"])
        opt.load_state_dict(state["opt"])
        opt_lambda.load_state_dict(state["opt_lambda"])
        gen.set_state(state["rng"])
        start = state["step"]

    warmup = max(1, steps // 2)
    history = []
    bar = progress(range(start, steps), name, session, total=steps, initial=start, unit="step")
    for step in bar:
        target = target_sparsity * min(1.0, (step + 1) / warmup)
        z = hc.sample(log_alpha, gen)
        masks = torch.zeros(s.n_senders, s.n_receivers, dtype=torch.float32, device=model.device)
        masks = masks.index_put((order[:, 0], order[:, 1]), z)  # [S, R], run in the model's dtype
        task_loss = -session.trained_objective(groups[step % len(groups)], masks, m)
        sparsity = 1.0 - hc.prob_nonzero(log_alpha).mean()
        gap = sparsity - target
        loss = task_loss + lambdas[0] * gap + lambdas[1] * gap ** 2
        opt.zero_grad(set_to_none=True)
        opt_lambda.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        opt_lambda.step()
        if hasattr(bar, "set_postfix") and step % 10 == 0:
            bar.set_postfix(loss=f"{float(task_loss.detach()):.4g}", sparsity=f"{float(sparsity.detach()):.3f}",
                            target=f"{target:.3f}")
        history.append(float(task_loss.detach()))
        if checkpoint is not None:
            checkpoint.maybe_save({"log_alpha": log_alpha.detach().cpu(), "lambdas": lambdas.detach().cpu(),
                                   "opt": opt.state_dict(), "opt_lambda": opt_lambda.state_dict(),
                                   "rng": gen.get_state(), "step": step + 1})
        if on_progress is not None:
            on_progress(step + 1)

    la = log_alpha.detach().float().cpu()
    k = int(round((1.0 - target_sparsity) * E))
    chosen = torch.zeros(E, dtype=torch.bool)
    if k > 0:
        # ties broken by MIB edge order, as Graph.top_k does
        chosen[torch.sort(la, descending=True, stable=True).indices[:k]] = True
    cpu_order = s.edge_order
    selected = torch.zeros(s.n_senders, s.n_receivers, dtype=torch.bool)
    selected[cpu_order[chosen, 0], cpu_order[chosen, 1]] = True
    in_graph, _ = prune(s, selected)
    scores = torch.zeros(s.n_senders, s.n_receivers, dtype=torch.float32)
    scores[cpu_order[:, 0], cpu_order[:, 1]] = torch.nn.functional.softplus(la.double()).float()
    open_gates = int((hc.expected_gate(la) > 0.5).sum())
    achieved = 1.0 - open_gates / E
    expected = float(1.0 - hc.prob_nonzero(la).mean())
    session.extras[name] = {"n_selected": k, "n_edges_pruned_circuit": int(in_graph.sum()),
                                  "sparsity_of_open_gates": achieved,
                                  "expected_sparsity": expected,
                                  "final_loss": history[-1] if history else None}
    _warn_degenerate(k, E, int(in_graph.sum()), achieved, expected, target_sparsity)
    return scores, in_graph


def _warn_degenerate(k: int, n_edges: int, n_circuit: int, achieved: float, expected: float, target: float) -> None:
    if k == 0:
        warnings.warn(f"edge pruning: target_sparsity={target} keeps no edge, so the circuit is empty; lower "
                      "target_sparsity (e.g. 0.95 keeps 5% of the edges)", stacklevel=3)
    elif k >= n_edges:
        warnings.warn(f"edge pruning: target_sparsity={target} keeps every edge, so the circuit is the full model; "
                      "raise target_sparsity", stacklevel=3)
    elif n_circuit == 0:
        warnings.warn(f"edge pruning: the {k} edges with the highest log_alpha form no path from input to logits, "
                      "so the pruned circuit is empty; train longer (steps), raise lr, or lower target_sparsity",
                      stacklevel=3)
    if 0 < k < n_edges and min(abs(achieved - target), abs(expected - target)) > 0.05:
        warnings.warn(f"edge pruning: training ended with {achieved:.1%} of the gates closed (expected sparsity "
                      f"{expected:.1%}) against a target of {target:.1%}; the circuit was cut to the target by "
                      "log_alpha, but the masks had not "
                      "converged: raise steps or lr", stacklevel=3)
