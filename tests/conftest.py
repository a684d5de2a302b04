"""Shared fixtures: random-weight models of every supported architecture (no download)."""

from __future__ import annotations

import pytest
import torch

from circuits.models.random import random_model

# The test models are tiny: one thread avoids the thread start-up and contention that dominate at this size.
torch.set_num_threads(1)

# Tiny configs of every supported family. Llama and Qwen2 use grouped-query attention (4 heads, 2 kv groups);
# GPT-NeoX is tested with both parallel (Pythia) and sequential blocks.
TINY = {
    "gpt2": dict(family_or_preset="gpt2"),
    "gpt_neox": dict(family_or_preset="gpt_neox"),
    "gpt_neox-sequential": dict(family_or_preset="gpt_neox", use_parallel_residual=False),
    "llama": dict(family_or_preset="llama", n_kv_heads=2),
    "qwen2": dict(family_or_preset="qwen2", n_kv_heads=2),
}


def tiny_model(arch: str, dtype=torch.float32, seed: int = 0):
    """A 2-layer, 4-head, d=32 model whose every parameter (norm weights and biases too) is randomised,
    so a formula that ignored a bias or a norm weight would show in the comparisons."""
    kwargs = dict(TINY[arch])
    model = random_model(kwargs.pop("family_or_preset"), n_layers=2, n_heads=4, d_model=32, vocab_size=64,
                         seed=seed, dtype=dtype, **kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.hf.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


@pytest.fixture(params=list(TINY))
def arch(request) -> str:
    return request.param
