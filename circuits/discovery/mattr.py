"""MAttr, multi-sparsity mask attribution (Arora et al. 2026, arXiv 2609.25518): one learned mask logit per edge,
trained so that *every* top-k cut of it is faithful, not only one target sparsity as in edge pruning.

Every step draws a circuit size ``k`` log-uniformly between 1 and the number of edges (small circuits are drawn
as often as large ones on a log scale, where the faithfulness curves that matter live), turns the logits
``theta [E]`` into a soft top-k mask and descends the KL divergence of the masked model from the full one:

    m_e = sigmoid((theta_e - tau_k) / temperature),   tau_k = midway between the k-th and (k+1)-th largest theta

so about k edges are open, the ones ranked first. The gradient reaches the edges near the cut of the drawn k,
and over many draws every part of the ranking is trained against its neighbours. Adam on ``theta`` (started
at 0 plus 1% noise), KL at the read positions (or the task metric, ``metric="task"``).

Scores: ``theta - min(theta)``: the learned ranking, never negative (a low logit means "cut early", not "hurts"),
so signed and ``|score|`` selections agree. Defaults (200 steps, Adam lr 0.05, temperature 0.5, KL): the brief
of this package's issue 19; the paper itself could not be retrieved here, so they are not the paper's numbers.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from circuits.discovery.acdc import objective_metric
from circuits.discovery.checkpoint import Checkpoint
from circuits.discovery.progress import progress
from circuits.discovery.registry import DiscoveryError, register
from circuits.session import CircuitSession


def sigmoid_top_k(theta: Tensor, k: int, temperature: float) -> Tensor:
    """``[E]`` soft mask: about ``k`` entries near 1 (the largest ``theta``), the rest near 0."""
    E = theta.shape[0]
    top = torch.topk(theta, min(k + 1, E)).values
    tau = top[k - 1] if k >= E else 0.5 * (top[k - 1] + top[k])
    return torch.sigmoid((theta - tau) / temperature)


@register("mattr", "edge", "multi-sparsity mask learning (MAttr, Arora et al. 2026): sigmoid top-k masks at a "
          "log-uniform random k per step, KL to the full model", checkpoints=True,
          memory=lambda params: {"kind": "trained"},
          ranges={"steps": {"low": 1}, "lr": {"low": 0, "low_open": True}, "temperature": {"low": 0, "low_open": True},
                  "seed": {"low": 0}, "metric": {"choices": ("kl", "task")}})
def mattr(session: CircuitSession, steps: int = 200, lr: float = 0.05, temperature: float = 0.5, seed: int = 0,
          metric: str = "kl", checkpoint: Checkpoint | None = None,
          on_progress: Callable[[int], None] | None = None) -> Tensor:
    """``[S, R]`` learned edge ranking (module docstring). ``steps``: Adam steps, one data batch each (batches
    cycle); ``lr``: Adam's learning rate; ``temperature``: of the sigmoid top-k; ``seed``: initial noise and the
    drawn sizes; ``metric``: "kl" or "task". Under a memory budget a step's gradient is accumulated over the
    passes its batch runs as (:meth:`CircuitSession.trained_objective`): the ranking of the unbudgeted run."""
    if steps < 1:
        raise DiscoveryError(f"steps must be at least 1, got {steps}")
    if not lr > 0 or not temperature > 0:
        raise DiscoveryError(f"lr and temperature must be positive, got lr={lr}, temperature={temperature}")
    m = objective_metric(session, metric)
    session.fit("trained")  # before any forward: a batch's passes fit the memory budget, or the run is refused
    model, s = session.model, session.structure
    order = s.edge_order.to(model.device)  # [E, 2]
    E = order.shape[0]
    gen = torch.Generator().manual_seed(seed)
    theta = (0.01 * torch.randn(E, generator=gen)).to(model.device).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    start = 0
    state = checkpoint.load() if checkpoint is not None else None
    if state:
        with torch.no_grad():
            theta.copy_(state["theta"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["rng"])
        start = state["step"]
    log_e = math.log(E)
    groups = session.batch_groups  # one step per batch, over the passes it runs as
    for step in progress(range(start, steps), "mattr", session, total=steps, initial=start, unit="step"):
        k = min(E, max(1, int(round(math.exp(float(torch.rand((), generator=gen)) * log_e)))))  # log-uniform
        mask = sigmoid_top_k(theta, k, temperature)
        masks = torch.zeros(s.n_senders, s.n_receivers, dtype=torch.float32, device=model.device)
        masks = masks.index_put((order[:, 0], order[:, 1]), mask)  # [S, R], run in the model's dtype
        loss = -session.trained_objective(groups[step % len(groups)], masks, m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if checkpoint is not None:
            checkpoint.maybe_save({"theta": theta.detach().cpu(), "opt": opt.state_dict(), "rng": gen.get_state(),
                                   "step": step + 1})
        if on_progress is not None:
            on_progress(step + 1)
    learned = theta.detach().float().cpu()
    scores = torch.zeros(s.n_senders, s.n_receivers, dtype=torch.float32)
    cpu_order = s.edge_order
    scores[cpu_order[:, 0], cpu_order[:, 1]] = learned - learned.min()
    return scores
