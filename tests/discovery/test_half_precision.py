"""Half precision (issue 18, point 3): a bf16 / fp16 model keeps its activations in its dtype, its scores are
accumulated in float32, and they rank the edges as the float32 run of the very same weights does."""

from __future__ import annotations

import copy

import pytest
import torch

import circuits
from circuits.interventions.probe import _fp32_product
from circuits.models.circuit_model import CircuitModel
from circuits.session import CircuitSession
from circuits.tasks import task_vocabulary, word_level_tokenizer
from circuits.tasks.metrics import Metric
from circuits.tasks.task import Task, build_batch
from tests.discovery.conftest import perturbed_random_model

HALF = [torch.bfloat16, torch.float16]


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.double().argsort().argsort().double()
    rb = b.double().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def _same_weights(base: CircuitModel, dtype: torch.dtype) -> tuple[CircuitModel, CircuitModel]:
    """``(half model, float32 model)`` with identical weights: the float32 one is the half weights cast back up,
    so only the arithmetic's precision differs."""
    half = CircuitModel.from_hf(copy.deepcopy(base.hf).to(dtype), base.tokenizer, name=f"{base.name}-{dtype}")
    return half, CircuitModel.from_hf(copy.deepcopy(half.hf).float(), base.tokenizer, name=f"{base.name}-fp32")


def _task(model: CircuitModel, n: int = 8, seq: int = 10) -> Task:
    vocab = len(model.tokenizer)
    g = torch.Generator().manual_seed(7)
    clean = torch.randint(0, vocab, (n, seq), generator=g).tolist()
    corrupted = torch.randint(0, vocab, (n, seq), generator=g).tolist()
    answers = torch.randint(0, vocab, (n, 2), generator=g).tolist()
    readouts = [[(seq - 1, [a], [d])] for a, d in answers]
    return Task("random-pairs", build_batch(clean, corrupted, readouts, pad=0), Metric("logit_diff"), model.tokenizer)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def base(request) -> CircuitModel:
    """A float32 random model (2 layers, 4 heads, d 32; Llama with 2 key/value groups) whose every weight is
    perturbed, so that the edges' scores spread over orders of magnitude."""
    extra = {"n_kv_heads": 2} if request.param == "llama" else {}
    return perturbed_random_model(word_level_tokenizer(task_vocabulary()), request.param, n_layers=2,
                                  dtype=torch.float32, seed=3, **extra)


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
@pytest.mark.parametrize("method,kwargs", [("eap", {}), ("eap-ig", {"steps": 3}),
                                           ("eap", {"position_chunk": 3})],  # the position-chunked products
                         ids=["eap", "eap-ig", "eap-position-chunks"])
def test_half_precision_scores_rank_like_float32(base, dtype, method, kwargs):
    half, full = _same_weights(base, dtype)
    task = _task(full)
    ref = circuits.discover(full, task, method=method, split="all", **kwargs)
    got = circuits.discover(half, task, method=method, split="all", **kwargs)
    edges = full.structure.edge_mask
    a, b = ref.scores[edges], got.scores[edges]
    assert got.scores.dtype == torch.float32
    assert bool(torch.isfinite(b).all())
    assert float(a.abs().max()) > 1e-3 and float(a.std()) > 1e-4  # a non-degenerate reference
    rho = _spearman(a, b)
    assert rho >= 0.99, f"{method} {dtype}: Spearman {rho:.4f} against float32"
    # and the values agree to what 2 layers of bf16 rounding allow (measured: up to ~6% of the largest score)
    assert float((a - b).abs().max()) <= 0.15 * float(a.abs().max())


def test_half_precision_activations_stay_half(base):
    model, _ = _same_weights(base, torch.bfloat16)
    session = CircuitSession(model, _task(model), split="all", show_progress=False)
    assert session.ablated(session.batches[0]).values.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_fp32_product_accumulates_in_float32(dtype, monkeypatch):
    """The chunked product of half operands equals the float32 product of the same (rounded) values, also when
    the reduction spans several chunks; a plain half matmul would round the result to ~3 digits."""
    import circuits.interventions.probe as probe

    monkeypatch.setattr(probe, "FP32_CHUNK_ELEMENTS", 1000)  # many chunks of the 4000-long reduction
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 4000, generator=g).to(dtype)
    b = torch.randn(3, 4000, generator=g).to(dtype)
    got = _fp32_product(a, b)
    want = a.double() @ b.double().T
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-3)
    assert float((got.double() - want).abs().max()) < 0.1 * float(((a @ b.T).double() - want).abs().max())
