"""A GPT-2-style attention-only transformer as a ``transformers`` model (``model_type = "circuits_attn_only"``).

The architecture of the induction-head literature (Elhage et al. 2021, Olsson et al. 2022): token and learned
position embeddings, ``n_layer`` pre-LayerNorm attention blocks with no MLP, a final LayerNorm and an
unembedding. It is an ordinary ``PreTrainedModel``: ``save_pretrained`` writes ``config.json`` and
``model.safetensors``, and after ``import circuits`` (which registers the classes with ``AutoConfig`` and
``AutoModelForCausalLM``) ``AutoModelForCausalLM.from_pretrained(folder)`` loads it like any hub model.

Weight layout follows GPT-2's ``nn.Linear`` convention in torch's orientation (``[out, in]``):
``attn.q_proj/k_proj/v_proj: [H*e, d]`` (rows head-major: head h owns rows ``h*e:(h+1)*e``), ``attn.o_proj:
[d, H*e]`` (columns head-major). The head dimension ``e`` is ``head_dim`` when given, else ``d_model // n_head``
(configs written before ``head_dim`` existed load with the latter). ``ln_eps`` is the LayerNorm epsilon of every
norm (planted models set it large, which makes LayerNorm an almost exactly linear map; see
``circuits.zoo.planted``).

>>> cfg = AttnOnlyConfig(vocab_size=16, n_layer=2, n_head=2, d_model=8, n_ctx=12)
>>> model = AttnOnlyForCausalLM(cfg)
>>> model(torch.tensor([[1, 2, 3]])).logits.shape
torch.Size([1, 3, 16])
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

MODEL_TYPE = "circuits_attn_only"


class AttnOnlyConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, vocab_size: int = 512, n_layer: int = 2, n_head: int = 4, d_model: int = 128,
                 n_ctx: int = 128, ln_eps: float = 1e-5, attn_bias: bool = True, initializer_range: float = 0.02,
                 tie_word_embeddings: bool = False, head_dim: int | None = None, **kwargs):
        self.vocab_size = vocab_size
        self.n_layer = n_layer
        self.n_head = n_head
        self.d_model = d_model
        self.n_ctx = n_ctx
        self.ln_eps = ln_eps
        self.attn_bias = attn_bias
        self.initializer_range = initializer_range
        if head_dim is None and d_model % n_head:
            raise ValueError(f"d_model={d_model} must be divisible by n_head={n_head} (or set head_dim)")
        self.head_dim = head_dim if head_dim is not None else d_model // n_head
        # transformers >= 5 takes tie_word_embeddings at runtime but not in PreTrainedConfig's typed signature.
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)  # type: ignore[call-arg, unused-ignore]

    # the names generic code (and the task package) looks for
    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def num_attention_heads(self) -> int:
        return self.n_head

    @property
    def max_position_embeddings(self) -> int:
        return self.n_ctx


class AttnOnlyAttention(nn.Module):
    def __init__(self, cfg: AttnOnlyConfig):
        super().__init__()
        d, self.n_head = cfg.d_model, cfg.n_head
        self.head_dim = cfg.head_dim
        inner = self.n_head * self.head_dim
        self.q_proj = nn.Linear(d, inner, bias=cfg.attn_bias)
        self.k_proj = nn.Linear(d, inner, bias=cfg.attn_bias)
        self.v_proj = nn.Linear(d, inner, bias=cfg.attn_bias)
        self.o_proj = nn.Linear(inner, d, bias=cfg.attn_bias)
        self.scale = self.head_dim ** -0.5

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, output_attentions: bool = False):
        B, P, d = x.shape
        H, e = self.n_head, self.head_dim
        q, k, v = (proj(x).view(B, P, H, e).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # [B, H, P, P]
        scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
        pattern = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
        z = torch.matmul(pattern, v).transpose(1, 2).reshape(B, P, H * e)
        return self.o_proj(z), (pattern if output_attentions else None)


class AttnOnlyBlock(nn.Module):
    def __init__(self, cfg: AttnOnlyConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.attn = AttnOnlyAttention(cfg)

    def forward(self, x, allowed, output_attentions=False):
        out, pattern = self.attn(self.ln_1(x), allowed, output_attentions)
        return x + out, pattern


class AttnOnlyPreTrainedModel(PreTrainedModel):
    config_class = AttnOnlyConfig
    base_model_prefix = "attn_only"
    _supports_attention_backend = False

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class AttnOnlyForCausalLM(AttnOnlyPreTrainedModel):
    """Embeddings, ``n_layer`` attention-only blocks, final LayerNorm, unembedding (with bias)."""

    def __init__(self, config: AttnOnlyConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.n_ctx, config.d_model)
        self.blocks = nn.ModuleList(AttnOnlyBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.ln_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=True)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    # transformers types the argument as any Module; the token lookup here needs an nn.Embedding.
    def set_input_embeddings(self, value: nn.Embedding) -> None:  # type: ignore[override]
        self.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_attentions: bool = False, return_dict: bool | None = None, **kwargs) -> CausalLMOutput:
        B, P = input_ids.shape
        if P > self.config.n_ctx:
            raise ValueError(f"sequence length {P} exceeds the model's context of {self.config.n_ctx}")
        device = input_ids.device
        if position_ids is None:  # count real tokens only, so left padding does not shift positions
            position_ids = (torch.arange(P, device=device).expand(B, P) if attention_mask is None
                            else (attention_mask.long().cumsum(-1) - 1).clamp(min=0))
        idx = torch.arange(P, device=device)
        allowed = (idx[None, :] <= idx[:, None])[None].expand(B, P, P)
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, :]
        x = self.wte(input_ids) + self.wpe(position_ids)
        patterns = []
        for block in self.blocks:
            x, pattern = block(x, allowed, output_attentions)
            patterns.append(pattern)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                               ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits,
                              attentions=tuple(patterns) if output_attentions else None)


def register() -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` know ``circuits_attn_only`` (idempotent)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        AutoConfig.register(MODEL_TYPE, AttnOnlyConfig)
    except ValueError:  # already registered
        pass
    try:
        AutoModelForCausalLM.register(AttnOnlyConfig, AttnOnlyForCausalLM)
    except ValueError:
        pass


register()
