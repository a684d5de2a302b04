"""ACDC (Conmy et al. 2023): greedy exact patching over edges, from the logits backwards.

The algorithm (as ACDC's reference code runs it):

* Receivers are visited in reverse topological order: ``logits`` first, then layer by layer backwards
  (``m{l}``, then the q/k/v inputs of layer ``l``'s heads), i.e. descending receiver index.
* A receiver whose node no longer feeds anything (every outgoing edge already removed) is disconnected from
  the logits: all its incoming edges are removed without being tested (ACDC's ``current_node_connected``).
* Otherwise each incoming edge, senders in reverse order, is tentatively removed from the *current* circuit;
  with ``effect = objective(current circuit) - objective(circuit without the edge)`` (for KL: the increase of
  KL to the full model; for a task metric, higher = better: its drop) the edge stays removed iff
  ``effect < threshold`` (``|effect| < threshold`` with ``absolute=True``, ACDC's ``abs_value_threshold``).
  A removal makes the circuit's objective the one just measured, as in ACDC.

Scores (MIB's sign, higher = more important): a tested edge's score is its ``effect`` when it was tested
(positive = removing it hurt). Edges never tested (their receiver was disconnected) get one floor value strictly
below every tested edge and below ``threshold``. So ``graph.threshold(threshold)`` (``absolute=True`` in
absolute mode... see :func:`acdc`) and ``graph.top_k(n_kept)`` reproduce ACDC's circuit, ``n_kept`` being the
number of edges ACDC kept before pruning (recorded in ``in_graph``'s construction; MIB's top-k counts before
pruning too).

Batched evaluation, identical decisions. Greedy removal is sequential, but every test of a receiver's edges
changes only that receiver's column of the mask. A pass evaluates up to ``circuits_per_pass`` candidates as one
batch of circuits, along a *predicted* decision path: candidate ``j``'s circuit is the current one minus the
candidates before it predicted "removed". Walking the pass in order, each decision is made exactly as the
one-at-a-time algorithm makes it (same circuit, same baseline) as long as the earlier predictions were right;
the first wrong prediction ends the pass (its own decision is still valid) and the next pass starts after it.
Predictions: the effect measured for that candidate in the receiver's previous pass (stale but close), else the
last decision made. Mostly-kept and mostly-removed runs both finish in about ``k / circuits_per_pass`` passes.
The pass width adapts (at most ``circuits_per_pass``): it doubles after a pass predicted right and shrinks to
twice the decisions a mispredicted pass made, so mixed receivers waste few evaluations.

Two more savings, both exact. Only what a candidate changes is recomputed: the evaluator holds every sender's
output in the circuit as it was when the receiver's tests began (at first one recorded clean run), and a
candidate differs from it only in that receiver's edges, so only the receiver's node and the nodes it feeds in
the circuit are computed; every other sender writes its held output (:class:`CandidateEvaluator`). Deep in the
model, with the circuit above already pruned, a candidate then costs a few nodes instead of a forward.
``one_at_a_time=True`` is the plain reference: one full patched forward per tested edge (it too unembeds only
the positions the metric reads, and computes the last MLP there only: what the engine saves over it is ACDC's
own work, not the metric's). The two agree up to floating-point rounding (scores within ~1e-6), hence in every
decision unless an effect lies within rounding of ``threshold``.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from circuits.discovery.checkpoint import Checkpoint
from circuits.discovery.progress import progress
from circuits.discovery.registry import DiscoveryError, register
from circuits.graph.pruning import prune
from circuits.interventions.ablation import Ablated
from circuits.interventions.masked import HeldCircuit, IncrementalResidual, MaskedResidual, PositionMaskedResidual
from circuits.session import CircuitSession, SessionBatch
from circuits.tasks.metrics import Metric

# Who evaluates candidate circuits: ``factory(session, metric, fast)`` -> an object with ``objective(masks [C, S, R],
# anchor [S, R] | None) -> [C]`` and ``n_forward``. Unset: this process (:class:`CandidateEvaluator`). Set it for a
# block with :func:`evaluated_by` (the Ray pool does, ``circuits.sweeps.actors.EvaluatorPool.acdc``).
EVALUATOR: ContextVar = ContextVar("acdc_evaluator", default=None)


@contextmanager
def evaluated_by(factory: Callable) -> Iterator[None]:
    """ACDC runs inside this block evaluate their candidates with ``factory`` (see :data:`EVALUATOR`)."""
    token = EVALUATOR.set(factory)
    try:
        yield
    finally:
        EVALUATOR.reset(token)


# ---- objective -----------------------------------------------------------------------------------------------
def objective_metric(session: CircuitSession, metric: str) -> Metric:
    """The metric ACDC compares (``kl``: KL to the full model; ``task``: the session's own metric)."""
    if metric == "kl":
        return Metric("kl")
    if metric == "task":
        return session.metric
    raise DiscoveryError(f"metric must be 'kl' (KL divergence to the full model, ACDC's default) or 'task' "
                         f"(the task's own metric, {session.metric.name}), got {metric!r}")


@dataclass
class HeldBatch:
    """One session batch's held outputs: the full model's, and those of the evaluator's reference circuit."""

    full: HeldCircuit
    reference: HeldCircuit

    @property
    def outputs(self) -> Tensor:  # [S, B, P, d]
        return self.reference.outputs

    @property
    def full_outputs(self) -> Tensor:  # [S, B, P, d]
        return self.full.outputs


class CandidateEvaluator:
    """``objective(masks [C, S, R], anchor [S, R] | None)`` -> ``[C]`` mean objective (float64), higher = better.

    The fast form holds every sender's output in a *reference circuit* (at first the full model: one recorded
    clean run per batch) and runs candidates with :class:`IncrementalResidual`, which computes only the nodes
    whose inputs differ from the reference and what they feed. ``anchor`` moves the reference: the search passes
    its circuit as it was when the receiver's tests began, so all the candidates of a receiver differ from the
    reference in that receiver's edges only, and a candidate costs its receiver's node and what that node feeds.

    A moved reference is always recomputed from the full model's outputs, never from the previous reference: the
    held outputs, hence every objective, depend only on ``anchor``, not on the path the search took to it, so a
    search resumed from a checkpoint evaluates bit for bit what the uninterrupted one did.

    The plain form (``fast=False``) is the reference: one patched forward per candidate computing every node an
    edge reads (no incremental recompute, and no node skipped for having no kept input).
    """

    def __init__(self, session: CircuitSession, metric: Metric, fast: bool):
        self.session, self.metric, self.fast = session, metric, fast
        s = session.structure
        self.n_forward = 0  # circuits evaluated (one circuit on the whole data = 1)
        self.reference = s.edge_mask.float()  # the circuit whose sender outputs the batches hold: [S, R]
        self.batches: list[HeldBatch] = []
        if fast:
            with torch.no_grad():
                for b in session.batches:
                    full = session.held_full(b)
                    self.batches.append(HeldBatch(full, full))

    def _incremental(self, b: SessionBatch, masks: Tensor) -> IncrementalResidual:
        return IncrementalResidual(masks, self.session.ablated(b), self.batches[b.number].reference)

    def _plain(self, b: SessionBatch, masks: Tensor) -> MaskedResidual:
        kind = PositionMaskedResidual if masks.dim() == 4 else MaskedResidual  # [c, S, R, P_b]: position-aware
        return kind(masks, Ablated(self.session.ablated(b).values, "given"))

    def _follow(self, anchor: Tensor) -> None:
        """Make ``anchor`` the reference, recomputed from the full model's outputs (path-independent)."""
        if torch.equal(anchor, self.reference):
            return
        mask = anchor.to(device=self.session.device, dtype=self.session.model.dtype)
        with torch.no_grad():
            for b in self.session.batches:
                held = self.batches[b.number]
                run = IncrementalResidual(mask, self.session.ablated(b), held.full, record=True)
                self.session.run(b, run)
                held.reference = run.held_circuit()
        self.reference = anchor.clone()

    @torch.no_grad()
    def objective(self, masks: Tensor, anchor: Tensor | None = None) -> Tensor:
        masks = masks.detach().cpu().float()
        if self.fast and anchor is not None:
            self._follow(anchor.detach().cpu().float())
        values = self.session.objective_of(masks, metric=self.metric, circuits_per_pass=masks.shape[0],
                                           strategy=self._incremental if self.fast else self._plain)  # [C, n]
        self.n_forward += masks.shape[0]
        return values.sum(1) / self.session.n_examples


# ---- the search ----------------------------------------------------------------------------------------------
@register("acdc", "edge", "ACDC (Conmy et al. 2023): greedy exact edge removal from the logits backwards, "
          "threshold tau", checkpoints=True,
          ranges={"threshold": {"low": 0}, "metric": {"choices": ("kl", "task")}, "circuits_per_pass": {"low": 1},
                  "max_receivers": {"low": 1}},
          memory=lambda params: {"kind": "patched", "by_position": params["positions"],
                                 "resident_held": 0 if params["one_at_a_time"] or params["positions"] else 2,
                                 "resident_fix": "test one candidate at a time (one_at_a_time=True), which holds none"})
def acdc(session: CircuitSession, threshold: float = 0.01, metric: str = "kl", absolute: bool = False,
         circuits_per_pass: int | None = None, one_at_a_time: bool = False, max_receivers: int | None = None,
         positions: bool = False, checkpoint: Checkpoint | None = None,
         on_progress: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor]:
    """ACDC's circuit: ``(scores [S, R], in_graph [S, R] bool)``; ``positions=True``: ``[S, R, L]`` both.

    ``threshold``: tau; an edge is removed when removing it changes the objective by less than tau (for
    ``metric="kl"``: raises KL(full model || circuit) by less than tau; ``absolute=True`` compares
    ``|change|``, ACDC's ``abs_value_threshold``). ``metric``: ``"kl"`` (KL to the full model at the task's
    readout positions, ACDC's default, whatever the task's metric) or ``"task"`` (the task's metric).
    ``circuits_per_pass``: the most candidate circuits evaluated per batched forward (default: 16 on an
    accelerator; on a CPU, 16 divided by the number of nodes each candidate recomputes, since a CPU pass of C
    circuits costs about C times one and wide passes then only pay for themselves when each circuit is a few
    nodes; the width never changes a decision, only the cost). ``one_at_a_time``: the plain
    reference implementation (one full patched forward per tested edge; same decisions). ``max_receivers``:
    for benchmarking only, stop after this many receivers from the logits backwards (edges into the receivers
    not visited stay in the circuit, untested, scored above every tested edge).

    ``on_progress(n_done)`` is called after each receiver is finished and checkpointed (e.g. to stop a run).

    ``positions``: ACDC over edge-positions (position-aware circuits): at each receiver, every incoming edge at
    every position (senders in reverse order, positions last to first) is tested and removed alone, by the same
    rule. The incremental engine takes no position masks, so candidates run as full patched forwards (batched
    along the predicted path as above): about L times the tests of the position-free run.

    ``in_graph`` is ACDC's kept edge set, pruned to input -> logits paths (ACDC's traversal already drops nodes
    that reach no logits; pruning also drops edges out of senders left with no input, which under corrupted
    ablation carry exactly their ablated value).
    """
    if threshold != threshold:
        raise DiscoveryError("threshold is NaN")
    if circuits_per_pass is not None and circuits_per_pass < 1:
        raise DiscoveryError(f"circuits_per_pass must be at least 1, got {circuits_per_pass}")
    if max_receivers is not None and max_receivers < 1:
        raise DiscoveryError(f"max_receivers must be positive (or None for the full run), got {max_receivers}")
    m = objective_metric(session, metric)
    s = session.structure
    S, R = s.n_senders, s.n_receivers
    L = session.n_positions if positions else None  # raises for pairs of several lengths, before any forward
    extent = (S, R) if L is None else (S, R, L)
    edges = s.edge_mask if L is None else s.edge_mask[..., None].expand(extent)
    n_up = s.n_upstream.tolist()
    nodes_of = [row.nonzero().flatten().tolist() for row in s.receiver_nodes]  # receiver -> nodes it feeds
    # (sender indices, logits = S; several for a grouped k/v receiver)
    evaluator = (EVALUATOR.get() or CandidateEvaluator)(session, m, fast=not (one_at_a_time or positions))

    state = checkpoint.load() if checkpoint is not None else None
    if state:
        mask, effects, tested = state["mask"], state["effects"], state["tested"]
        done, prior, current = state["done"], state["prior"], state["current"]
    else:
        mask = edges.clone().float()  # current circuit
        effects = torch.zeros(extent, dtype=torch.float64)
        tested = torch.zeros(extent, dtype=torch.bool)
        done, prior, current = 0, False, None  # prior: the last decision (True = removed)
    order = list(range(R - 1, -1, -1))
    if max_receivers is not None:
        order = order[:max_receivers]

    def key(e: float) -> float:
        return abs(e) if absolute else e

    for i in progress(range(done, len(order)), "acdc", session, total=len(order), initial=done,
                      unit="receiver"):
        r = order[i]
        nodes = nodes_of[r]
        if nodes[0] < S and not bool(mask[nodes].any()):  # disconnected from the logits: drop untested
            mask[:n_up[r], r] = 0.0
        else:
            if current is None:
                current = float(evaluator.objective(mask[None], mask)[0])
            # the entries tested, in order: (sender, r) or (sender, r, position)
            cands = [(snd, r) if L is None else (snd, r, p) for snd in range(n_up[r] - 1, -1, -1)
                     for p in ([0] if L is None else range(L - 1, -1, -1))]
            anchor = mask.clone()  # the circuit before this receiver's tests: the evaluator's reference
            stale: dict[tuple[int, ...], float] = {}
            widest = circuits_per_pass or _auto_width(session, mask if L is None else mask.amax(-1), nodes)
            width = widest  # adapts to the length of correctly predicted runs
            j = 0
            while j < len(cands):
                if one_at_a_time:
                    at = cands[j]
                    trial = mask.clone()
                    trial[at] = 0.0
                    value = float(evaluator.objective(trial[None])[0])
                    current, prior = _decide(mask, effects, tested, at, current, value, threshold, key)
                    j += 1
                    continue
                batch = cands[j:j + width]
                predicted = [key(stale[c]) < threshold if c in stale else prior for c in batch]
                trials = mask[None].repeat(len(batch), *[1] * mask.dim())
                for t, at in enumerate(batch):
                    trials[(t, *at)] = 0.0
                    if predicted[t]:  # the later candidates assume this one removed
                        trials[(slice(t + 1, None), *at)] = 0.0
                values = evaluator.objective(trials, anchor).tolist()
                for t, at in enumerate(batch):
                    stale[at] = current - values[t]
                for t, at in enumerate(batch):
                    current, removed = _decide(mask, effects, tested, at, current, values[t], threshold, key)
                    prior = removed
                    j += 1
                    if removed != predicted[t]:  # later evaluations assumed the other decision: redo them
                        width = max(1, min(widest, 2 * (t + 1)))
                        break
                else:
                    width = min(widest, 2 * width)
        done = i + 1
        if checkpoint is not None:
            checkpoint.save({"mask": mask, "effects": effects, "tested": tested, "done": done, "prior": prior,
                             "current": current})
        if on_progress is not None:
            on_progress(done)

    kept = mask.bool() & edges
    visited = torch.zeros(R, dtype=torch.bool)
    visited[order] = True
    visited_at = visited[None, :] if L is None else visited[None, :, None]
    scores = effects.clone()
    bounds = effects[tested].tolist() + [threshold, 0.0]
    lo = 0.0 if absolute and threshold > 0 else min(bounds) - 1.0  # |0| < threshold: never selected
    hi = max(bounds) + 1.0
    untested = edges & ~tested
    scores[untested & visited_at] = lo  # dropped with a disconnected receiver
    scores[untested & ~visited_at] = hi  # never reached (max_receivers)
    scores[~edges] = 0.0
    if L is None:
        in_graph, _ = prune(s, kept)
    else:  # an edge-position stays when its edge lies on an input -> logits path of the kept edges
        on_paths, _ = prune(s, kept.any(-1))
        in_graph = kept & on_paths[..., None]
    session.extras["acdc"] = {"n_kept": int(kept.sum()), "n_tested": int(tested.sum()),
                          "n_circuits_evaluated": evaluator.n_forward, "final_objective": current}
    return scores.float(), in_graph


def _auto_width(session: CircuitSession, mask: Tensor, nodes: list[int], widest: int = 16) -> int:
    """The default pass width at a receiver of ``nodes``: ``widest`` on an accelerator; on a CPU ``widest``
    divided by the number of senders a candidate recomputes (the nodes and what they feed in ``mask``)."""
    if session.device.type != "cpu" or nodes[0] >= mask.shape[0]:
        return widest
    changed = torch.zeros(mask.shape[0] + 1, dtype=torch.bool)
    changed[nodes] = True
    k = int(session.structure.descendants(changed, (mask != 0) & session.structure.edge_mask).sum())
    return max(1, widest // k)


def _decide(mask: Tensor, effects: Tensor, tested: Tensor, at: tuple[int, ...], current: float, value: float,
            threshold: float, key) -> tuple[float, bool]:
    """Record the test of entry ``at`` (an edge ``(sender, receiver)``, or with its position) whose removal gives
    objective ``value``; returns (new current, removed)."""
    effect = current - value
    effects[at] = effect
    tested[at] = True
    if key(effect) < threshold:
        mask[at] = 0.0
        return value, True
    return current, False
