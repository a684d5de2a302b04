"""Spreading one large job over Ray: a pool of actors, each holding a model replica (one per GPU where GPUs
exist), that discovers and evaluates with the result of one process.

    with ray_session(), EvaluatorPool("zoo:planted-ioi", task, n_actors=2) as pool:  # or a loaded CircuitModel
        scored = pool.discover("eap-ig", steps=5)  # = circuits.discover(model, task, "eap-ig", workers=pool)
        values = pool.circuit_metrics(masks, kl=True) # [C, S, R] -> [C, n] each, as CircuitSession.circuit_metrics
        values = pool.neuron_circuit_metrics(edges, neurons) # [C, S, R] and [C, L, m]: neuron circuits, as NeuronRuns
        curve = pool.faithfulness_curve(scored)       # as circuits.faithfulness_curve, its points split over actors
        scores = pool.mib_scores(scored)              # CPR (signed curve) and CMD (absolute curve), 20 circuits
        with pool.acdc():                             # ACDC's candidate batches evaluated by the pool
            graph = circuits.discover(model, task, "acdc", threshold=0.01)

What is split, and why the result is one process's:

* **Discovery by attribution** (eap, eap-ig, eap-ig-activations, node-ap, gim, relp, eap-neurons,
  eap-ig-neurons) splits the *examples*: the scores are sums over the session's batches, so each actor scores a
  share of the batches (``session.share``) and the driver adds the shares up (in float64, in share order). Each
  share is normalised by the whole run's example count, as one process normalises the whole sum, so only the
  order of the float32 additions differs.
* **Exact, node and neuron patching** split the *cuts*: their passes (a fixed plan) are independent, so each
  actor runs a share of the passes and the others' entries stay 0; the sum is the one-process result exactly.
* A neuron method's ``NeuronScores`` (node and neuron scores) are added up field by field, as tensors are.
* **Ensembles** spread each member so, and combine the members' ranks on the driver.
* **Evaluation** (circuit metrics, faithfulness curves, neuron-level ones too, ACDC's candidate batches) splits the
  *circuits*: a circuit's metric on an example depends only on its masks, the example and the model, so each
  actor takes a contiguous chunk and the answers are concatenated in order. They agree with one process to
  rounding (tested to 1e-5): which nodes a patched pass skips depends on which circuits share the pass.

Every actor builds the same :class:`~circuits.session.CircuitSession` (same data, batch plan, ablation and
metric) from the same weights; nothing about batches is prepared here. **Lost workers**: an actor whose process
or node dies is restarted by Ray (``max_restarts``, on any node with room) and the work it had in flight goes
back to the queue, to the next idle actor; each piece of work is kept from the one call that returned it, so
no finished work is lost and none is counted twice. Work is handed out a piece at a time (``chunks_per_actor``
pieces per actor for a discovery), so faster actors take more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from circuits.discovery import METHODS, DiscoveryError
from circuits.session import CircuitMetrics, CircuitSession
from circuits.session.neurons import NeuronRuns

if TYPE_CHECKING:  # pragma: no cover
    from circuits.discovery import Method
    from circuits.graph.graph import Graph

#: What one spread discovery's actors rebuild their session from (sent with every piece of work, so an actor
#: that Ray restarted builds it again): (key, [task ref], [reference ref], ablation, batch size). The refs are in
#: lists so Ray passes them as references, fetched only by an actor that has no session for the key yet.
# (key, [task ref], [reference ref], ablation, batch size, the driver's run settings: examples per pass, position
# chunk, stacked steps, grouped k/v): every replica runs the graph and the passes of the driver's session (the
# chunks it fitted to its memory budget).
Setup = tuple[str, list, list, str, int, tuple]


def _run_settings(session: CircuitSession) -> tuple[int | None, int | None, int | None, bool]:
    """The chunks the driver's session runs (its own or fitted to its memory budget) and its graph (grouped k/v
    receivers or MIB's): the replicas run the same."""
    return session.examples_per_pass, session.position_chunk, session.steps_per_pass, session.model.grouped_kv


def _setup_key(session: CircuitSession) -> str:
    """What identifies a session's data and settings: its examples, reference set, ablation, metric, batches."""
    h = hashlib.blake2b(digest_size=16)
    for task in (session.data, session.reference):
        for t in (task.clean, task.corrupted):
            h.update(t.numpy().tobytes())
    h.update(repr((session.ablation, session.metric.name, session.batch_size, session.n_examples,
                   _run_settings(session))).encode())
    return h.hexdigest()


def _fieldwise(combine: Callable[..., torch.Tensor], outputs: Sequence[Any]) -> Any:
    """``combine(*outputs)`` of a method's tensor outputs, or field by field of its dataclasses of tensors (a neuron
    method's ``NeuronScores``), as the same dataclass: one rule for what a spread run ships and adds up."""
    first = outputs[0]
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return dataclasses.replace(first, **{f.name: _fieldwise(combine, [getattr(o, f.name) for o in outputs])
                                             for f in dataclasses.fields(first)})
    return combine(*outputs)


def _sum_in_order(*parts: torch.Tensor) -> torch.Tensor:
    """The shares' sum in float64 and in share order (the same whichever actor ran which share), in their dtype;
    an entry NaN in every share (a node score's ``logits``) stays NaN."""
    total = torch.zeros_like(parts[0], dtype=torch.float64)
    for part in parts:
        total += part
    return total.to(parts[0].dtype)


class _Replica:
    """The actor: one model replica, one evaluation CircuitSession, and (on demand) the session of a spread
    discovery and ACDC's evaluator."""

    def __init__(self, model: Any, task: Any, ablation: str, split: str, batch_size: int,
                 circuits_per_pass: int | None, threads: int | None, task_options: dict | None,
                 device: str | None = None, dtype: str | None = None, grouped_kv: bool | None = None):
        if threads:
            torch.set_num_threads(max(1, int(threads)))
        if isinstance(model, str):
            from circuits.sweeps.job import resolve_model

            model = resolve_model(model, device, dtype)
        if torch.cuda.is_available() and model.device.type != "cuda":
            model = model.to("cuda")  # Ray made this actor's GPU the only visible one
        if isinstance(task, str):
            from circuits.tasks import load_task

            task = load_task(task, model, **(task_options or {}))
        self.model, self.task = model, task
        self.session = CircuitSession(model, task, ablation=ablation, split=split, batch_size=batch_size,
                                      circuits_per_pass=circuits_per_pass, grouped_kv=grouped_kv)
        self.discovery: tuple[str, CircuitSession] | None = None  # the latest spread discovery's session
        self.acdc_evaluators: dict = {}
        self.neuron_runs: NeuronRuns | None = None

    def node(self) -> str:
        """The Ray node this replica runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def circuit_metrics(self, masks: torch.Tensor, kl: bool):
        return self.session.circuit_metrics(masks, kl=kl)

    def neuron_circuit_metrics(self, edges: torch.Tensor, neurons: torch.Tensor, kl: bool):
        if self.neuron_runs is None:  # built once: it keeps each batch's ablated neuron activations
            self.neuron_runs = NeuronRuns(self.session)
        return self.neuron_runs.circuit_metrics(edges, neurons, kl=kl)

    def baselines(self):
        r = self.session
        return (r.metric_full, r.metric_empty, r.n_examples, r.ablation, r.split, r.task_name, r.metric.name,
                r.structure, self.model.name)

    # ---- a discovery spread over the pool -------------------------------------------------------------------
    def _discovery_session(self, setup: Setup) -> CircuitSession:
        key, task, reference, ablation, batch_size, (examples, positions, steps, grouped) = setup
        if self.discovery is None or self.discovery[0] != key:
            import ray

            self.discovery = None  # free the previous run's cached activations first
            session = CircuitSession(self.model, ray.get(task[0]), ablation=ablation, split="all",
                                     reference=ray.get(reference[0]), batch_size=batch_size, show_progress=False,
                                     examples_per_pass=examples, position_chunk=positions, grouped_kv=grouped)
            session.steps_per_pass = steps
            self.discovery = (key, session)
        return self.discovery[1]

    def check_signal(self, setup: Setup) -> None:
        self._discovery_session(setup).check_signal()

    def units(self, setup: Setup, method: str, params: dict) -> int:
        units = METHODS[method].units
        assert units is not None
        return units(self._discovery_session(setup), **params)

    def discover_share(self, setup: Setup, method: str, params: dict, share: tuple[int, ...]) -> Any:
        """``method``'s output on the units ``share`` of its work list (they add up over shares), on the CPU."""
        session = self._discovery_session(setup)
        session.share = share
        try:
            return _fieldwise(torch.Tensor.cpu, [METHODS[method].fn(session, **params)])
        finally:
            session.share = None

    # ---- ACDC's candidate batches ---------------------------------------------------------------------------
    def acdc_objective(self, setup: Setup, metric: str, fast: bool, masks: torch.Tensor,
                       anchor: torch.Tensor | None) -> torch.Tensor:
        """ACDC's objective of candidate circuits, by an evaluator built (once per run) on the driver's data."""
        key, task, reference, ablation, batch_size, (examples, _, _, grouped) = setup
        if key not in self.acdc_evaluators:
            import ray

            from circuits.discovery.acdc import CandidateEvaluator, objective_metric

            self.acdc_evaluators = {}
            session = CircuitSession(self.model, ray.get(task[0]), ablation=ablation, batch_size=batch_size,
                                     reference=ray.get(reference[0]), examples_per_pass=examples, grouped_kv=grouped)
            self.acdc_evaluators[key] = CandidateEvaluator(session, objective_metric(session, metric), fast)
        return self.acdc_evaluators[key].objective(masks, anchor)


class PoolError(RuntimeError):
    """The pool cannot finish: every actor is lost."""


class EvaluatorPool:
    """``n_actors`` Ray actors discovering and evaluating circuits of one (model, task, ablation, split); see the
    module docstring.

    ``model``: a spec string (``"zoo:NAME"``, hub id, ``"tiny-random"``; each actor loads its own replica) or a
    loaded :class:`CircuitModel` (shipped once through Ray's object store). ``task``: a built task, or its name
    with ``task_options`` (``n``, ``seed``) when ``model`` is a string. ``gpus`` per actor: ``"auto"`` = one
    where the cluster has GPUs, else none. ``device`` / ``dtype``: how string-spec replicas load. Actors are
    spread over the cluster's nodes. ``max_restarts``: how often Ray restarts a lost actor (its work goes to the
    others meanwhile). ``chunks_per_actor``: pieces of work per actor in a discovery (more: finer balance and
    less recomputed after a loss; fewer: fewer score tensors sent back). ``on_progress(done, total)``: called
    on the driver as the units of a discovery finish. ``grouped_kv``: the replicas' evaluation graph (k/v receivers
    per key/value group, or MIB's per head; None: as the model loads); a discovery follows its driver session's.
    Ray must be initialised (``circuits.sweeps.ray_session()``).
    """

    def __init__(self, model: Any, task: Any, *, n_actors: int = 2, ablation: str = "corrupted",
                 split: str = "validation", batch_size: int = 32, circuits_per_pass: int | None = None,
                 cpus: float = 1, gpus: float | str = "auto", task_options: dict | None = None,
                 device: str | None = None, dtype: str | None = None, max_restarts: int = 3,
                 chunks_per_actor: int = 4, on_progress: Callable[[int, int], None] | None = None,
                 grouped_kv: bool | None = None):
        import ray

        if not ray.is_initialized():
            raise RuntimeError("EvaluatorPool needs Ray: use it inside `with circuits.sweeps.ray_session():`")
        if n_actors < 1:
            raise ValueError(f"n_actors must be at least 1, got {n_actors}")
        if chunks_per_actor < 1:
            raise ValueError(f"chunks_per_actor must be at least 1, got {chunks_per_actor}")
        if gpus == "auto":
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        self.ray = ray
        self.ablation, self.split, self.batch_size = ablation, split, batch_size
        self.max_restarts, self.chunks_per_actor, self.on_progress = max_restarts, chunks_per_actor, on_progress
        self._model, self._task, self._task_options = model, task, task_options
        self._device, self._dtype, self._grouped_kv = device, dtype, grouped_kv
        # max_task_retries=0: a call lost with its actor comes back here, and _dispatch gives it to a live actor
        actor = ray.remote(_Replica).options(num_cpus=cpus, num_gpus=gpus, max_restarts=max_restarts,
                                             max_task_retries=0, scheduling_strategy="SPREAD")
        model_ref = model if isinstance(model, str) else ray.put(model)
        task_ref = task if isinstance(task, str) else ray.put(task)
        self._refs = (model_ref, task_ref)  # held: a restarted actor is built from them again
        self.rerun = 0  # pieces of work run again after their actor was lost
        # Ray actor handles: _Replica's methods are called as ``handle.method.remote(...)``, which Ray types only
        # for @ray.method-decorated methods (ray is imported lazily here, so they are not decorated): untyped.
        self.actors: list[Any] = [actor.remote(model_ref, task_ref, ablation, split, batch_size, circuits_per_pass,
                                              max(1, int(cpus)), task_options, device, dtype, grouped_kv)
                                 for _ in range(n_actors)]
        (self.metric_full, self.metric_empty, self.n_examples, self.ablation, self.split, self.task_name,
         metric_name, self.structure, self.model_name) = self._dispatch(
            lambda a, _: a.baselines.remote(), [None])[0]
        from circuits.tasks.metrics import Metric

        self.metric = Metric(metric_name)  # the CircuitSession interface: curves can run on the pool

    def __len__(self) -> int:
        return len(self.actors)

    def nodes(self, timeout_s: float = 120.0) -> list[str]:
        """The Ray node id of each actor, in order (an actor Ray is restarting is waited for)."""
        from ray.exceptions import ActorUnavailableError

        deadline, out = time.monotonic() + timeout_s, []
        for a in self.actors:
            while True:
                try:
                    out.append(self.ray.get(a.node.remote()))
                    break
                except ActorUnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
        return out

    def _chunks(self, C: int, k: int | None = None) -> list[slice]:
        k = min(k or len(self.actors), C)
        bounds = [round(i * C / k) for i in range(k + 1)]
        return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]

    def _dispatch(self, submit: Callable[[Any, Any], Any], pieces: Sequence[Any],
                  sizes: Sequence[int] | None = None) -> list[Any]:
        """``[submit(actor, piece) for piece in pieces]``'s results, in order; each piece runs on the next idle
        actor. A piece whose actor is lost goes back to the front of the queue (to another actor, or to the same
        one once Ray has restarted it); a result is taken once, from the call that returned it. ``sizes``: units
        per piece, reported to ``on_progress`` as they finish."""
        from ray.exceptions import ObjectLostError, RayActorError

        todo, idle = deque(range(len(pieces))), deque(range(len(self.actors)))
        running: dict[Any, tuple[int, int]] = {}  # object ref -> (piece, actor)
        results: dict[int, Any] = {}
        losses = [0] * len(self.actors)
        done_units, total = 0, sum(sizes or ())
        while todo or running:
            while todo and idle:
                a, i = idle.popleft(), todo.popleft()
                running[submit(self.actors[a], pieces[i])] = (i, a)
            if not running:
                raise PoolError(f"every actor of the pool was lost (each more than max_restarts={self.max_restarts} "
                                "times); check the cluster's nodes, or raise max_restarts")
            ready, _ = self.ray.wait(list(running), num_returns=1)
            i, a = running.pop(ready[0])
            try:
                results[i] = self.ray.get(ready[0])
            except (RayActorError, ObjectLostError):  # the actor (or the node holding the result) was lost
                todo.appendleft(i)
                self.rerun += 1
                losses[a] += 1
                if losses[a] <= self.max_restarts:
                    idle.append(a)  # last in line: a live actor takes the piece first
                continue
            idle.append(a)
            if sizes is not None and self.on_progress is not None:
                done_units += sizes[i]
                self.on_progress(done_units, total)
        return [results[i] for i in range(len(pieces))]

    def circuit_metrics(self, masks: torch.Tensor, *, kl: bool = False) -> CircuitMetrics:
        """``masks [C, S, R]`` -> metric (and KL) ``[C, n]``, as one session's, the circuits split across actors."""
        if masks.dim() == 2:
            masks = masks[None]
        masks = masks.detach().cpu()
        return self._split_circuits(lambda a, c: a.circuit_metrics.remote(masks[c].clone(), kl), masks.shape[0], kl)

    def neuron_circuit_metrics(self, edges: torch.Tensor, neurons: torch.Tensor, *, kl: bool = False) -> CircuitMetrics:
        """Neuron circuits ``(edges [C, S, R], neurons [C, L, m])`` -> metric (and KL) ``[C, n]``, as
        :meth:`circuits.session.neurons.NeuronRuns.circuit_metrics`, the circuits split across actors."""
        edges, neurons = edges.detach().cpu(), neurons.detach().cpu()
        return self._split_circuits(lambda a, c: a.neuron_circuit_metrics.remote(edges[c].clone(), neurons[c].clone(),
                                                                                 kl), edges.shape[0], kl)

    def _split_circuits(self, submit: Callable[[Any, slice], Any], n_circuits: int, kl: bool) -> CircuitMetrics:
        """``submit(actor, circuits)``'s metrics for contiguous chunks of ``n_circuits`` circuits, concatenated."""
        parts = self._dispatch(submit, self._chunks(n_circuits))
        return CircuitMetrics(torch.cat([p.metric for p in parts]), torch.cat([p.kl for p in parts]) if kl else None)

    # ---- discovery over the pool ----------------------------------------------------------------------------
    def discover(self, method: str = "eap-ig", **kwargs: Any) -> Graph:
        """``circuits.discover(model, task, method, workers=self, **kwargs)`` on the pool's model and task, with
        the pool's ablation and batch size unless given: the scores of one process, the work spread over the
        actors (module docstring). With a spec-string model the driver loads one copy too (on CPU), for the
        graph's structure and ACDC's search."""
        from circuits.discovery import discover

        kwargs.setdefault("ablation", self.ablation)
        kwargs.setdefault("batch_size", self.batch_size)
        model, task = self._driver_model_and_task()
        return discover(model, task, method, workers=self, **kwargs)

    def _driver_model_and_task(self) -> tuple[Any, Any]:
        model, task = self._model, self._task
        if isinstance(model, str):
            from circuits.sweeps.job import resolve_model

            model = self._model = resolve_model(model, "cpu", self._dtype)
        if self._grouped_kv is not None:  # the graph the replicas evaluate (the same weights)
            model = model.with_grouped_kv(self._grouped_kv)
        if isinstance(task, str):
            from circuits.tasks import load_task

            task = self._task = load_task(task, model, **(self._task_options or {}))
        return model, task

    def run(self, method: Method, session: CircuitSession, params: dict[str, Any], *, check: bool = True) -> Any:
        """What ``method.fn(session, **params)`` returns in one process (:class:`circuits.discovery.Workers`):
        attribution's batches or exact patching's passes split over the actors and their outputs summed; ACDC's
        search on the driver with its candidate batches on the pool; an ensemble's members each spread so."""
        params = {k: v for k, v in params.items() if k != "checkpoint"}  # a spread run keeps its work itself
        if method.units is None:
            if method.name == "ensemble":  # each member spread in turn, their ranks combined here
                from circuits.discovery.ensemble import DEFAULT_MEMBERS, score_ensemble

                return score_ensemble(session, params.get("members", DEFAULT_MEMBERS), params.get("combine", "mean"),
                                      lambda name: self.run(METHODS[name], session, {}, check=check))
            if method.name == "acdc":
                if check:
                    session.check_signal()
                with self.acdc():
                    return method.fn(session, **params)
            spread = sorted(name for name, m in METHODS.items() if m.units is not None)
            raise DiscoveryError(f"method {method.name!r} runs in one process (each step depends on the last); "
                                 f"a pool spreads {', '.join(spread)}, acdc's candidate batches and ensembles of them")
        ray = self.ray
        setup: Setup = (_setup_key(session), [ray.put(session.data)], [ray.put(session.reference)],
                        session.ablation, session.batch_size, _run_settings(session))
        n_units = self._dispatch(lambda a, _: a.units.remote(setup, method.name, params), [None])[0]
        if check:
            self._dispatch(lambda a, _: a.check_signal.remote(setup), [None])
        chunks = self._chunks(n_units, len(self.actors) * self.chunks_per_actor)
        shares = [tuple(range(c.start, c.stop)) for c in chunks]
        parts = self._dispatch(lambda a, share: a.discover_share.remote(setup, method.name, params, share), shares,
                               sizes=[len(share) for share in shares])
        return _fieldwise(_sum_in_order, parts)

    # ---- the evaluation API over the pool -------------------------------------------------------------------
    def faithfulness_curve(self, scored, *, fractions=None, absolute: bool = False, level: str = "edge",
                           selection: str = "top_k", log_scale: bool = False):
        """:func:`circuits.faithfulness_curve` with the pool's task, ablation and split, points split over actors."""
        from circuits.evaluation.faithfulness import MIB_FRACTIONS, faithfulness_curve

        return faithfulness_curve(None, None, scored, fractions=fractions or MIB_FRACTIONS, absolute=absolute,
                                  level=level, selection=selection, log_scale=log_scale, runner=self)

    def mib_scores(self, scored, *, fractions=None, level: str = "edge", selection: str = "top_k") -> dict:
        """CPR of the signed curve and CMD of the absolute curve (:func:`circuits.evaluation.mib_scores`)."""
        from circuits.evaluation.faithfulness import MIB_FRACTIONS, mib_scores

        return mib_scores(None, None, scored, fractions=fractions or MIB_FRACTIONS, level=level, selection=selection,
                          runner=self)

    @contextlib.contextmanager
    def acdc(self):
        """Inside this block, ACDC (``circuits.discover(..., "acdc")``) evaluates its candidate batches on the
        pool: each batch of candidate circuits is split over the actors, whose replicas hold the same data
        (the discovery context is rebuilt on each actor from the same task, split and ablation), so the
        objectives, hence the decisions, are ACDC's own. The driver still runs the search."""
        from circuits.discovery import acdc as acdc_module

        pool = self

        class PooledEvaluator:
            def __init__(self, session, metric, fast):
                self.session, self.fast = session, fast
                self.n_forward = 0
                self.metric = "task" if metric is session.metric else "kl"
                self.setup: Setup = (f"{_setup_key(session)}-{self.metric}-{fast}", [pool.ray.put(session.data)],
                                     [pool.ray.put(session.reference)], session.ablation, session.batch_size,
                                     _run_settings(session))

            def objective(self, masks: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
                masks = masks.detach().cpu()
                anchor = None if anchor is None else anchor.detach().cpu().clone()
                parts = pool._dispatch(lambda a, c: a.acdc_objective.remote(self.setup, self.metric, self.fast,
                                                                            masks[c].clone(), anchor),
                                       pool._chunks(masks.shape[0]))
                self.n_forward += masks.shape[0]
                return torch.cat(parts)

        with acdc_module.evaluated_by(PooledEvaluator):
            yield self

    def shutdown(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []

    def __enter__(self) -> "EvaluatorPool":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

