"""Exact patching: each edge's (or node's) effect measured by ablating it alone.

The reference the approximations are judged by: score = objective(full) - objective(all but that edge),
averaged over pairs (for KL: D(all but that edge) - D(full)). Edges are patched ``circuits_per_pass`` at a time
as a batch of circuits (masks ``[C, S, R]``, one patched forward per batch of data), never one forward per edge
per example. Long runs checkpoint and resume to the same result.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuits.discovery.checkpoint import Checkpoint
from circuits.discovery.context import DiscoveryContext
from circuits.discovery.progress import progress


def single_cut_effects(ctx: DiscoveryContext, cuts: Tensor, *, circuits_per_pass: int = 32,
                       checkpoint: Checkpoint | None = None, description: str = "exact") -> Tensor:
    """``[n_cuts]``: mean objective drop when each cut alone is applied.

    ``cuts`` is ``[n_cuts, S, R]`` bool (True = ablate this edge in that cut) or a callable-free dense tensor;
    every cut is one circuit of a batched patched forward.
    """
    model, s = ctx.model, ctx.model.structure
    n = cuts.shape[0]
    state = checkpoint.load() if checkpoint is not None else None
    effects = state["effects"] if state else torch.zeros(n, dtype=torch.float64)
    start = state["next"] if state else 0
    batches = ctx.cached_batches
    with torch.no_grad():
        full = [ctx.objective(model.logits(p.clean, p.attention_mask, logit_positions=p.positions), p,
                              readout=True).double() for p in batches]
        starts = range(start, n, circuits_per_pass)
        for i in progress(starts, description, total=len(starts), unit="pass"):
            chunk = cuts[i:i + circuits_per_pass].to(model.device)
            masks = (~chunk).to(model.dtype)  # [C, S, R]
            total = torch.zeros(chunk.shape[0], dtype=torch.float64)
            for prepared, base in zip(batches, full):
                logits = model.patched_logits(prepared.clean, masks, prepared.ablated,
                                              attention_mask=prepared.attention_mask, logit_positions=prepared.positions)
                total += (base[None] - ctx.objective(logits, prepared, readout=True).double()).sum(1).cpu()
            effects[i:i + chunk.shape[0]] = total / ctx.n_examples
            if checkpoint is not None:
                checkpoint.maybe_save({"effects": effects, "next": i + chunk.shape[0]})
    return effects


class EdgeCuts:
    """``[n_edges, S, R]`` one-hot cuts, built lazily per slice so no n_edges x S x R tensor is ever held.

    ``edges [E, 2]`` (sender, receiver) defaults to every edge in MIB order."""

    def __init__(self, structure, edges: Tensor | None = None):
        self.order = structure.edge_order if edges is None else torch.as_tensor(edges)  # [E, 2]
        self.shape = (self.order.shape[0], structure.n_senders, structure.n_receivers)

    def __getitem__(self, idx: slice) -> Tensor:
        pairs = self.order[idx]
        out = torch.zeros(pairs.shape[0], *self.shape[1:], dtype=torch.bool)
        out[torch.arange(pairs.shape[0]), pairs[:, 0], pairs[:, 1]] = True
        return out


class _NodeCuts:
    """Cut every outgoing edge of one sender node."""

    def __init__(self, structure):
        self.edge_mask = structure.edge_mask
        self.shape = (structure.n_senders, *self.edge_mask.shape)

    def __getitem__(self, idx: slice) -> Tensor:
        nodes = torch.arange(self.shape[0])[idx]
        out = torch.zeros(len(nodes), *self.shape[1:], dtype=torch.bool)
        out[torch.arange(len(nodes)), nodes] = self.edge_mask[nodes]
        return out


def exact(ctx: DiscoveryContext, circuits_per_pass: int = 32, checkpoint: Checkpoint | None = None) -> Tensor:
    """``[S, R]`` exact single-edge effects."""
    s = ctx.model.structure
    effects = single_cut_effects(ctx, EdgeCuts(s), circuits_per_pass=circuits_per_pass, checkpoint=checkpoint,
                                 description="exact (edges)")
    scores = torch.zeros(s.n_senders, s.n_receivers, dtype=torch.float32)
    scores[s.edge_order[:, 0], s.edge_order[:, 1]] = effects.float()
    return scores


def node_patching(ctx: DiscoveryContext, circuits_per_pass: int = 32, checkpoint: Checkpoint | None = None) -> Tensor:
    """``[n_nodes]`` exact single-node effects (``logits`` gets NaN: it cannot be ablated)."""
    s = ctx.model.structure
    effects = single_cut_effects(ctx, _NodeCuts(s), circuits_per_pass=circuits_per_pass, checkpoint=checkpoint,
                                 description="node patching")
    nodes = torch.full((s.n_nodes,), float("nan"))
    nodes[:-1] = effects.float()
    return nodes
