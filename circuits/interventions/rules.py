"""Backward rules: what attribution's backward pass propagates through a transformer's nonlinearities.

EAP multiplies sender differences by gradients. Gradients through LayerNorm, the attention softmax and the MLP
activations are noisy or saturated, and two methods replace them while keeping EAP's cost (one backward):

* **GIM** (Edin et al. 2025, arXiv 2505.17630; defaults of the authors' ``gim`` package): norm statistics frozen
  (constants of the backward), the softmax differentiated at temperature ``T = 2`` (its backward computed at
  ``scores / T``, the forward unchanged), and the gradients of q, k, v scaled by 1/4, 1/4, 1/2 (and of a gated
  MLP's two factors by 1/2 each).
* **RelP** (Rezaei Jafari et al. 2025, arXiv 2508.21258): LRP propagation coefficients in place of gradients:
  the LN-rule (norm scale frozen), the identity rule through elementwise activations (``act(x) / x``: the
  activation treated as the linear map it applies at ``x``), the half rule for products (a gated MLP's two
  factors each get half), and optionally the AH-rule for attention (``attention="ah"``: attention patterns
  frozen). The default keeps the softmax gradient: on the bundled planted models the AH-rule ranked the planted
  circuit worse (AUROC 0.75 / 0.61 against 1.0), because the planted circuits are routed by attention.

A rule rewrites the model's :class:`~circuits.models.architectures.TransformerSpec` (:meth:`BackwardRule.apply`):
every norm, softmax and activation is swapped for one with the same forward and the rule's backward, so the
decomposed forward runs unchanged; the gradient probe (:mod:`circuits.interventions.probe`) applies the q/k/v
scales and the frozen norm to the q/k/v receivers it scores itself. With every modification switched off a rule
is exactly the gradient (tested to 1e-6).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from circuits.errors import CircuitsError

if TYPE_CHECKING:  # pragma: no cover
    from circuits.models.architectures import TransformerSpec

RULES = ("gradient", "gim", "relp")
ATTENTION_RULES = ("gradient", "ah")


class RuleError(CircuitsError, ValueError):
    """A backward rule that does not exist or whose settings cannot work: names the setting and the choices."""


@dataclass(frozen=True)
class BackwardRule:
    """One set of backward modifications (module docstring). The defaults are the plain gradient."""

    name: str = "gradient"
    freeze_norm: bool = False  # norm statistics (1/sigma, 1/rms) are constants of the backward (GIM, RelP LN-rule)
    softmax_temperature: float = 1.0  # GIM: the softmax's backward taken at scores / T
    freeze_attention: bool = False  # RelP AH-rule: attention patterns are constants of the backward
    qkv_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)  # GIM: gradient multipliers of q, k, v
    identity_activation: bool = False  # RelP identity rule: d act(x) -> act(x) / x
    product_scale: float = 1.0  # gated MLPs: gradient multiplier of each factor of act(gate) * up (half rule 0.5)

    def __post_init__(self) -> None:
        if not self.softmax_temperature > 0:
            raise RuleError(f"softmax_temperature must be positive, got {self.softmax_temperature}")
        if len(self.qkv_scale) != 3:
            raise RuleError(f"qkv_scale is (q, k, v), got {self.qkv_scale!r}")

    @property
    def is_gradient(self) -> bool:
        """True when nothing is modified (the rule is the plain gradient)."""
        return self == dataclasses.replace(BackwardRule(), name=self.name)

    def apply(self, spec: TransformerSpec) -> TransformerSpec:
        """``spec`` with every norm, softmax and activation swapped for one with this rule's backward (the
        forward is the same function). The q/k/v receivers' norm and scales are applied by the gradient probe."""
        def norm(n: Any) -> Any:
            return None if n is None else FrozenNorm(n) if self.freeze_norm else n

        layers = []
        for layer in spec.layers:
            attn = dataclasses.replace(layer.attn, softmax=self._softmax)
            mlp = layer.mlp
            if mlp is not None:
                act = _IdentityRuleActivation(mlp.act) if self.identity_activation else mlp.act
                mlp = dataclasses.replace(mlp, act=act, product_scale=self.product_scale)
            layers.append(dataclasses.replace(layer, attn_norm=norm(layer.attn_norm), attn=attn,
                                              mlp_norm=norm(layer.mlp_norm), mlp=mlp))
        out = dataclasses.replace(spec, layers=layers, final_norm=norm(spec.final_norm))
        out.__dict__["structure"] = spec.structure  # the same graph: keep the cached structure
        return out

    def _softmax(self, scores: Tensor) -> Tensor:  # [H, N, P, P] -> the pattern, in at least fp32
        x = scores.to(torch.promote_types(scores.dtype, torch.float32))
        if self.freeze_attention:
            return torch.softmax(x, dim=-1).detach()
        return _TemperatureSoftmax.apply(x, float(self.softmax_temperature))


def gim(softmax_temperature: float = 2.0, freeze_norm: bool = True,
        qkv_scale: tuple[float, float, float] = (0.25, 0.25, 0.5), product_scale: float = 0.5) -> BackwardRule:
    """GIM's modifications, at the defaults of the authors' package (module docstring)."""
    return BackwardRule("gim", freeze_norm=freeze_norm, softmax_temperature=softmax_temperature,
                        qkv_scale=tuple(qkv_scale), product_scale=product_scale)  # type: ignore[arg-type]


def relp(attention: str = "gradient", freeze_norm: bool = True, identity_activation: bool = True,
         product_scale: float = 0.5) -> BackwardRule:
    """RelP's LRP rules: LN-rule, identity rule, half rule; ``attention="ah"`` adds the AH-rule."""
    if attention not in ATTENTION_RULES:
        raise RuleError(f"attention must be one of {', '.join(ATTENTION_RULES)} (the AH-rule), got {attention!r}")
    return BackwardRule("relp", freeze_norm=freeze_norm, freeze_attention=attention == "ah",
                        identity_activation=identity_activation, product_scale=product_scale)


def resolve_rule(rule: str | BackwardRule | None) -> BackwardRule | None:
    """A rule by name (``"gradient"``: None, the plain backward) or as given."""
    if rule is None or isinstance(rule, BackwardRule):
        return None if rule is None or rule.is_gradient and rule.name == "gradient" else rule
    key = str(rule).strip().lower()
    if key == "gradient":
        return None
    if key == "gim":
        return gim()
    if key == "relp":
        return relp()
    raise RuleError(f"unknown backward rule {rule!r}; use one of {', '.join(RULES)}")


class FrozenNorm:
    """A norm whose statistics are constants of the backward (GIM's norm freezing, RelP's LN-rule): the forward
    is the norm's; the backward is ``w / sigma`` times the centred gradient (LayerNorm) or ``w / rms`` (RMSNorm)."""

    frozen = True

    def __init__(self, norm: Any):
        self.norm = norm
        self.kind, self.weight, self.bias, self.eps = norm.kind, norm.weight, norm.bias, norm.eps

    def __call__(self, x: Tensor) -> Tensor:  # [..., d] -> [..., d]
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        if self.kind == "layernorm":
            centred = xf - xf.mean(-1, keepdim=True)
            inv = torch.rsqrt(centred.detach().pow(2).mean(-1, keepdim=True) + self.eps)
            out = centred * inv * self.weight
            return (out if self.bias is None else out + self.bias).to(x.dtype)
        inv = torch.rsqrt(xf.detach().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (xf * inv).to(x.dtype)


class _TemperatureSoftmax(torch.autograd.Function):
    """``softmax(x)`` forward; backward of ``softmax(x / T)`` (GIM); T = 1 is the softmax's own backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, temperature: float) -> Tensor:
        out = torch.softmax(x, dim=-1)
        ctx.temperature = temperature
        ctx.save_for_backward(out if temperature == 1.0 else x)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (saved,) = ctx.saved_tensors
        s = saved if ctx.temperature == 1.0 else torch.softmax(saved / ctx.temperature, dim=-1)
        return s * (grad - (grad * s).sum(-1, keepdim=True)), None


class _IdentityRuleActivation:
    """``act(x)`` forward; backward ``act(x) / x`` (RelP's identity rule; ``act'(0)`` is taken as 1/2, the slope
    of GELU and SiLU at 0)."""

    def __init__(self, act: Callable[[Tensor], Tensor]):
        self.act = act

    def __call__(self, x: Tensor) -> Tensor:
        y = self.act(x)
        with torch.no_grad():
            safe = x.abs() > 1e-6
            ratio = torch.where(safe, y / torch.where(safe, x, torch.ones_like(x)), torch.full_like(x, 0.5))
        return y.detach() + (x - x.detach()) * ratio if x.requires_grad else y
