"""Score ensembles (Mondorf et al. 2025, arXiv 2510.06811, winners of the BlackboxNLP 2025 MIB circuit task):
several registered methods score the same session, and their scores are combined rank-wise.

Scores of different methods live on different scales (EAP in logit units, edge pruning's gates, ACDC's
effects), so each member's scores become **signed normalised ranks** first: ``sign(score) * r``, where ``r`` in
[0, 1] is the fraction of the other edges whose ``|score|`` is strictly smaller (ties share a rank). That keeps
the member's ordering exactly, under both MIB selections: by raw score (positive edges by size, then zeros, then
negative edges by size) and by ``|score|``. The ensemble's magnitude is the ``mean``, ``min`` or ``max`` over
members of the ranks' magnitudes (``min``: an edge ranks as high as its least enthusiastic member puts it), its
sign the sign of the members' mean signed rank: averaging signed ranks directly cancels edges on which members
disagree in sign (on zoo:planted-ioi, EAP-IG and EAP-IG-activations each rank the planted circuit perfectly by
``|score|``, AUROC 1.0, but the mean of their signed ranks only 0.94). An ensemble of identical members is its
member's ranking.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import Tensor

from circuits.discovery.registry import METHODS, DiscoveryError, register
from circuits.session import CircuitSession

COMBINE = ("mean", "min", "max")
DEFAULT_MEMBERS = ("eap-ig", "eap-ig-activations")


def signed_normalized_rank(scores: Tensor, edge_mask: Tensor) -> Tensor:
    """``[S, R]``: ``sign(score) * r`` on the edges (0 elsewhere), ``r`` = the fraction of the other edges with a
    strictly smaller ``|score|`` (so the largest ``|score|`` gets 1, the smallest 0, and ties share a rank)."""
    values = scores[edge_mask].double()  # [E]
    magnitude = torch.nan_to_num(values.abs(), nan=0.0)
    below = torch.searchsorted(torch.sort(magnitude).values, magnitude, right=False)  # strictly smaller, [E]
    rank = below.double() / max(1, values.numel() - 1)
    out = torch.zeros(scores.shape, dtype=torch.float64, device=scores.device)
    out[edge_mask] = torch.sign(torch.nan_to_num(values, nan=0.0)) * rank
    return out


def combine_ranks(ranks: Tensor, combine: str) -> Tensor:
    """``[M, S, R]`` members' signed normalised ranks -> ``[S, R]``: ``combine`` ("mean", "min", "max") of their
    magnitudes, with the sign of their mean (an edge two members rank high with opposite signs stays high under
    ``|score|`` instead of cancelling to 0; a tie of signs counts as positive)."""
    magnitude = ranks.abs()
    if combine == "mean":
        size = magnitude.mean(0)
    elif combine == "min":
        size = magnitude.min(0).values
    elif combine == "max":
        size = magnitude.max(0).values
    else:
        raise DiscoveryError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
    return torch.where(ranks.mean(0) >= 0, size, -size)


def _member_plans(params: dict) -> list[dict]:
    """Every member's memory plan (``CircuitSession.fit``): the session's chunks fit each of them."""
    members = params["members"]
    names = [m.strip() for m in members.split(",")] if isinstance(members, str) else list(members)
    members_plans = [p for name in names if name in METHODS and name != "ensemble"
                     for p in METHODS[name].memory_plans({})]
    return members_plans + [{"kind": "patched"}]  # (the curve's circuits), as for members that declare none


@register("ensemble", "edge", "score ensemble (Mondorf et al. 2025): mean / min / max of the members' signed "
          "normalised ranks", ranges={"combine": {"choices": COMBINE}}, memory=_member_plans)
def ensemble(session: CircuitSession, members: list[str] | tuple[str, ...] = DEFAULT_MEMBERS,
             combine: str = "mean") -> Tensor:
    """``[S, R]``: every method of ``members`` (names in :data:`METHODS`, at their defaults) scores the session;
    their signed normalised ranks are combined by ``combine`` ("mean", "min" or "max"). The members, their
    parameters and wall times go into the graph's metadata (``metadata["result"]``)."""
    return score_ensemble(session, members, combine, lambda name: METHODS[name].fn(session))


def score_ensemble(session: CircuitSession, members: list[str] | tuple[str, ...] | str, combine: str,
                   score: Callable[[str], Any]) -> Tensor:
    """:func:`ensemble` with each member's scores from ``score(name)`` (what ``METHODS[name].fn(session)``
    returns: in this process, or spread over workers by ``EvaluatorPool``)."""
    if isinstance(members, str):
        members = [m.strip() for m in members.split(",") if m.strip()]
    members = list(members)
    if not members:
        raise DiscoveryError("an ensemble needs at least one member method, e.g. members=['eap-ig', 'eap']")
    if combine not in COMBINE:
        raise DiscoveryError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
    for name in members:
        if name not in METHODS or name == "ensemble":
            raise DiscoveryError(f"ensemble member {name!r} is not a registered edge method; choose from "
                                 f"{', '.join(sorted(n for n, m in METHODS.items() if m.level == 'edge'))}")
        m = METHODS[name]
        if m.level != "edge":
            raise DiscoveryError(f"ensemble member {name!r} scores nodes; an ensemble combines edge scores")
        if session.ablation not in m.ablations:
            raise DiscoveryError(f"ensemble member {name!r} cannot use ablation={session.ablation!r}: {m.why_not}")
    mask = session.structure.edge_mask.to(session.device)
    ranks, record = [], []
    for name in members:
        start = time.perf_counter()
        scores: Any = score(name)
        if isinstance(scores, tuple):  # (scores, in_graph): the member's own circuit is not used
            scores = scores[0]
        ranks.append(signed_normalized_rank(scores.to(session.device), mask))
        record.append({"method": name, "params": METHODS[name].params,
                       "wall_time_s": round(time.perf_counter() - start, 3)})
        session.extras.pop(name, None)
    session.extras["ensemble"] = {"members": record, "combine": combine}
    return combine_ranks(torch.stack(ranks), combine).float()
