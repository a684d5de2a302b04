"""Task metrics, read from the logits at a task's readout positions.

One code path serves every task: a batch says, per example, which positions to read (``positions`` [n, R] with
``position_mask``) and which token ids are answers and distractors at each of them (``answers`` [n, R, A],
``distractors`` [n, R, D], with masks, so sets of different sizes fit one tensor). A metric reduces each read
position to a number and averages the valid positions, giving one value per example ([n]).

- ``logit_diff``: mean answer logit - mean distractor logit (IOI: logit(IO) - logit(S)).
- ``prob_diff``: total answer probability - total distractor probability (greater-than: p(YY' > YY) - p(YY' <= YY)).
- ``logprob``: log of the total answer probability (log p(answer) for one answer).
- ``kl``: KL(full model || this run) over the whole vocabulary, from the full model's clean logits.

All four are differentiable in ``logits`` (attribution patching backpropagates through them) and use gathers,
never Python loops over examples or positions. Probabilities are softmaxes over the full vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch

from circuits.tasks.errors import TaskError

METRICS: dict[str, str] = {
    "logit_diff": "mean logit of the answer(s) minus mean logit of the distractor(s); higher is better",
    "prob_diff": "probability of the answer set minus probability of the distractor set; higher is better",
    "logprob": "log-probability of the answer (of the answer set); higher is better",
    "kl": "KL divergence from the full model's next-token distribution; lower is better (needs full_logits)",
}
_NEEDS_DISTRACTOR = {"logit_diff", "prob_diff"}
_NEG = -1e30  # stands in for -inf in masked log-sum-exp, so masked rows keep finite gradients


def check_metric_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    aliases = {"logitdiff": "logit_diff", "probdiff": "prob_diff", "log_prob": "logprob", "kl_div": "kl",
               "kl_divergence": "kl"}
    key = aliases.get(key, key)
    if key not in METRICS:
        raise TaskError(f"unknown metric {name!r}; fix: use one of {', '.join(METRICS)}")
    return key


def _logits_tensor(logits: Any) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        logits = getattr(logits, "logits", logits)  # a transformers ModelOutput
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise TaskError(f"metric expects logits of shape [n, seq, vocab], got "
                        f"{getattr(logits, 'shape', type(logits).__name__)}")
    return logits


def read_positions(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """logits [n, seq, V], positions [n, R] -> logits at those positions [n, R, V] (float32)."""
    index = positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1])  # [n, R, V], a view
    return logits.gather(1, index).float()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the last dim where mask is True; 0 where nothing is valid. values, mask [..., K] -> [...]."""
    mask_f = mask.to(values.dtype)
    return (values * mask_f).sum(-1) / mask_f.sum(-1).clamp(min=1.0)


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask.to(values.dtype)).sum(-1)


class Metric:
    """A task metric: ``metric(logits, batch, full_logits=None) -> Tensor [n]``, one value per example.

    ``logits`` are the run's logits [n, seq, vocab] for the examples of ``batch`` (a ``TaskBatch``, or the whole
    ``Task``); ``full_logits`` (same shape: the full model's clean logits) is required by ``kl`` only.
    A metric returned by ``task.metric`` is bound to that task, so ``task.metric(logits)`` works for the whole
    task; pass ``batch`` explicitly for a batch. ``name`` is one of :data:`METRICS`; ``higher_is_better``
    is False for ``kl`` only.
    """

    def __init__(self, name: str, batch: Any = None):
        self.name = check_metric_name(name)
        self.higher_is_better = self.name != "kl"
        self.needs_distractor = self.name in _NEEDS_DISTRACTOR
        self.needs_full_logits = self.name == "kl"
        self._batch = batch

    def bind(self, batch: Any) -> "Metric":
        """The same metric with a default batch (used when called without one)."""
        return Metric(self.name, batch)

    def __repr__(self) -> str:
        return f"Metric({self.name!r}, higher_is_better={self.higher_is_better})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Metric) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __call__(self, logits: Any, batch: Any = None, full_logits: Any = None) -> torch.Tensor:
        batch = self._batch if batch is None else batch
        if batch is None:
            raise TaskError(f"metric {self.name!r} needs the batch the logits belong to; fix: call "
                            f"metric(logits, batch) or use task.metric(logits) for the whole task")
        logits = _logits_tensor(logits)
        if logits.shape[0] != batch.positions.shape[0]:
            raise TaskError(f"metric {self.name!r}: logits hold {logits.shape[0]} examples but the batch has "
                            f"{batch.positions.shape[0]}; fix: pass the batch these logits were computed on")
        device = logits.device
        positions = batch.positions.to(device)            # [n, R]
        pos_mask = batch.position_mask.to(device)         # [n, R]
        read = read_positions(logits, positions)                 # [n, R, V]

        if self.name == "kl":
            if full_logits is None:
                raise TaskError("metric 'kl' compares against the full model: pass full_logits= (the full "
                                "model's logits on the clean inputs, same shape as logits)")
            full = _logits_tensor(full_logits)
            if full.shape != logits.shape:
                raise TaskError(f"metric 'kl': full_logits shape {tuple(full.shape)} differs from logits "
                                f"shape {tuple(logits.shape)}; fix: pass the full model's logits on the same batch")
            full_logp = read_positions(full.to(device), positions).log_softmax(-1)   # [n, R, V]
            logp = read.log_softmax(-1)                                        # [n, R, V]
            per_pos = (full_logp.exp() * (full_logp - logp)).sum(-1)          # [n, R]
            return _masked_mean(per_pos, pos_mask)

        answers = batch.answers.to(device)                # [n, R, A]
        answer_mask = batch.answer_mask.to(device)        # [n, R, A]
        if self.name == "logit_diff":
            distractors, distractor_mask = batch.distractors.to(device), batch.distractor_mask.to(device)
            good = _masked_mean(read.gather(2, answers), answer_mask)            # [n, R]
            bad = _masked_mean(read.gather(2, distractors), distractor_mask)     # [n, R]
            per_pos = good - bad
        elif self.name == "prob_diff":
            distractors, distractor_mask = batch.distractors.to(device), batch.distractor_mask.to(device)
            probs = read.softmax(-1)                                             # [n, R, V]
            per_pos = (_masked_sum(probs.gather(2, answers), answer_mask)
                       - _masked_sum(probs.gather(2, distractors), distractor_mask))
        else:  # logprob
            logp = read.log_softmax(-1).gather(2, answers)                       # [n, R, A]
            logp = torch.where(answer_mask, logp, torch.full_like(logp, _NEG))
            per_pos = torch.logsumexp(logp, dim=-1)                              # [n, R]
            per_pos = torch.where(pos_mask, per_pos, torch.zeros_like(per_pos))
        return _masked_mean(per_pos, pos_mask)


def get_metric(name: str) -> Metric:
    """An unbound :class:`Metric` by name (``logit_diff``, ``prob_diff``, ``logprob``, ``kl``)."""
    return Metric(name)
