"""The random baseline: seeded scores with no information, the floor every method must clear."""

from __future__ import annotations

import torch
from torch import Tensor

from circuits.discovery.registry import register
from circuits.session import CircuitSession


@register("random", "edge", "random scores: the baseline every method must beat", ranges={"seed": {"low": 0}})
def random_scores(session: CircuitSession, seed: int = 0) -> Tensor:
    """``[S, R]`` standard-normal scores on the real edges (0 elsewhere), reproducible from ``seed``."""
    s = session.structure
    scores = torch.randn(s.n_senders, s.n_receivers, generator=torch.Generator().manual_seed(seed))
    return scores.masked_fill_(~s.edge_mask, 0.0)
