"""Metrics on hand-made logits, compared with values computed by hand (catches a wrong formula or sign)."""

import math

import pytest
import torch

from circuits.tasks import Metric, TaskBatch, TaskError
from circuits.tasks.task import build_batch


def _batch(readouts, seq=4, vocab_pad=0):
    ids = [[1] * seq for _ in readouts]
    return build_batch(ids, ids, readouts, pad=0)


def test_logit_diff_single_answer():
    logits = torch.zeros(2, 4, 6)
    logits[0, 3, 2], logits[0, 3, 5] = 3.0, 1.0   # example 0 reads position 3: answer 2, distractor 5
    logits[1, 1, 4], logits[1, 1, 0] = -1.0, 0.5  # example 1 reads position 1: answer 4, distractor 0
    logits[1, 3, 4] = 100.0                        # not read: must not matter
    batch = _batch([[(3, [2], [5])], [(1, [4], [0])]])
    out = Metric("logit_diff")(logits, batch)
    assert out.shape == (2,)
    assert torch.allclose(out, torch.tensor([2.0, -1.5]))


def test_prob_diff_answer_sets():
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))[None, None].repeat(1, 2, 1)  # [1, 2, 4]
    batch = _batch([[(1, [2, 3], [0, 1])]], seq=2)
    out = Metric("prob_diff")(logits, batch)
    assert out.item() == pytest.approx((0.3 + 0.4) - (0.1 + 0.2))
    batch = _batch([[(0, [3], [0, 1, 2])]], seq=2)  # sets of different sizes
    assert Metric("prob_diff")(logits, batch).item() == pytest.approx(0.4 - 0.6)


def test_logprob_and_multi_position_mean():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])  # [1, 3, 3]
    batch = _batch([[(0, [2], []), (1, [0], [])]], seq=3)
    lse0 = math.log(1 + math.e + math.e ** 2)
    lse1 = math.log(math.e ** 2 + 2)
    expected = ((2.0 - lse0) + (2.0 - lse1)) / 2
    assert Metric("logprob")(logits, batch).item() == pytest.approx(expected, rel=1e-6)
    # an answer set: log(p0 + p1) at position 0
    batch = _batch([[(0, [0, 1], [])]], seq=3)
    assert Metric("logprob")(logits, batch).item() == pytest.approx(math.log((1 + math.e) / math.exp(lse0)))


def test_padded_readouts_are_ignored():
    logits = torch.randn(2, 5, 7)
    batch = _batch([[(1, [3], [4]), (2, [5], [6])], [(4, [1], [2])]], seq=5)
    assert batch.positions.shape == (2, 2) and batch.position_mask.tolist() == [[True, True], [True, False]]
    out = Metric("logit_diff")(logits, batch)
    e0 = ((logits[0, 1, 3] - logits[0, 1, 4]) + (logits[0, 2, 5] - logits[0, 2, 6])) / 2
    e1 = logits[1, 4, 1] - logits[1, 4, 2]
    assert torch.allclose(out, torch.stack([e0, e1]))
    assert batch.read_mask.tolist() == [[False, True, True, False, False], [False, False, False, False, True]]


def test_kl_against_full_model():
    full = torch.log(torch.tensor([0.5, 0.25, 0.25]))[None, None]  # [1, 1, 3]
    run = torch.log(torch.tensor([0.25, 0.5, 0.25]))[None, None]
    batch = _batch([[(0, [0], [1])]], seq=1)
    kl = Metric("kl")
    expected = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5) + 0.0
    assert kl(run, batch, full_logits=full).item() == pytest.approx(expected, rel=1e-6)
    assert kl(full, batch, full_logits=full).item() == pytest.approx(0.0, abs=1e-7)
    assert kl.higher_is_better is False and Metric("logit_diff").higher_is_better is True
    with pytest.raises(TaskError, match="full_logits"):
        kl(run, batch)


def test_metrics_are_differentiable():
    logits = torch.randn(3, 4, 5, requires_grad=True)
    batch = _batch([[(3, [1, 2], [0])], [(2, [3], [4])], [(0, [0], [1])]], seq=4)
    full = torch.randn(3, 4, 5)
    for name in ("logit_diff", "prob_diff", "logprob", "kl"):
        logits.grad = None
        out = Metric(name)(logits, batch, full_logits=full)
        out.sum().backward()
        assert torch.isfinite(logits.grad).all()
        # only read positions receive gradient
        assert logits.grad[0, :3].abs().sum() == 0 and logits.grad[0, 3].abs().sum() > 0


def test_bf16_logits_and_device_move():
    logits = torch.randn(1, 2, 5).to(torch.bfloat16)
    batch = _batch([[(1, [2], [3])]], seq=2)
    out = Metric("logit_diff")(logits, batch)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(float(logits[0, 1, 2]) - float(logits[0, 1, 3]))


def test_metric_errors():
    with pytest.raises(TaskError, match="unknown metric"):
        Metric("accuracy")
    batch = _batch([[(1, [2], [3])]], seq=2)
    with pytest.raises(TaskError, match="needs the batch"):
        Metric("logit_diff")(torch.randn(1, 2, 5))
    with pytest.raises(TaskError, match="examples"):
        Metric("logit_diff")(torch.randn(2, 2, 5), batch)
    assert isinstance(batch, TaskBatch)
