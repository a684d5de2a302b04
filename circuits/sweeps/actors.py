"""Spreading one large job over Ray: a pool of actors, each holding a model replica (one per GPU where GPUs
exist), that evaluates batches of circuits (edge masks) with the result of one process.

    pool = EvaluatorPool("zoo:planted-ioi", task, n_actors=2)      # or a loaded CircuitModel
    values = pool.circuit_metrics(masks, kl=True) # [C, S, R] -> [C, n] each, as CircuitSession.circuit_metrics
    curve = pool.faithfulness_curve(scored)       # as circuits.faithfulness_curve, its points split over actors
    scores = pool.mib_scores(scored)              # CPR (signed curve) and CMD (absolute curve), 20 circuits
    with pool.acdc():                             # ACDC's candidate batches evaluated by the pool
        graph = circuits.discover(model, task, "acdc", threshold=0.01)

Why the result is the same as one process: a circuit's metric on an example depends only on that circuit's mask,
the example and the model (each circuit is its own rows of the batched forward; nothing is reduced across
circuits), and every actor builds the same :class:`~circuits.session.CircuitSession` (same split, batch
plan, ablation and cached clean / ablated runs) from the same model weights. The pool splits the circuits into
contiguous chunks, one per actor, and concatenates the answers in order. The numbers agree with one process to
floating-point rounding (tested to 1e-5): the batched matmuls, and which nodes a patched pass skips (a node idle
in every circuit of the pass), depend on which circuits share a pass.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from circuits.session import CircuitMetrics


class _Replica:
    """The actor: one model replica and one CircuitSession (and, on demand, an ACDC evaluator)."""

    def __init__(self, model: Any, task: Any, ablation: str, split: str, batch_size: int,
                 circuits_per_pass: int | None, threads: int | None, task_options: dict | None,
                 device: str | None = None, dtype: str | None = None):
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
        from circuits.session import CircuitSession

        self.model, self.task = model, task
        self.session = CircuitSession(model, task, ablation=ablation, split=split, batch_size=batch_size,
                                      circuits_per_pass=circuits_per_pass)
        self.acdc_evaluators: dict = {}

    def circuit_metrics(self, masks: torch.Tensor, kl: bool):
        return self.session.circuit_metrics(masks, kl=kl)

    def baselines(self):
        r = self.session
        return (r.metric_full, r.metric_empty, r.n_examples, r.ablation, r.split, r.task_name, r.metric.name,
                r.structure)

    def acdc_setup(self, key: int, task: Any, reference: Any, ablation: str, batch_size: int, metric: str,
                   fast: bool) -> None:
        """Build ACDC's evaluator on this replica from the driver's discovery split (the same examples)."""
        from circuits.discovery.acdc import CandidateEvaluator, objective_metric
        from circuits.session import CircuitSession

        session = CircuitSession(self.model, task, ablation=ablation, batch_size=batch_size, reference=reference)
        self.acdc_evaluators = {key: CandidateEvaluator(session, objective_metric(session, metric), fast)}

    def acdc_objective(self, key: int, masks: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
        return self.acdc_evaluators[key].objective(masks, anchor)


class EvaluatorPool:
    """``n_actors`` Ray actors evaluating circuits of one (model, task, ablation, split); see the module docstring.

    ``model``: a spec string (``"zoo:NAME"``, hub id, ``"tiny-random"``; each actor loads its own replica) or a
    loaded :class:`CircuitModel` (shipped once through Ray's object store). ``task``: a built task, or its name
    with ``task_options`` (``n``, ``seed``) when ``model`` is a string. ``gpus`` per actor: ``"auto"`` = one
    where the cluster has GPUs, else none. ``device`` / ``dtype``: how string-spec replicas load. Ray must be
    initialised (``circuits.sweeps.ray_session()``).
    """

    def __init__(self, model: Any, task: Any, *, n_actors: int = 2, ablation: str = "corrupted",
                 split: str = "validation", batch_size: int = 32, circuits_per_pass: int | None = None,
                 cpus: float = 1, gpus: float | str = "auto", task_options: dict | None = None,
                 device: str | None = None, dtype: str | None = None):
        import ray

        if not ray.is_initialized():
            raise RuntimeError("EvaluatorPool needs Ray: use it inside `with circuits.sweeps.ray_session():`")
        if n_actors < 1:
            raise ValueError(f"n_actors must be at least 1, got {n_actors}")
        if gpus == "auto":
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        self.ray = ray
        self.ablation, self.split, self.batch_size = ablation, split, batch_size
        actor = ray.remote(_Replica).options(num_cpus=cpus, num_gpus=gpus)
        model_ref = model if isinstance(model, str) else ray.put(model)
        task_ref = task if isinstance(task, str) else ray.put(task)
        # Ray actor handles: _Replica's methods are called as ``handle.method.remote(...)``, which Ray types only
        # for @ray.method-decorated methods (ray is imported lazily here, so they are not decorated): untyped.
        self.actors: list[Any] = [actor.remote(model_ref, task_ref, ablation, split, batch_size, circuits_per_pass,
                                              max(1, int(cpus)), task_options, device, dtype)
                                 for _ in range(n_actors)]
        (self.metric_full, self.metric_empty, self.n_examples, self.ablation, self.split, self.task_name,
         metric_name, self.structure) = ray.get(self.actors[0].baselines.remote())
        from circuits.tasks.metrics import Metric

        self.metric = Metric(metric_name)  # the CircuitSession interface: curves can run on the pool

    def __len__(self) -> int:
        return len(self.actors)

    def _chunks(self, C: int) -> list[slice]:
        k = min(len(self.actors), C)
        bounds = [round(i * C / k) for i in range(k + 1)]
        return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]

    def circuit_metrics(self, masks: torch.Tensor, *, kl: bool = False) -> CircuitMetrics:
        """``masks [C, S, R]`` -> metric (and KL) ``[C, n]``, as one session's, the circuits split across actors."""
        if masks.dim() == 2:
            masks = masks[None]
        masks = masks.detach().cpu()
        chunks = self._chunks(masks.shape[0])
        parts = self.ray.get([a.circuit_metrics.remote(masks[c].clone(), kl) for a, c in zip(self.actors, chunks)])
        return CircuitMetrics(torch.cat([p.metric for p in parts]),
                              torch.cat([p.kl for p in parts]) if kl else None)

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
                self.key = id(self)
                name = "task" if metric is session.metric else "kl"
                task, ref = pool.ray.put(session.data), pool.ray.put(session.reference)
                pool.ray.get([a.acdc_setup.remote(self.key, task, ref, session.ablation, session.batch_size, name,
                                                  fast) for a in pool.actors])

            def objective(self, masks: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
                masks = masks.detach().cpu()
                anchor = None if anchor is None else anchor.detach().cpu().clone()
                chunks = pool._chunks(masks.shape[0])
                parts = pool.ray.get([a.acdc_objective.remote(self.key, masks[c].clone(), anchor)
                                      for a, c in zip(pool.actors, chunks)])
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

