"""Hard-concrete gates (Louizos et al. 2018), parametrized as Edge Pruning (Bhaskar et al. 2024) does.

A gate with location ``log_alpha`` samples ``u ~ U(0, 1)``,
``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)``, stretches it to ``(l, r)`` and clamps to ``[0, 1]``:
``z = clamp(s * (r - l) + l, 0, 1)``. With ``l < 0 < 1 < r`` the gate is exactly 0 or 1 with positive
probability, and ``P(z > 0) = sigmoid(log_alpha - beta * log(-l / r))`` is the differentiable expected L0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BETA = 2.0 / 3.0
LEFT, RIGHT = -0.1, 1.1
EPS = 1e-6


def sample(log_alpha: Tensor, generator: torch.Generator | None = None, beta: float = BETA,
           left: float = LEFT, right: float = RIGHT) -> Tensor:
    """One stochastic gate value per entry of ``log_alpha`` (differentiable in ``log_alpha``)."""
    u = torch.rand(log_alpha.shape, generator=generator, dtype=log_alpha.dtype).to(log_alpha.device)
    u = u.clamp(EPS, 1 - EPS)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return (s * (right - left) + left).clamp(0.0, 1.0)


def prob_nonzero(log_alpha: Tensor, beta: float = BETA, left: float = LEFT, right: float = RIGHT) -> Tensor:
    """``P(z > 0)`` per gate: the expected L0 norm's summands."""
    return torch.sigmoid(log_alpha - beta * math.log(-left / right))


def expected_gate(log_alpha: Tensor, left: float = LEFT, right: float = RIGHT) -> Tensor:
    """The noise-free gate (u = 1/2): ``clamp(sigmoid(log_alpha) * (r - l) + l, 0, 1)``."""
    return (torch.sigmoid(log_alpha) * (right - left) + left).clamp(0.0, 1.0)
