"""`CircuitModel`: a Hugging Face causal LM seen as a graph of senders and receivers.

The Hugging Face model stays the owner of the weights (``model.hf``); this wrapper reads them as views
(:mod:`circuits.models.architectures`) and runs the decomposed forward on them, so a model moved with
``.to(...)`` or trained in place is always the one being analysed.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from circuits.graph.structure import GraphStructure
from circuits.interventions.ablation import Ablated, as_ablated
from circuits.interventions.forward import ForwardResult, decomposed_forward
from circuits.interventions.masked import MaskedResidual, PositionMaskedResidual
from circuits.interventions.residual import PlainResidual, ResidualStrategy
from circuits.models.architectures import TransformerSpec, read_transformer

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel


class CircuitModel:
    """A causal LM whose every edge can be patched.

    >>> from circuits.models.random import random_model
    >>> model = random_model("gpt2", n_layers=2, n_heads=2, d_model=16)
    >>> model.structure.n_edges
    97
    >>> ids = torch.tensor([[1, 2, 3]])
    >>> torch.allclose(model.logits(ids), model.hf(ids).logits, atol=1e-5)
    True

    ``grouped_kv``: the graph has one k and one v receiver per key/value group instead of MIB's one per query
    head (:class:`~circuits.graph.structure.GraphStructure`; the same graph when the model has no grouped-query
    attention). Every run of this model, and every graph discovered on it, then uses grouped receivers.
    """

    def __init__(self, hf_model: PreTrainedModel, tokenizer: Any = None, name: str | None = None, *,
                 grouped_kv: bool = False):
        self.hf = hf_model.eval()
        self.tokenizer = tokenizer
        self._grouped_kv = bool(grouped_kv)
        config = hf_model.config
        self.name: str = name or getattr(config, "name_or_path", None) or str(config.model_type)
        self._spec_key: tuple | None = None
        self._spec: TransformerSpec | None = None
        _ = self.spec  # read once now: an unsupported architecture fails here, not at the first forward

    @classmethod
    def from_hf(cls, hf_model: PreTrainedModel, tokenizer: Any = None, name: str | None = None, *,
                grouped_kv: bool = False) -> CircuitModel:
        """Wrap an already-loaded ``transformers`` causal LM (and its tokenizer, if tasks will be built)."""
        return cls(hf_model, tokenizer, name, grouped_kv=grouped_kv)

    def with_grouped_kv(self, grouped_kv: bool = True) -> CircuitModel:
        """This model (the same weights, not copied) with grouped or per-head (MIB) k/v receivers."""
        if bool(grouped_kv) == self._grouped_kv:
            return self
        return CircuitModel(self.hf, self.tokenizer, self.name, grouped_kv=grouped_kv)

    @property
    def grouped_kv(self) -> bool:
        """The graph has k/v receivers per key/value group (False: per query head, MIB's; always False for a model
        without grouped-query attention, whose groups are its heads)."""
        return self.structure.grouped_kv

    # ---- what the model is ---------------------------------------------------------------------------------
    @property
    def spec(self) -> TransformerSpec:
        """Weight views, re-read whenever the parameters move (``.to``) so they never go stale.

        The views are read without autograd history: interventions differentiate activations and masks, never
        weights, so a backward through the decomposed forward skips every weight-gradient product (half of a
        training backward) whether or not the parameters ``require_grad``."""
        p = self._embedding()
        key = (p.device, p.dtype, p.data_ptr())
        if self._spec is None or key != self._spec_key:
            spec = read_transformer(self.hf)
            if self._grouped_kv:
                spec = dataclasses.replace(spec, grouped_kv=True)
            self._spec, self._spec_key = _detached(spec), key
        return self._spec

    def _embedding(self) -> Tensor:
        weight = self.hf.get_input_embeddings().weight
        assert isinstance(weight, Tensor)
        return weight

    @property
    def structure(self) -> GraphStructure:
        return self.spec.structure

    @property
    def graph(self):
        """The full computational graph (every edge in the circuit, no scores yet)."""
        from circuits.graph.graph import Graph

        return Graph.full(self.structure, metadata={"model": self.name})

    @property
    def device(self) -> torch.device:
        return self._embedding().device

    @property
    def dtype(self) -> torch.dtype:
        return self._embedding().dtype

    @property
    def config(self):
        return self.hf.config

    def to(self, *args, **kwargs) -> "CircuitModel":
        self.hf.to(*args, **kwargs)
        return self

    # ---- running it ----------------------------------------------------------------------------------------
    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
               logit_positions: Tensor | None = None) -> Tensor:
        """``[B, P, V]``: the decomposed forward, equal to ``model.hf(input_ids).logits``
        (``[B, K, V]`` at ``logit_positions [B, K]`` only, when given)."""
        return self.run(input_ids, attention_mask, logit_positions=logit_positions).logits

    def run(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
            residual: ResidualStrategy | None = None, record: bool = False,
            logit_positions: Tensor | None = None, spec: TransformerSpec | None = None) -> ForwardResult:
        """The decomposed forward with one residual strategy (default: the plain model; ``record=True``: the plain
        model recording every sender's output); see :func:`circuits.interventions.forward.decomposed_forward`.
        ``spec``: this model's spec rewritten (a backward rule's, :mod:`circuits.interventions.rules`)."""
        if record and residual is not None:
            raise ValueError("record=True is the plain recorded run; a strategy records itself (record= of its own)")
        input_ids = input_ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        if record:
            residual = PlainResidual(record=True)
        return decomposed_forward(self.spec if spec is None else spec, input_ids, attention_mask, residual=residual,
                                  logit_positions=logit_positions)

    def sender_outputs(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``[S, B, P, d]``: what every sender writes on these inputs (the cache ablations are built from)."""
        outputs = self.run(input_ids, attention_mask, record=True).sender_outputs
        assert outputs is not None
        return outputs

    def patched_logits(self, input_ids: Tensor, masks: Tensor, ablated: Ablated | Tensor,
                       attention_mask: Tensor | None = None, *, logit_positions: Tensor | None = None) -> Tensor:
        """Logits with every edge mixed by ``masks`` (``[S, R]`` or ``[C, S, R]``; position-aware: ``[S, R, P]`` or
        ``[C, S, R, P]``) between this run and ``ablated`` sender outputs; ``[B, P, V]`` or ``[C, B, P, V]``
        (``P`` -> ``K`` with ``logit_positions``)."""
        ablated = as_ablated(ablated).to(self.device)
        s = self.structure
        by_position = masks.dim() >= 3 and tuple(masks.shape[-3:-1]) == (s.n_senders, s.n_receivers)
        residual = (PositionMaskedResidual if by_position else MaskedResidual)(masks.to(self.device), ablated)
        return self.run(input_ids, attention_mask, residual=residual, logit_positions=logit_positions).logits

    def __repr__(self) -> str:
        s = self.structure
        return (f"CircuitModel({self.name!r}, {self.spec.family}, {s.describe()}, d_model={s.d_model}, "
                f"{s.n_nodes} nodes, {s.n_edges:,} edges, {self.dtype}, {self.device})")


def _detached(obj):
    """``obj`` (the spec, its layers, norms, ...) with every tensor field replaced by ``tensor.detach()``: the same
    storage (in-place weight updates stay visible) with no autograd history."""
    import dataclasses

    if isinstance(obj, Tensor):
        return obj.detach()
    if isinstance(obj, list):
        return [_detached(x) for x in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _detached(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                   if isinstance(getattr(obj, f.name), (Tensor, list))
                   or dataclasses.is_dataclass(getattr(obj, f.name))}
        return dataclasses.replace(obj, **changes)
    return obj
