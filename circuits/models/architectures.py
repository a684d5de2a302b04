"""Read a Hugging Face causal LM into one architecture-neutral description of its weights.

Each supported family (GPT-2, GPT-NeoX/Pythia, Llama/Qwen2/Mistral) differs only in how its weights are
laid out and in a few switches (norm kind, rotary, parallel blocks, gated MLP). Reading them into
:class:`TransformerSpec` once lets a single decomposed forward (``circuits.interventions``) serve all of
them. Every weight is a *view* of the Hugging Face parameter, never a copy: an 8B model stays 8B.

Weight layouts (H query heads, G key/value groups, d model width, e head width):
``W_Q [H, d, e]``, ``W_K / W_V [G, d, e]``, ``W_O [H, e, d]``. Grouped-query attention keeps ``G < H``
weights; the forward computes each query head's k/v from that head's own input with its group's weight (MIB's
per-head receivers), or, with ``grouped_kv``, each group's k/v once from the group's own input.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from circuits.errors import CircuitsError
from circuits.graph.structure import GraphStructure


class UnsupportedArchitectureError(CircuitsError, ValueError):
    """The model's architecture has no decomposed forward here."""


@dataclass(frozen=True)
class Norm:
    """LayerNorm or RMSNorm over the last dimension, applied to any number of stacked receiver inputs."""

    kind: str  # "layernorm" | "rmsnorm"
    weight: Tensor  # [d]
    bias: Tensor | None
    eps: float

    def __call__(self, x: Tensor) -> Tensor:  # [..., d] -> [..., d]
        if self.kind == "layernorm":
            return nn.functional.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        # As Llama's RMSNorm: normalize in (at least) fp32, cast back, then scale.
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


@dataclass(frozen=True)
class Attention:
    """One attention layer, split per head."""

    W_Q: Tensor  # [H, d, e]
    W_K: Tensor  # [G, d, e]
    W_V: Tensor  # [G, d, e]
    W_O: Tensor  # [H, e, d]
    b_Q: Tensor | None  # [H, e]
    b_K: Tensor | None  # [G, e]
    b_V: Tensor | None  # [G, e]
    b_O: Tensor | None  # [d]: not any one head's output, so it is a constant of the residual stream
    scale: float
    rotary: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None  # (x, position_ids) -> cos, sin [N, P, r]
    # scores [H, N, P, P] -> pattern: a backward rule's softmax (circuits.interventions.rules); None: the softmax
    softmax: Callable[[Tensor], Tensor] | None = None
    # [H] long: each query head's row of W_K / W_V, for a subset of heads of grouped k/v receivers
    # (circuits.interventions.attention.head_subset); None: head h uses row h // (H / G)
    kv_of_head: Tensor | None = None

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_kv_heads(self) -> int:
        return self.W_K.shape[0]


@dataclass(frozen=True)
class Mlp:
    """A dense MLP: ``W_out act(W_in x + b_in) (* (W_gate x) when gated) + b_out``."""

    W_in: Tensor  # [d, m]
    b_in: Tensor | None
    W_out: Tensor  # [m, d]
    b_out: Tensor | None
    act: Callable[[Tensor], Tensor]
    W_gate: Tensor | None = None  # [d, m]: SwiGLU's gate, the one passed through act (Llama's gate_proj)
    b_gate: Tensor | None = None
    product_scale: float = 1.0  # a backward rule's gradient multiplier of each factor of the gated product

    @property
    def d_hidden(self) -> int:
        """``m``: the hidden neurons, the units of neuron-level circuits (:mod:`circuits.interventions.neurons`)."""
        return self.W_out.shape[0]

    def __call__(self, x: Tensor) -> Tensor:  # [..., d] -> [..., d]
        return self.project(self.hidden(x))

    def hidden(self, x: Tensor) -> Tensor:  # [..., d] -> [..., m]
        """The hidden neurons' activations: ``act(W_in x + b_in)``, or ``act(W_gate x) * (W_in x)`` when gated."""
        if self.W_gate is None:
            return self.act(_linear(x, self.W_in, self.b_in))
        gate, up = self.act(_linear(x, self.W_gate, self.b_gate)), _linear(x, self.W_in, self.b_in)
        if self.product_scale != 1.0:  # the forward is unchanged; each factor's gradient is scaled
            gate = _scale_grad(gate, self.product_scale)
            up = _scale_grad(up, self.product_scale)
        return gate * up

    def project(self, h: Tensor) -> Tensor:  # [..., m] -> [..., d]
        """The MLP's output from its hidden activations: ``W_out h + b_out``."""
        return _linear(h, self.W_out, self.b_out)


def _scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x`` whose gradient is multiplied by ``scale``."""
    return x.detach() + (x - x.detach()) * scale if x.requires_grad else x


def _linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``x @ w + b`` with ``w`` stored [in, out] (possibly a transposed view of an nn.Linear weight); one fused
    matmul-and-bias."""
    return F.linear(x, w.T, b)


@dataclass(frozen=True)
class Layer:
    attn_norm: Norm
    attn: Attention
    mlp_norm: Norm | None  # None in attention-only models
    mlp: Mlp | None


@dataclass(frozen=True)
class TransformerSpec:
    """Everything the decomposed forward needs, read from one Hugging Face model."""

    family: str
    token_embed: Tensor  # [V, d]
    pos_embed: Tensor | None  # [n_ctx, d] (learned absolute positions, GPT-2 only)
    layers: list[Layer]
    final_norm: Norm
    W_U: Tensor  # [d, V]
    b_U: Tensor | None
    parallel_attn_mlp: bool
    max_positions: int | None
    sliding_window: int | None = None
    grouped_kv: bool = False  # one k and one v receiver per key/value group (GraphStructure.grouped_kv)

    @property
    def d_model(self) -> int:
        return self.token_embed.shape[1]

    @cached_property
    def structure(self) -> GraphStructure:
        attn = self.layers[0].attn
        return GraphStructure(n_layers=len(self.layers), n_heads=attn.n_heads, n_kv_heads=attn.n_kv_heads,
                              parallel_attn_mlp=self.parallel_attn_mlp, d_model=self.d_model,
                              has_mlp=self.layers[0].mlp is not None, grouped_kv=self.grouped_kv)


# Hugging Face's ``gelu_new`` is six elementwise passes over the MLP's hidden activations; torch's tanh-approximate
# GELU is the same formula in one fused kernel (equal to float rounding), a third of a small model's MLP time.
_TANH_GELU = partial(F.gelu, approximate="tanh")
_FUSED_ACTS = {"gelu_new": _TANH_GELU, "gelu_pytorch_tanh": _TANH_GELU}


def _act(config: Any, name_attr: str) -> Callable[[Tensor], Tensor]:
    from transformers.activations import ACT2FN

    name = getattr(config, name_attr)
    return _FUSED_ACTS.get(name) or ACT2FN[name]


# The readers walk each family's module tree by attribute name (``hf.transformer.h[i].attn.c_attn``), which
# torch types as ``Tensor | Module`` at every step; they take the model as ``Any`` for that reason.


# ---- GPT-2 -------------------------------------------------------------------------------------------------
def _read_gpt2(hf: Any) -> TransformerSpec:
    cfg = hf.config
    if getattr(cfg, "add_cross_attention", False):
        raise UnsupportedArchitectureError("GPT-2 with cross-attention is an encoder-decoder; use a causal LM")
    body = hf.transformer
    H, d = cfg.n_head, cfg.n_embd
    e = d // H
    layers = []
    for i, block in enumerate(body.h):
        w = block.attn.c_attn.weight  # Conv1D: [d, 3d], columns q | k | v, each head-major
        b = block.attn.c_attn.bias
        Wq, Wk, Wv = (w[:, j * d:(j + 1) * d].view(d, H, e).permute(1, 0, 2) for j in range(3))
        bq, bk, bv = (b[j * d:(j + 1) * d].view(H, e) for j in range(3))
        scale = e ** -0.5 if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= float(i + 1)
        attn = Attention(Wq, Wk, Wv, block.attn.c_proj.weight.view(H, e, d), bq, bk, bv,
                         block.attn.c_proj.bias, scale, rotary=None)
        mlp = Mlp(block.mlp.c_fc.weight, block.mlp.c_fc.bias, block.mlp.c_proj.weight, block.mlp.c_proj.bias,
                  _act(cfg, "activation_function"))
        layers.append(Layer(_layernorm(block.ln_1), attn, _layernorm(block.ln_2), mlp))
    return TransformerSpec("gpt2", body.wte.weight, body.wpe.weight, layers, _layernorm(body.ln_f),
                           *_unembed(hf), parallel_attn_mlp=False,
                           max_positions=cfg.n_positions)


def _output_embeddings(hf: Any) -> Any:
    return hf.get_output_embeddings()  # lm_head / embed_out, whatever this transformers version calls it


def _unembed(hf: Any) -> tuple[Tensor, Tensor | None]:
    head = _output_embeddings(hf)
    return head.weight.T, getattr(head, "bias", None)


def _layernorm(ln: nn.LayerNorm) -> Norm:
    return Norm("layernorm", ln.weight, ln.bias, ln.eps)


def _rmsnorm(norm: Any) -> Norm:
    eps = getattr(norm, "variance_epsilon", None) or norm.eps
    return Norm("rmsnorm", norm.weight, None, eps)


# ---- GPT-NeoX (Pythia) ---------------------------------------------------------------------------------------
def _read_gpt_neox(hf: Any) -> TransformerSpec:
    cfg = hf.config
    body = hf.gpt_neox
    H, d = cfg.num_attention_heads, cfg.hidden_size
    e = d // H
    rotary = _bind_rotary(body.rotary_emb)
    layers = []
    for block in body.layers:
        a = block.attention
        # query_key_value: nn.Linear [3d, d]; output rows grouped per head as (q, k, v) of width e each.
        w = a.query_key_value.weight.view(H, 3, e, d)
        b = a.query_key_value.bias.view(H, 3, e) if a.query_key_value.bias is not None else None
        Wq, Wk, Wv = (w[:, j].transpose(1, 2) for j in range(3))  # [H, d, e]
        bq, bk, bv = (b[:, j] for j in range(3)) if b is not None else (None, None, None)
        W_O = a.dense.weight.T.reshape(H, e, d)
        attn = Attention(Wq, Wk, Wv, W_O, bq, bk, bv, a.dense.bias, a.scaling, rotary)
        m = block.mlp
        mlp = Mlp(m.dense_h_to_4h.weight.T, m.dense_h_to_4h.bias, m.dense_4h_to_h.weight.T, m.dense_4h_to_h.bias,
                  _act(cfg, "hidden_act"))
        layers.append(Layer(_layernorm(block.input_layernorm), attn, _layernorm(block.post_attention_layernorm),
                            mlp))
    return TransformerSpec("gpt_neox", body.embed_in.weight, None, layers, _layernorm(body.final_layer_norm),
                           *_unembed(hf), parallel_attn_mlp=bool(cfg.use_parallel_residual),
                           max_positions=cfg.max_position_embeddings)


# ---- Llama family (Llama, Qwen2, Mistral) ---------------------------------------------------------------------
def _read_llama(hf: Any) -> TransformerSpec:
    cfg = hf.config
    body = hf.model
    H, G, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
    e = getattr(cfg, "head_dim", None) or d // H
    rotary = _bind_rotary(body.rotary_emb)
    layers = []
    for block in body.layers:
        a = block.self_attn
        if hasattr(a, "q_norm") or hasattr(a, "k_norm"):
            raise UnsupportedArchitectureError(
                f"{cfg.model_type}: per-head q/k norms are not supported yet (Qwen3, OLMo2); use Llama/Qwen2")
        Wq = a.q_proj.weight.view(H, e, d).transpose(1, 2)
        Wk = a.k_proj.weight.view(G, e, d).transpose(1, 2)
        Wv = a.v_proj.weight.view(G, e, d).transpose(1, 2)
        bias = lambda lin, n: lin.bias.view(n, e) if lin.bias is not None else None  # noqa: E731
        W_O = a.o_proj.weight.T.reshape(H, e, d)
        attn = Attention(Wq, Wk, Wv, W_O, bias(a.q_proj, H), bias(a.k_proj, G), bias(a.v_proj, G), a.o_proj.bias,
                         a.scaling, rotary)
        m = block.mlp
        mlp = Mlp(m.up_proj.weight.T, m.up_proj.bias, m.down_proj.weight.T, m.down_proj.bias, m.act_fn,
                  W_gate=m.gate_proj.weight.T, b_gate=m.gate_proj.bias)
        layers.append(Layer(_rmsnorm(block.input_layernorm), attn, _rmsnorm(block.post_attention_layernorm), mlp))
    window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    return TransformerSpec(cfg.model_type, body.embed_tokens.weight, None, layers, _rmsnorm(body.norm),
                           *_unembed(hf), parallel_attn_mlp=False,
                           max_positions=cfg.max_position_embeddings, sliding_window=window)


def _bind_rotary(rotary_emb: nn.Module) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Use the model's own rotary module, so every RoPE variant (Llama-3 scaling, YaRN, partial) matches HF."""

    def cos_sin(x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        return rotary_emb(x, position_ids)

    return cos_sin


# ---- circuits' own attention-only model (circuits.models.attn_only) ---------------------------------------
def _read_attn_only(hf: Any) -> TransformerSpec:
    cfg = hf.config
    H, d = cfg.n_head, cfg.d_model
    e = getattr(cfg, "head_dim", None) or d // H
    layers = []
    for block in hf.blocks:
        a = block.attn
        Wq, Wk, Wv = (lin.weight.view(H, e, d).transpose(1, 2) for lin in (a.q_proj, a.k_proj, a.v_proj))
        bias = lambda lin: lin.bias.view(H, e) if lin.bias is not None else None  # noqa: E731
        attn = Attention(Wq, Wk, Wv, a.o_proj.weight.T.reshape(H, e, d), bias(a.q_proj), bias(a.k_proj),
                         bias(a.v_proj), a.o_proj.bias, a.scale, rotary=None)
        layers.append(Layer(_layernorm(block.ln_1), attn, None, None))
    return TransformerSpec("circuits_attn_only", hf.wte.weight, hf.wpe.weight, layers, _layernorm(hf.ln_f),
                           *_unembed(hf), parallel_attn_mlp=False, max_positions=cfg.n_ctx)


READERS: dict[str, Callable[[nn.Module], TransformerSpec]] = {
    "circuits_attn_only": _read_attn_only,
    "gpt2": _read_gpt2,
    "gpt_neox": _read_gpt_neox,
    "llama": _read_llama,
    "qwen2": _read_llama,
    "mistral": _read_llama,
}


def read_transformer(hf: nn.Module) -> TransformerSpec:
    """Describe a Hugging Face causal LM as a :class:`TransformerSpec` (views of its weights)."""
    model_type = getattr(getattr(hf, "config", None), "model_type", None)
    if model_type not in READERS:
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} is not supported; supported: {', '.join(sorted(READERS))}. "
            "Use a GPT-2, GPT-NeoX (Pythia) or Llama-family (Llama, Qwen2, Mistral) causal LM, or open an issue "
            "asking for this architecture.")
    if _output_embeddings(hf) is None:
        raise UnsupportedArchitectureError(
            f"{type(hf).__name__} has no language-model head; load it with AutoModelForCausalLM")
    return READERS[model_type](hf)
