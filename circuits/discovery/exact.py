"""Exact patching: each edge's (or node's) effect measured by ablating it alone.

The reference the approximations are judged by: score = objective(full) - objective(all but that edge),
averaged over pairs (for KL: D(all but that edge) - D(full)).

A cut changes the input of one node (an edge cut: its receiver's node; a node cut: the nodes it feeds), so a
cut's run differs from the full model only in that node and what it feeds. The incremental engine
(:meth:`CircuitSession.incremental`) holds every sender's clean output and recomputes just those nodes: an
edge into the logits costs one unembedding of the read positions, an edge into the last layer's heads that head
and the last MLP. Cuts that change the same nodes run together, ``circuits_per_pass`` at a time, as one batch
of circuits (masks ``[C, S, R]``). ``incremental=False`` is the plain engine (every pass computes every node an
edge reads), kept as the reference the fast path is tested against. A run goes batch after batch, every pass on
one batch before the next, so it holds one batch's clean run at a time. Long runs checkpoint and resume to the same
result, bit for bit: the passes are a fixed plan, and a resumed run recomputes the held outputs it needs.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from circuits.discovery.checkpoint import Checkpoint, CheckpointMismatchError
from circuits.discovery.progress import progress
from circuits.discovery.registry import register
from circuits.graph.structure import GraphStructure
from circuits.session import CircuitSession, SessionBatch, SessionError


class EdgeCuts:
    """``[n_edges, S, R]`` one-hot cuts, built lazily per slice so no n_edges x S x R tensor is ever held.

    ``edges [E, 2]`` (sender, receiver) defaults to every edge in MIB order."""

    def __init__(self, structure: GraphStructure, edges: Tensor | None = None):
        self.structure = structure
        self.order = structure.edge_order if edges is None else torch.as_tensor(edges)  # [E, 2]
        self.shape = (self.order.shape[0], structure.n_senders, structure.n_receivers)

    def __getitem__(self, idx: slice | Tensor) -> Tensor:
        pairs = self.order[idx]
        out = torch.zeros(pairs.shape[0], *self.shape[1:], dtype=torch.bool)
        out[torch.arange(pairs.shape[0]), pairs[:, 0], pairs[:, 1]] = True
        return out

    def changed_nodes(self) -> tuple[Tensor, Tensor]:
        """``(group [n_cuts] long, changed [n_groups, n_nodes] bool)``: the nodes whose input each cut changes,
        shared by the cuts of one group (an edge cut changes its receiver's node: a grouped k/v receiver's, every
        head of its group)."""
        receivers, by_receiver = torch.unique(self.order[:, 1], return_inverse=True)
        fed = self.structure.receiver_nodes[receivers]  # [n_receivers cut, n_nodes]
        changed, of_receiver = torch.unique(fed, dim=0, return_inverse=True)
        return of_receiver[by_receiver], changed


class EdgePositionCuts:
    """``[n_edges * L, S, R, L]`` one-hot cuts of one edge at one position (position-aware exact patching), edge
    after edge in MIB order and, within an edge, position after position; built lazily per slice. The incremental
    engine does not take position masks, so these run on the plain one (every pass computes every node read)."""

    def __init__(self, structure: GraphStructure, n_positions: int):
        self.structure = structure
        self.order = structure.edge_order  # [E, 2]
        self.n_positions = int(n_positions)
        self.shape = (self.order.shape[0] * self.n_positions, structure.n_senders, structure.n_receivers,
                      self.n_positions)

    def __getitem__(self, idx: slice | Tensor) -> Tensor:
        cut = torch.arange(self.shape[0])[idx]
        edge, position = cut // self.n_positions, cut % self.n_positions
        out = torch.zeros(len(cut), *self.shape[1:], dtype=torch.bool)
        out[torch.arange(len(cut)), self.order[edge, 0], self.order[edge, 1], position] = True
        return out


class NodeCuts:
    """Cut every outgoing edge of one sender node."""

    def __init__(self, structure: GraphStructure):
        self.structure = structure
        self.edge_mask = structure.edge_mask
        self.shape = (structure.n_senders, *self.edge_mask.shape)

    def __getitem__(self, idx: slice | Tensor) -> Tensor:
        nodes = torch.arange(self.shape[0])[idx]
        out = torch.zeros(len(nodes), *self.shape[1:], dtype=torch.bool)
        out[torch.arange(len(nodes)), nodes] = self.edge_mask[nodes]
        return out

    def changed_nodes(self) -> tuple[Tensor, Tensor]:
        """As :meth:`EdgeCuts.changed_nodes`: a node cut changes every node the sender feeds."""
        s = self.structure
        return torch.arange(s.n_senders), s.nodes_fed(self.edge_mask)


def cut_passes(cuts: EdgeCuts | NodeCuts, circuits_per_pass: int) -> list[Tensor]:
    """The fixed plan of an incremental run: cut indices per pass. Cuts whose runs recompute the same nodes (the
    changed nodes and their descendants) share passes, so no pass computes a node for one cut that another does
    not need; plans are ordered by the first recomputed node, then by cut index."""
    s = cuts.structure
    group, changed = cuts.changed_nodes()
    recomputed = torch.stack([s.descendants(c, s.edge_mask) for c in changed])  # [n_groups, S]
    recomputed = torch.cat([recomputed, changed[:, -1:]], dim=1)  # the logits, read by every run, last
    keys: dict[bytes, list[int]] = {}
    for g, row in enumerate(recomputed):
        keys.setdefault(row.numpy().tobytes(), []).append(g)
    members = [torch.cat([(group == g).nonzero().flatten() for g in gs]).sort().values for gs in keys.values()]
    first = [int(recomputed[gs[0]].nonzero()[0]) for gs in keys.values()]
    plan: list[Tensor] = []
    for _, idx in sorted(zip(first, members, strict=True), key=lambda fm: (fm[0], int(fm[1][0]))):
        plan += list(idx.split(circuits_per_pass))
    return plan


def pass_plan(cuts: EdgeCuts | NodeCuts | EdgePositionCuts, circuits_per_pass: int,
              incremental: bool = True) -> list[Tensor]:
    """Cut indices per pass: :func:`cut_passes` for the incremental engine, else consecutive cuts (always for
    position cuts, which run on the plain engine)."""
    if incremental and not isinstance(cuts, EdgePositionCuts):
        return cut_passes(cuts, circuits_per_pass)
    return list(torch.arange(cuts.shape[0]).split(circuits_per_pass))


def _edge_units(session: CircuitSession, circuits_per_pass: int = 32, incremental: bool = True,
                positions: bool = False, **params) -> int:
    """What a spread run splits (``Method.units``): the passes, whose cuts' effects are independent."""
    return len(pass_plan(_edge_cuts(session, positions), circuits_per_pass, incremental))


def _edge_cuts(session: CircuitSession, positions: bool) -> EdgeCuts | EdgePositionCuts:
    s = session.structure
    return EdgePositionCuts(s, session.n_positions) if positions else EdgeCuts(s)


def _node_units(session: CircuitSession, circuits_per_pass: int = 32, incremental: bool = True, **params) -> int:
    return len(pass_plan(NodeCuts(session.structure), circuits_per_pass, incremental))


def resumable_passes(session: CircuitSession, n_passes: int,
                     run_pass: Callable[[SessionBatch, int, dict[str, Tensor]], None], results: dict[str, Tensor], *,
                     checkpoint: Checkpoint | None = None, description: str = "exact") -> dict[str, Tensor]:
    """``results`` after ``run_pass(batch, p, results)`` for every batch and every pass ``p`` of a fixed plan of
    ``n_passes``, each adding its batch's part to its own entries.

    Batch after batch: every pass runs on a batch before the next batch starts, so what a pass holds of its batch
    (the incremental engine's clean run, :meth:`CircuitSession.held_full`) is made once and held for one batch at a
    time, whatever the number of examples. A spread run runs this worker's share of the passes on every batch
    (``session.share``; the other entries stay 0, and since each entry is added up by one worker in batch order,
    the shares add up to one process's exactly). ``checkpoint``: the results and the next (batch, pass) are saved
    as the run goes, with the batch plan they belong to (a memory budget may cut batches otherwise), and a run that
    finds them starts there, to the same tensors bit for bit."""
    batches = [len(b) for b in session.batches]
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None and (not {*results, "next_unit"} <= set(state) or state.get("batches") != batches):
        raise CheckpointMismatchError(
            f"checkpoint {checkpoint.path if checkpoint else ''} was written by another version of this method or "
            "with other batches (memory_budget, examples_per_pass); run with the settings it was written with, or "
            "delete it to start again")
    results = {k: state[k] for k in results} if state else results
    start = state["next_unit"] if state else 0
    passes = session.in_share(range(n_passes))  # a spread run: this worker's share
    units = [(b, p) for b in session.batches for p in passes]
    for u in progress(range(start, len(units)), description, session, total=len(units) - start, unit="pass"):
        run_pass(*units[u], results)
        if checkpoint is not None:
            checkpoint.maybe_save({**results, "next_unit": u + 1, "batches": batches})
    return results


def cut_effects(session: CircuitSession, batch: SessionBatch, cuts: EdgeCuts | NodeCuts | EdgePositionCuts,
                idx: Tensor, incremental: bool = True) -> Tensor:
    """``[len(idx)]`` float64: ``batch``'s part of the mean objective drop of each of the cuts ``idx`` alone (one
    circuit each of a batched pass); summed over the batches, the effect. ``incremental``: recompute only what each
    cut changes (module docstring)."""
    strategy = session.incremental if incremental and not isinstance(cuts, EdgePositionCuts) else None
    cut = session.batch_objective(batch, ~cuts[idx], circuits_per_pass=len(idx), strategy=strategy)  # [c, b]
    return (session.objective_full[batch.index][None] - cut).sum(1) / session.n_examples


def _patching_plan(params: dict) -> dict:
    """A patched pass that, on the incremental engine, reads its batch's held clean run (position cuts: masks
    ``[c, S, R, L]`` on the plain engine)."""
    positions = params.get("positions", False)
    return {"kind": "patched", "held": int(params["incremental"] and not positions), "by_position": positions}


def single_cut_effects(session: CircuitSession, cuts: EdgeCuts | NodeCuts | EdgePositionCuts, *,
                       circuits_per_pass: int = 32,
                       incremental: bool = True, checkpoint: Checkpoint | None = None,
                       description: str = "exact") -> Tensor:
    """``[n_cuts]``: mean objective drop when each cut alone is applied (every cut one circuit of a batched pass).

    ``incremental``: recompute only what each cut changes (module docstring); False: the plain engine. The run
    finishes a batch before the next (:func:`resumable_passes`), so the incremental engine holds one batch's clean
    run at a time, whatever the number of examples."""
    if int(circuits_per_pass) < 1:
        raise SessionError(f"circuits_per_pass must be at least 1, got {circuits_per_pass}; pass 1 or more")
    plan = pass_plan(cuts, circuits_per_pass, incremental)
    # the registered plan (discover fitted it already; a direct call is fitted here)
    session.fit(**_patching_plan({"incremental": incremental, "positions": isinstance(cuts, EdgePositionCuts)}))

    def run_pass(batch: SessionBatch, p: int, results: dict[str, Tensor]) -> None:
        results["effects"][plan[p]] += cut_effects(session, batch, cuts, plan[p], incremental)

    return resumable_passes(session, len(plan), run_pass, {"effects": torch.zeros(cuts.shape[0], dtype=torch.float64)},
                            checkpoint=checkpoint, description=description)["effects"]


@register("exact", "edge", "each edge's exact effect, patched alone (batched, incremental recompute)",
          checkpoints=True, ranges={"circuits_per_pass": {"low": 1}}, units=_edge_units, memory=_patching_plan)
def exact(session: CircuitSession, circuits_per_pass: int = 32, incremental: bool = True,
          checkpoint: Checkpoint | None = None, positions: bool = False) -> Tensor:
    """``[S, R]`` exact single-edge effects. ``incremental=False``: the plain engine (same scores, slower).
    ``positions``: ``[S, R, L]``, each edge cut at one position alone (``n_edges * L`` cuts, on the plain engine:
    about L times the passes of the position-free run, each a whole forward)."""
    s = session.structure
    cuts = _edge_cuts(session, positions)
    effects = single_cut_effects(session, cuts, circuits_per_pass=circuits_per_pass, incremental=incremental,
                                 checkpoint=checkpoint, description="exact (edge-positions)" if positions
                                 else "exact (edges)")
    if positions:
        return _dense(s, effects.float().view(-1, session.n_positions))  # cuts are edge-major
    return _dense(s, effects.float())


def _dense(s: GraphStructure, per_edge: Tensor) -> Tensor:
    """``[E, ...]`` values in MIB edge order as a dense ``[S, R, ...]`` tensor (zero off the edges)."""
    scores = torch.zeros(s.n_senders, s.n_receivers, *per_edge.shape[1:], dtype=per_edge.dtype)
    scores[s.edge_order[:, 0], s.edge_order[:, 1]] = per_edge
    return scores


@register("node-patching", "node", "each head's / MLP's exact effect, ablated alone (incremental recompute)",
          checkpoints=True, ranges={"circuits_per_pass": {"low": 1}}, units=_node_units, memory=_patching_plan)
def node_patching(session: CircuitSession, circuits_per_pass: int = 32, incremental: bool = True,
                  checkpoint: Checkpoint | None = None) -> Tensor:
    """``[n_nodes]`` exact single-node effects (``logits`` gets NaN: it cannot be ablated)."""
    s = session.structure
    effects = single_cut_effects(session, NodeCuts(s), circuits_per_pass=circuits_per_pass, incremental=incremental,
                                 checkpoint=checkpoint, description="node patching")
    nodes = torch.full((s.n_nodes,), float("nan"))
    nodes[:-1] = effects.float()
    return nodes
