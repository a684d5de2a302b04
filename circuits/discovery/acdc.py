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

import torch
from torch import Tensor

from circuits.discovery.checkpoint import Checkpoint
from circuits.discovery.context import DiscoveryContext, DiscoveryError, _repeat_batch
from circuits.discovery.progress import progress
from circuits.graph.pruning import prune, receiver_node

# Called as ``_receiver_hook(n_done)`` after each receiver is finished and checkpointed (tests interrupt here).
_receiver_hook = None

# Who evaluates candidate circuits: ``factory(ctx, metric, fast)`` -> an object with ``objective(masks [C, S, R],
# anchor [S, R] | None) -> [C]`` and ``n_forward``. Unset: this process (:class:`CandidateEvaluator`). Set it for a
# block with :func:`evaluated_by` (the Ray pool does, ``circuits.sweeps.actors.EvaluatorPool.acdc``).
EVALUATOR: ContextVar = ContextVar("acdc_evaluator", default=None)


@contextmanager
def evaluated_by(factory):
    """ACDC runs inside this block evaluate their candidates with ``factory`` (see :data:`EVALUATOR`)."""
    token = EVALUATOR.set(factory)
    try:
        yield
    finally:
        EVALUATOR.reset(token)


def register_methods(register) -> None:
    register("acdc", "edge", "ACDC (Conmy et al. 2023): greedy exact edge removal from the logits backwards, "
             "threshold tau", checkpoints=True)(acdc)


# ---- the graph below a receiver -------------------------------------------------------------------------------
def descendants(node_of: Tensor, changed: Tensor, edges: Tensor) -> Tensor:
    """``[S]`` bool: the senders among ``changed [S + 1]`` (nodes; logits = S) and every sender they reach
    through ``edges [S, R]`` (``node_of [R]``: each receiver's node, :func:`circuits.graph.pruning.receiver_node`)."""
    S = edges.shape[0]
    src, rcv = edges.nonzero(as_tuple=True)
    feeds = torch.zeros(S, S + 1, dtype=torch.bool)  # [S, S + 1]: sender -> node it has an edge into
    feeds[src, node_of[rcv]] = True
    succ = [row.nonzero().flatten().tolist() for row in feeds]
    reach = changed[:S].tolist()
    todo = [v for v in range(S) if reach[v]]
    while todo:
        for v in succ[todo.pop()]:
            if v < S and not reach[v]:
                reach[v] = True
                todo.append(v)
    return torch.tensor(reach, dtype=torch.bool)


# ---- objective -----------------------------------------------------------------------------------------------
def objective_metric(ctx: DiscoveryContext, metric: str):
    """The metric ACDC compares (``kl``: KL to the full model; ``task``: the context's objective)."""
    from circuits.tasks.metrics import Metric

    if metric == "kl":
        return Metric("kl")
    if metric == "task":
        return ctx.metric
    raise DiscoveryError(f"metric must be 'kl' (KL divergence to the full model, ACDC's default) or 'task' "
                         f"(the task's own metric, {ctx.metric.name}), got {metric!r}")


@dataclass
class _Batch:
    prepared: object  # PreparedBatch
    full: Tensor | None  # full model's logits for KL at the read positions: [B, K, V]
    readout: object  # TaskBatch whose positions index the logits the evaluator produces
    outputs: Tensor | None  # [S, B, P, d] every sender's output in the evaluator's reference circuit (fast path)
    full_outputs: Tensor | None  # [S, B, P, d] every sender's output in the full model (fast path; = outputs at first)
    gather: Tensor  # [B, K] the read positions


class CandidateEvaluator:
    """``objective(masks [C, S, R], anchor [S, R] | None)`` -> ``[C]`` mean objective (float64), higher = better.

    The fast form holds every sender's output in a *reference circuit* (at first the full model: one recorded
    clean run). A batch of candidates is run computing only the nodes whose incoming edges differ from the
    reference, and everything those nodes feed (their descendants in the union of the circuits); every other
    sender writes its held output. ``anchor`` moves the reference: the search passes its circuit as it was when
    the receiver's tests began, so all the candidates of a receiver differ from the reference in that receiver's
    edges only, and a candidate costs its receiver's node and what that node feeds (deep in the model, with the
    circuit above already pruned, a few nodes instead of a forward).

    A moved reference is always recomputed from the full model's outputs (every node whose edges differ from
    the full model's, and their descendants), never from the previous reference: the held outputs, hence every
    objective, depend only on ``anchor``, not on the path the search took to it, so a search resumed from a
    checkpoint evaluates bit for bit what the uninterrupted one did.
    """

    def __init__(self, ctx: DiscoveryContext, metric, fast: bool):
        self.ctx, self.metric, self.fast = ctx, metric, fast
        self.model = ctx.model
        s = self.model.structure
        self.n_forward = 0  # circuits evaluated (one circuit on the whole data = 1)
        self.batches: list[_Batch] = []
        self.reference = s.edge_mask.float()  # the circuit whose sender outputs the batches hold: [S, R]
        self.node_of = receiver_node(s)  # [R] receiver -> node (sender index; logits = S)
        with torch.no_grad():
            for p in ctx.cached_batches:
                gather = p.positions.to(self.model.device)  # both forms unembed the read positions only
                run = self.model.run(p.clean, p.attention_mask, record=fast, logit_positions=gather)
                full = run.logits if metric.needs_full_logits else None
                outputs = run.sender_outputs if fast else None
                self.batches.append(_Batch(p, full, p.readout, outputs, outputs, gather))

    def _descendants(self, changed: Tensor, edges: Tensor) -> Tensor:
        return descendants(self.node_of, changed, edges)

    def _changed_nodes(self, masks: Tensor, against: Tensor | None = None) -> Tensor:
        """``[S + 1]`` bool: nodes with an incoming edge whose mask in ``masks`` differs from ``against``'s
        (default: the reference's)."""
        against = self.reference if against is None else against
        cols = (masks != against[None]).any(0).any(0)  # [R]
        changed = torch.zeros(against.shape[0] + 1, dtype=torch.bool)
        changed[self.node_of[cols]] = True
        return changed

    def _run(self, b: _Batch, masks: Tensor, computed: Tensor, record: bool = False, cached: Tensor | None = None):
        p = b.prepared
        return self.model.run(p.clean, p.attention_mask, masks=masks, ablated=p.ablated, logit_positions=b.gather,
                              cached=b.outputs if cached is None else cached, computed=computed, record=record,
                              ablated_is_a_run=self.ctx.ablation == "corrupted")

    def _follow(self, anchor: Tensor) -> None:
        """Make ``anchor`` the reference, recomputed from the full model's outputs (path-independent)."""
        if torch.equal(anchor, self.reference):
            return
        full = self.model.structure.edge_mask
        stale = self._descendants(self._changed_nodes(anchor[None], against=full.float()), (anchor != 0) & full)
        mask = anchor.to(device=self.model.device, dtype=self.model.dtype)
        for b in self.batches:
            b.outputs = self._run(b, mask, stale, record=True, cached=b.full_outputs).sender_outputs  # [S, B, P, d]
        self.reference = anchor.clone()

    @torch.no_grad()
    def objective(self, masks: Tensor, anchor: Tensor | None = None) -> Tensor:
        masks = masks.detach().cpu().float()
        C = masks.shape[0]
        computed = None
        if self.fast:
            if anchor is not None:
                self._follow(anchor.detach().cpu().float())
            edges = ((self.reference != 0) | (masks != 0).any(0)) & self.model.structure.edge_mask
            computed = self._descendants(self._changed_nodes(masks), edges)
        device_masks = masks.to(device=self.model.device, dtype=self.model.dtype)
        total = torch.zeros(C, dtype=torch.float64)
        for b in self.batches:
            p = b.prepared
            if self.fast:
                logits = self._run(b, device_masks, computed).logits
            else:
                logits = self.model.patched_logits(p.clean, device_masks, p.ablated, attention_mask=p.attention_mask,
                                                   logit_positions=b.gather)
            full = None
            if b.full is not None:
                full = b.full[None].expand(C, *b.full.shape).flatten(0, 1)
            value = self.metric(logits.flatten(0, 1), _repeat_batch(b.readout, C), full).view(C, -1)
            if not self.metric.higher_is_better:
                value = -value
            total += value.double().sum(1).cpu()
        self.n_forward += C
        return total / self.ctx.n_examples


# ---- the search ----------------------------------------------------------------------------------------------
def acdc(ctx: DiscoveryContext, threshold: float = 0.01, metric: str = "kl", absolute: bool = False,
         circuits_per_pass: int | None = None, one_at_a_time: bool = False, max_receivers: int | None = None,
         checkpoint: Checkpoint | None = None) -> tuple[Tensor, Tensor]:
    """ACDC's circuit: ``(scores [S, R], in_graph [S, R] bool)``.

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
    m = objective_metric(ctx, metric)
    s = ctx.model.structure
    S, R = s.n_senders, s.n_receivers
    n_up = s.n_upstream.tolist()
    node_of = receiver_node(s).tolist()  # receiver -> node (sender index; logits = S)
    evaluator = (EVALUATOR.get() or CandidateEvaluator)(ctx, m, fast=not one_at_a_time)

    state = checkpoint.load() if checkpoint is not None else None
    if state:
        mask, effects, tested = state["mask"], state["effects"], state["tested"]
        done, prior, current = state["done"], state["prior"], state["current"]
    else:
        mask = s.edge_mask.clone().float()  # current circuit
        effects = torch.zeros(S, R, dtype=torch.float64)
        tested = torch.zeros(S, R, dtype=torch.bool)
        done, prior, current = 0, False, None  # prior: the last decision (True = removed)
    order = list(range(R - 1, -1, -1))
    if max_receivers is not None:
        order = order[:max_receivers]

    def key(e: float) -> float:
        return abs(e) if absolute else e

    for i in progress(range(done, len(order)), "acdc", total=len(order), initial=done, unit="receiver"):
        r = order[i]
        node = node_of[r]
        if node < S and not bool(mask[node].any()):  # disconnected from the logits: drop untested
            mask[:n_up[r], r] = 0.0
        else:
            if current is None:
                current = float(evaluator.objective(mask[None], mask)[0])
            cands = list(range(n_up[r] - 1, -1, -1))
            anchor = mask.clone()  # the circuit before this receiver's tests: the evaluator's reference
            stale: dict[int, float] = {}
            widest = circuits_per_pass or _auto_width(ctx, mask, node_of, node)
            width = widest  # adapts to the length of correctly predicted runs
            j = 0
            while j < len(cands):
                if one_at_a_time:
                    snd = cands[j]
                    trial = mask.clone()
                    trial[snd, r] = 0.0
                    value = float(evaluator.objective(trial[None])[0])
                    current, prior = _decide(mask, effects, tested, snd, r, current, value, threshold, key)
                    j += 1
                    continue
                batch = cands[j:j + width]
                predicted = [key(stale[c]) < threshold if c in stale else prior for c in batch]
                trials = mask[None].repeat(len(batch), 1, 1)
                for t, snd in enumerate(batch):
                    trials[t, snd, r] = 0.0
                    if predicted[t]:  # the later candidates assume this one removed
                        trials[t + 1:, snd, r] = 0.0
                values = evaluator.objective(trials, anchor).tolist()
                for t, snd in enumerate(batch):
                    stale[snd] = current - values[t]
                for t, snd in enumerate(batch):
                    current, removed = _decide(mask, effects, tested, snd, r, current, values[t], threshold, key)
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
        if _receiver_hook is not None:
            _receiver_hook(done)

    kept = mask.bool() & s.edge_mask
    visited = torch.zeros(R, dtype=torch.bool)
    visited[order] = True
    scores = effects.clone()
    bounds = effects[tested].tolist() + [threshold, 0.0]
    lo = 0.0 if absolute and threshold > 0 else min(bounds) - 1.0  # |0| < threshold: never selected
    hi = max(bounds) + 1.0
    untested = s.edge_mask & ~tested
    scores[untested & visited[None, :]] = lo  # dropped with a disconnected receiver
    scores[untested & ~visited[None, :]] = hi  # never reached (max_receivers)
    scores[~s.edge_mask] = 0.0
    in_graph, _ = prune(s, kept)
    ctx.extras["acdc"] = {"n_kept": int(kept.sum()), "n_tested": int(tested.sum()),
                          "n_circuits_evaluated": evaluator.n_forward, "final_objective": current}
    return scores.float(), in_graph


def _auto_width(ctx: DiscoveryContext, mask: Tensor, node_of: list[int], node: int, widest: int = 16) -> int:
    """The default pass width at a receiver of ``node``: ``widest`` on an accelerator; on a CPU ``widest``
    divided by the number of senders a candidate recomputes (the node and what it feeds in ``mask``)."""
    if ctx.model.device.type != "cpu" or node >= mask.shape[0]:
        return widest
    changed = torch.zeros(mask.shape[0] + 1, dtype=torch.bool)
    changed[node] = True
    edges = (mask != 0) & ctx.model.structure.edge_mask
    k = int(descendants(torch.as_tensor(node_of), changed, edges).sum())
    return max(1, widest // k)


def _decide(mask: Tensor, effects: Tensor, tested: Tensor, snd: int, r: int, current: float, value: float,
            threshold: float, key) -> tuple[float, bool]:
    """Record the test of edge ``snd -> r`` (objective ``value`` without it); returns (new current, removed)."""
    effect = current - value
    effects[snd, r] = effect
    tested[snd, r] = True
    if key(effect) < threshold:
        mask[snd, r] = 0.0
        return value, True
    return current, False
