"""Random-weight models of real architectures: the right shapes with no download.

They exercise every code path (graph sizes, parity with Hugging Face, patching) exactly as real checkpoints
would, which is what tests, benchmarks and a first look at a model's graph need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from circuits.models.circuit_model import CircuitModel

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PretrainedConfig

# Shapes of real checkpoints, so graph sizes and costs match them (weights stay random).
PRESETS: dict[str, dict] = {
    "gpt2-small": dict(family="gpt2", n_layers=12, n_heads=12, d_model=768, vocab_size=50257),
    "pythia-70m": dict(family="gpt_neox", n_layers=6, n_heads=8, d_model=512, vocab_size=50304),
    "qwen2.5-0.5b": dict(family="qwen2", n_layers=24, n_heads=14, n_kv_heads=2, d_model=896, d_mlp=4864,
                         vocab_size=151936),
    "llama-3.1-8b": dict(family="llama", n_layers=32, n_heads=32, n_kv_heads=8, d_model=4096, d_mlp=14336,
                         vocab_size=128256),
}
FAMILIES = ("gpt2", "gpt_neox", "llama", "qwen2")


def random_config(family: str, n_layers: int = 2, n_heads: int = 4, d_model: int = 32, *,
                  n_kv_heads: int | None = None, d_mlp: int | None = None, vocab_size: int = 64,
                  n_ctx: int = 128, **overrides) -> PretrainedConfig:
    """A ``transformers`` config of ``family`` with the given shape (extra keys override config fields)."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    d_mlp = d_mlp or 4 * d_model
    cfg: PretrainedConfig
    if family == "gpt2":
        cfg = GPT2Config(n_layer=n_layers, n_head=n_heads, n_embd=d_model, n_inner=d_mlp, vocab_size=vocab_size,
                         n_positions=n_ctx, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    elif family == "gpt_neox":
        # transformers >= 5 still takes v4's rotary_pct (as partial_rotary_factor), outside its typed signature.
        cfg = GPTNeoXConfig(num_hidden_layers=n_layers, num_attention_heads=n_heads, hidden_size=d_model,
                            intermediate_size=d_mlp, vocab_size=vocab_size, max_position_embeddings=n_ctx,
                            rotary_pct=0.25, use_parallel_residual=True, hidden_dropout=0.0, attention_dropout=0.0,
                            bos_token_id=0, eos_token_id=0)  # type: ignore[call-arg, unused-ignore]
    elif family in ("llama", "qwen2"):
        cls = LlamaConfig if family == "llama" else Qwen2Config
        cfg = cls(num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads or n_heads,
                  hidden_size=d_model, intermediate_size=d_mlp, vocab_size=vocab_size, max_position_embeddings=n_ctx,
                  tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    else:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)} or a preset "
                         f"({', '.join(PRESETS)})")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cfg._attn_implementation = "eager"
    return cfg


def random_model(family_or_preset: str = "gpt2", *, seed: int = 0, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", tokenizer=None, **shape) -> CircuitModel:
    """A freshly initialised model: ``random_model("gpt2-small")`` or ``random_model("llama", n_layers=2)``.

    >>> random_model("gpt2", n_layers=1, n_heads=2, d_model=8).structure.n_edges
    22
    """
    from transformers import AutoModelForCausalLM

    if family_or_preset in PRESETS:
        preset = dict(PRESETS[family_or_preset])
        family = preset.pop("family")
        shape = {**preset, **shape}
        name = f"random:{family_or_preset}"
    else:
        family = family_or_preset
        name = f"random:{family}"
    config = random_config(family, **shape)
    torch.manual_seed(seed)
    with torch.device(device):  # initialised where it runs: an 8B-width model on a GPU needs no CPU copy first
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if tokenizer is None and config.vocab_size == 50257:
        tokenizer = _gpt2_tokenizer_or_none()
    return CircuitModel.from_hf(hf, tokenizer, name=name)


def _gpt2_tokenizer_or_none():
    try:
        from circuits.tasks import default_gpt2_tokenizer
    except ImportError:  # the task package is optional for graph-only use
        return None
    return default_gpt2_tokenizer()


TINY_RANDOM = "tiny-random"  # tiny-random[:FAMILY], a model spec of circuits.load_model


def tiny_random_model(family: str = "gpt2", seed: int = 0, dtype: torch.dtype = torch.float32) -> CircuitModel:
    """``tiny-random[:FAMILY]``: 2 layers, 4 heads, d_model 32, on the tasks' word-level vocabulary (so the
    built-in tasks ioi / greater-than / induction tokenize), random weights: for tests and dry runs."""
    from circuits.tasks import task_vocabulary, word_level_tokenizer

    tok = word_level_tokenizer(task_vocabulary())
    n_kv_heads = 2 if family in ("llama", "qwen2") else None  # None: random_config's default (one per head)
    model = random_model(family, n_layers=2, n_heads=4, d_model=32, vocab_size=len(tok), tokenizer=tok, n_ctx=64,
                         seed=seed, dtype=dtype, n_kv_heads=n_kv_heads)
    model.name = f"{TINY_RANDOM}:{family}"
    return model
