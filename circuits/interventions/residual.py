"""What each receiver reads from the residual stream: the one interface the decomposed forward talks to.

The forward (:mod:`circuits.interventions.forward`) embeds the tokens, then layer by layer asks its strategy
which heads and MLP to compute, what their receivers read, and hands back what they wrote; it knows nothing
else. Four strategies answer:

* :class:`PlainResidual` - the ordinary model (every receiver reads the running sum), optionally recording
  every sender's output (the cache ablations are built from);
* :class:`~circuits.interventions.probe.GradientProbe` - the plain model whose backward pass scores every
  receiver's input gradient against sender differences (attribution patching);
* :class:`~circuits.interventions.masked.MaskedResidual` - DESIGN.md's edge intervention for C circuits at once;
* :class:`~circuits.interventions.masked.IncrementalResidual` - the same, recomputing only the nodes whose
  inputs differ from a circuit whose outputs are held (ACDC's candidates, exact patching).

Every precondition of a strategy is checked when it is built, so no combination of arguments gives wrong numbers.
Attention output biases belong to no head: they are a constant of the stream, added after their layer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from circuits.graph.structure import GraphStructure
    from circuits.models.architectures import Attention, Mlp, Norm

Receivers = slice | int | list[int]


class ResidualStrategy(ABC):
    """How one forward mixes and reads the residual stream (see the module docstring).

    A strategy serves one forward: :meth:`begin` is called once with the input embedding ``[B, P, d]``, then per
    layer :meth:`heads` / :meth:`computes_mlp`, :meth:`read`, :meth:`write_heads`, :meth:`write_mlp`, and at the
    end :meth:`read` of the logits receiver and :meth:`recorded`.
    """

    #: Circuits run at once: the forward's rows are ``n_circuits * B``.
    n_circuits: int = 1
    #: The logits get a leading circuit axis ``[C, B, K, V]`` (masks were given as ``[C, S, R]``).
    circuit_axis: bool = False
    #: Heads are written one by one (``[h, N, P, d]``); otherwise their sum ``[1, N, P, d]`` suffices.
    per_head: bool = True
    #: Outputs are needed at every position (recorded or differentiated), not only where the logits are read.
    keeps_every_position: bool = False

    def begin(self, first: Tensor, structure: GraphStructure) -> Tensor:
        """Start the run from the ``input`` sender's output ``[B, P, d]``; returns the embedding to use."""
        self.structure = structure
        return first

    def heads(self, layer: int) -> list[int]:
        """The heads of ``layer`` this run computes (the others' outputs are not needed, or are held)."""
        return list(range(self.structure.n_heads))

    def computes_mlp(self, layer: int) -> bool:
        return self.structure.has_mlp

    @abstractmethod
    def read(self, receivers: Receivers, then: int | None = None) -> Tensor:
        """``[R | 1, N, P, d]``: what ``receivers`` read (``1``: one stream shared by all). ``then``: the receiver
        read next (a layer's MLP after its heads), whose mix may begin in the same pass."""

    def mlp(self, layer: int, mlp: Mlp, x: Tensor) -> Tensor:
        """``layer``'s MLP output ``[1, N, P, d]`` from its normalised input ``x``: the MLP itself, or, for strategies
        that intervene on its hidden neurons (:mod:`circuits.interventions.neurons`), a mix of them."""
        return mlp(x)

    def project_qkv(self, x: Tensor, attn: Attention, norm: Norm) -> tuple[Tensor, Tensor, Tensor] | None:
        """The heads' q, k, v from ``x``, when the strategy makes them itself (attribution); else None."""
        return None

    @abstractmethod
    def write_heads(self, layer: int, heads: list[int], outputs: Tensor | None) -> None:
        """The outputs of ``layer``'s computed ``heads`` (``[h, N, P, d]``, or their sum ``[1, N, P, d]`` when
        not :attr:`per_head`; None when no head was computed)."""

    @abstractmethod
    def write_mlp(self, layer: int, output: Tensor | None) -> None:
        """``[1, N, P, d]``, or None when :meth:`computes_mlp` said no."""

    @abstractmethod
    def add_constant(self, bias: Tensor) -> None:
        """A bias every receiver downstream reads, whatever the masks."""

    def recorded(self) -> Tensor | None:
        """``[S, B, P, d]``: every sender's output, for strategies that record; else None."""
        return None


class PlainResidual(ResidualStrategy):
    """The unmodified residual stream; with ``record``, every sender's output in sender order."""

    def __init__(self, record: bool = False):
        self.record = record
        self.per_head = record
        self.keeps_every_position = record
        self._outputs: list[Tensor] = []

    def begin(self, first: Tensor, structure: GraphStructure) -> Tensor:
        super().begin(first, structure)
        self.stream = first  # [N, P, d]
        if self.record:
            self._outputs.append(first[None])
        return first

    def read(self, receivers: Receivers, then: int | None = None) -> Tensor:
        return self.stream[None]

    def _write(self, outputs: Tensor) -> None:  # [k, N, P, d]
        self.stream = self.stream + outputs.sum(0)
        if self.record:
            self._outputs.append(outputs)

    def write_heads(self, layer: int, heads: list[int], outputs: Tensor | None) -> None:
        assert outputs is not None, "this stream computes every head"
        self._write(outputs)

    def write_mlp(self, layer: int, output: Tensor | None) -> None:
        assert output is not None, "this stream computes every MLP"
        self._write(output)

    def add_constant(self, bias: Tensor) -> None:
        self.stream = self.stream + bias

    def recorded(self) -> Tensor | None:
        return torch.cat(self._outputs) if self.record else None
