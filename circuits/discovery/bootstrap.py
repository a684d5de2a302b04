"""Bootstrapped sign agreement (Nikankin et al. 2025, arXiv 2510.25786): how stable each edge's sign is when the
examples are resampled, for :meth:`circuits.Graph.sign_consistent` selection.

An edge whose score flips sign between resamples of the same task carries noise, not a mechanism; ranking the
stable edges first beat greedy top-n on MIB. The method runs once on the discovery examples (the graph's
scores) and ``resamples`` times on bootstrap samples of them (drawn with replacement, same size, seeded); the
agreement of an edge is the fraction of resamples in which its score had the sign of the full-data score. A score
within :data:`ZERO_TOLERANCE` of the largest ``|score|`` of its run is numerically zero: it has no sign and never
agrees (else an edge with no effect, whose score is 0 or rounding noise of one fixed sign, would count as stable).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from circuits.discovery.registry import DiscoveryError
from circuits.graph.graph import Graph
from circuits.session.session import resolve_split

if TYPE_CHECKING:  # pragma: no cover
    from circuits.models.circuit_model import CircuitModel
    from circuits.tasks.task import Task

#: ``|score|`` at most this fraction of a run's largest ``|score|`` has no sign (float32 rounding is ~1e-7).
ZERO_TOLERANCE = 1e-6


def _signs(scores: torch.Tensor) -> torch.Tensor:
    """``[E]``: -1, 0 (numerically zero) or +1."""
    scores = torch.nan_to_num(scores.double(), nan=0.0)
    floor = ZERO_TOLERANCE * float(scores.abs().max()) if scores.numel() else 0.0
    return torch.where(scores.abs() > floor, torch.sign(scores), torch.zeros_like(scores))


def discover_with_sign_agreement(model: CircuitModel, task: Task, method: str = "eap-ig", *, resamples: int = 20,
                                 seed: int = 0, split: str = "train", reference: Task | None = None,
                                 **options: Any) -> Graph:
    """:func:`circuits.discover` plus each edge's sign agreement over ``resamples`` bootstrap samples of the
    examples, stored as ``metadata["sign_agreement"] = {"resamples", "seed", "values": [n_edges] in MIB order}``
    (read back by :attr:`Graph.sign_agreement`). ``options``: as :func:`circuits.discover` (ablation,
    batch_size, the method's parameters). Costs ``resamples + 1`` discovery runs."""
    from circuits.discovery import discover

    if int(resamples) < 1:
        raise DiscoveryError(f"resamples must be at least 1, got {resamples}")
    graph = discover(model, task, method, split=split, reference=reference, **options)
    if graph.metadata.get("level") != "edge":
        raise DiscoveryError(f"sign agreement ranks edges; method {method!r} scores nodes")
    data, default_reference, _ = resolve_split(task, split)
    reference = default_reference if reference is None else reference  # means stay those of the discovery run
    s = graph.structure
    order = s.edge_order
    base = _signs(graph.scores[order[:, 0], order[:, 1]])  # [E]
    agree = torch.zeros_like(base)
    gen = torch.Generator().manual_seed(int(seed))
    options = {**options, "show_progress": False}
    for _ in range(int(resamples)):
        rows = torch.randint(len(data), (len(data),), generator=gen)
        g = discover(model, data[rows], method, split="all", reference=reference, check=False, **options)
        agree += (_signs(g.scores[order[:, 0], order[:, 1]]) == base) & (base != 0)
    graph.metadata["sign_agreement"] = {"resamples": int(resamples), "seed": int(seed),
                                        "values": [round(float(v), 6) for v in agree / int(resamples)]}
    return graph
