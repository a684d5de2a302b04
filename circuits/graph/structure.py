"""The shape of a model's computational graph: which nodes exist and which sender feeds which receiver.

Names follow MIB / EAP-IG exactly, so graph files compare across tools:

* senders (nodes that write to the residual stream): ``input``, ``a{l}.h{h}``, ``m{l}``;
* receivers (places that read it): ``a{l}.h{h}<q>``, ``<k>``, ``<v>``, ``m{l}``, ``logits``;
* an edge is ``"{sender}->{receiver}"``.

Everything is an index into two fixed orders (senders, receivers) so scores and masks can live in one
dense ``[n_senders, n_receivers]`` tensor; names are views computed from indices. Because a receiver reads
every sender written before it, the senders a receiver can see are always a *prefix* of the sender order:
``n_upstream[r]`` is all the structure there is.

Parallel blocks (GPT-NeoX / Pythia with ``use_parallel_residual``): attention and MLP of one layer both read
the residual stream as it was *before* that layer, so ``a{l}.h{h}`` does **not** feed ``m{l}``; it feeds
layer ``l + 1`` onward. In sequential blocks (GPT-2, Llama, Qwen2) it does.

Attention-only models (``has_mlp=False``: the induction and docstring models of the literature) have no
``m{l}`` nodes at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import torch

from circuits.errors import CircuitsError

QKV = ("q", "k", "v")


class GraphMismatchError(CircuitsError, ValueError):
    """A graph file made for a model of another shape than the one it is being loaded with."""


@dataclass(frozen=True)
class Node:
    """One node of the graph as MIB names it (the q/k/v inputs are receivers, not nodes)."""

    name: str
    kind: str  # "input" | "head" | "mlp" | "logits"
    layer: int  # -1 for input, n_layers for logits
    head: int | None = None


@dataclass(frozen=True)
class Receiver:
    """A place that reads the residual stream: one of a head's q/k/v inputs, an MLP input, or the logits."""

    name: str
    kind: str  # "qkv" | "mlp" | "logits"
    layer: int
    head: int | None = None
    qkv: str | None = None

    @property
    def node(self) -> str:
        """The node this receiver belongs to (``a3.h2<k>`` -> ``a3.h2``)."""
        return self.name.split("<")[0]


@dataclass(frozen=True)
class StructureTensors:
    """A structure's index tensors on one device (see :meth:`GraphStructure.on`)."""

    edge_mask: torch.Tensor  # [n_senders, n_receivers] bool
    edge_order: torch.Tensor  # [n_edges, 2] long, MIB file order
    receiver_node: torch.Tensor  # [n_receivers] long


@dataclass(frozen=True)
class GraphStructure:
    """The node and edge layout of one model shape, in MIB's convention.

    >>> s = GraphStructure(n_layers=12, n_heads=12)
    >>> s.n_nodes, s.n_edges
    (158, 32491)
    >>> s.edge_name(s.sender_index("a0.h1"), s.receiver_index("m0"))
    'a0.h1->m0'
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    parallel_attn_mlp: bool = False
    d_model: int | None = None
    has_mlp: bool = True

    def __post_init__(self) -> None:
        kv = self.n_heads if self.n_kv_heads is None else self.n_kv_heads
        object.__setattr__(self, "n_kv_heads", kv)
        if self.n_layers < 1 or self.n_heads < 1:
            raise ValueError(f"a graph needs at least one layer and one head, got {self.n_layers=} {self.n_heads=}")
        if self.n_heads % kv:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")

    # ---- sizes -------------------------------------------------------------------------------------------
    @property
    def _m(self) -> int:  # MLPs per layer: 1, or 0 in attention-only models
        return 1 if self.has_mlp else 0

    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * (self.n_heads + self._m)

    @property
    def n_receivers(self) -> int:
        return self.n_layers * (3 * self.n_heads + self._m) + 1

    @property
    def n_nodes(self) -> int:
        """MIB's node count: input, every head, every MLP, logits."""
        return self.n_senders + 1

    @property
    def n_edges(self) -> int:
        return int(self.n_upstream.sum())

    # ---- index arithmetic (layer-major, as EAP-IG lays them out) -----------------------------------------
    def head_sender(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + self._m) + head

    def _require_mlp(self) -> None:
        if not self.has_mlp:
            raise KeyError(f"this graph has no MLP nodes ({self.describe()})")

    def mlp_sender(self, layer: int) -> int:
        self._require_mlp()
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def layer_senders(self, layer: int) -> slice:
        """Sender indices written by ``layer`` (its heads, then its MLP)."""
        start = 1 + layer * (self.n_heads + self._m)
        return slice(start, start + self.n_heads + self._m)

    def qkv_receiver(self, layer: int, head: int, qkv: str) -> int:
        return layer * (3 * self.n_heads + self._m) + QKV.index(qkv) * self.n_heads + head

    def attn_receivers(self, layer: int) -> slice:
        """Receiver indices of ``layer``'s attention, ordered q (all heads), k (all heads), v (all heads)."""
        start = layer * (3 * self.n_heads + self._m)
        return slice(start, start + 3 * self.n_heads)

    def mlp_receiver(self, layer: int) -> int:
        self._require_mlp()
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

    @property
    def logits_receiver(self) -> int:
        return self.n_receivers - 1

    def attn_upstream(self, layer: int) -> int:
        """How many senders a head of ``layer`` reads (everything written before the layer)."""
        return 1 + layer * (self.n_heads + self._m)

    def mlp_upstream(self, layer: int) -> int:
        """How many senders ``m{layer}`` reads: its own layer's heads too, unless blocks are parallel."""
        return self.attn_upstream(layer) + (0 if self.parallel_attn_mlp else self.n_heads)

    @cached_property
    def n_upstream(self) -> torch.Tensor:
        """``[n_receivers]``: receiver ``r`` reads senders ``0 .. n_upstream[r] - 1``."""
        out = torch.empty(self.n_receivers, dtype=torch.long)
        for layer in range(self.n_layers):
            out[self.attn_receivers(layer)] = self.attn_upstream(layer)
            if self.has_mlp:
                out[self.mlp_receiver(layer)] = self.mlp_upstream(layer)
        out[self.logits_receiver] = self.n_senders
        return out

    @cached_property
    def edge_mask(self) -> torch.Tensor:
        """``[n_senders, n_receivers]`` bool: True where an edge exists."""
        return torch.arange(self.n_senders)[:, None] < self.n_upstream[None, :]

    @cached_property
    def receiver_node(self) -> torch.Tensor:
        """``[n_receivers]`` long: the node each receiver belongs to (``a3.h2<k>`` -> ``a3.h2``); node indices are
        sender indices, with ``logits`` = ``n_senders`` (MIB's node order)."""
        out = torch.empty(self.n_receivers, dtype=torch.long)
        for layer in range(self.n_layers):
            heads = torch.arange(self.n_heads) + self.head_sender(layer, 0)
            out[self.attn_receivers(layer)] = heads.repeat(3)  # q (all heads), k (all heads), v (all heads)
            if self.has_mlp:
                out[self.mlp_receiver(layer)] = self.mlp_sender(layer)
        out[self.logits_receiver] = self.n_senders
        return out

    def on(self, device: torch.device | str | None) -> StructureTensors:
        """The index tensors of this structure on ``device`` (copied once per device, kept with the structure)."""
        device = torch.device("cpu") if device is None else torch.device(device)
        copies: dict[torch.device, StructureTensors] = self.__dict__.setdefault("_copies", {})
        if device not in copies:
            copies[device] = StructureTensors(self.edge_mask.to(device), self.edge_order.to(device),
                                              self.receiver_node.to(device))
        return copies[device]

    def descendants(self, changed: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """``[n_senders]`` bool: the senders among ``changed [n_nodes]`` (logits last) and every sender they reach
        through ``edges [n_senders, n_receivers]`` (bool): what must be recomputed when ``changed`` nodes change."""
        S = self.n_senders
        src, rcv = edges.nonzero(as_tuple=True)
        feeds = torch.zeros(S, S + 1, dtype=torch.bool)  # [S, S + 1]: sender -> node it has an edge into
        feeds[src, self.receiver_node[rcv]] = True
        successors = [row.nonzero().flatten().tolist() for row in feeds]
        reach = changed[:S].tolist()
        todo = [v for v in range(S) if reach[v]]
        while todo:
            for v in successors[todo.pop()]:
                if v < S and not reach[v]:
                    reach[v] = True
                    todo.append(v)
        return torch.tensor(reach, dtype=torch.bool)

    # ---- names -------------------------------------------------------------------------------------------
    @cached_property
    def senders(self) -> tuple[Node, ...]:
        nodes = [Node("input", "input", -1)]
        for layer in range(self.n_layers):
            nodes += [Node(f"a{layer}.h{h}", "head", layer, h) for h in range(self.n_heads)]
            if self.has_mlp:
                nodes.append(Node(f"m{layer}", "mlp", layer))
        return tuple(nodes)

    @cached_property
    def nodes(self) -> tuple[Node, ...]:
        """All MIB nodes in file order: input, a0.h0 .. m0, a1.h0 .., logits."""
        return self.senders + (Node("logits", "logits", self.n_layers),)

    @cached_property
    def receivers(self) -> tuple[Receiver, ...]:
        out: list[Receiver] = []
        for layer in range(self.n_layers):
            for qkv in QKV:
                out += [Receiver(f"a{layer}.h{h}<{qkv}>", "qkv", layer, h, qkv) for h in range(self.n_heads)]
            if self.has_mlp:
                out.append(Receiver(f"m{layer}", "mlp", layer))
        out.append(Receiver("logits", "logits", self.n_layers))
        return tuple(out)

    @cached_property
    def _sender_lookup(self) -> dict[str, int]:
        return {n.name: i for i, n in enumerate(self.senders)}

    @cached_property
    def _receiver_lookup(self) -> dict[str, int]:
        return {r.name: i for i, r in enumerate(self.receivers)}

    @cached_property
    def _node_lookup(self) -> dict[str, int]:
        return {n.name: i for i, n in enumerate(self.nodes)}

    def sender_index(self, name: str) -> int:
        try:
            return self._sender_lookup[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a sender of this graph ({self.describe()}); "
                           "senders are 'input', 'a{l}.h{h}' and 'm{l}'") from None

    def receiver_index(self, name: str) -> int:
        try:
            return self._receiver_lookup[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a receiver of this graph ({self.describe()}); receivers are "
                           "'a{l}.h{h}<q|k|v>', 'm{l}' and 'logits'") from None

    def node_index(self, name: str) -> int:
        try:
            return self._node_lookup[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a node of this graph ({self.describe()})") from None

    def edge_name(self, sender: int, receiver: int) -> str:
        return f"{self.senders[sender].name}->{self.receivers[receiver].name}"

    def edge_index(self, name: str) -> tuple[int, int]:
        """``"a0.h1->m0"`` -> ``(sender, receiver)``; raises if the pair is not an edge of this graph."""
        try:
            s_name, r_name = name.split("->")
        except ValueError:
            raise KeyError(f"{name!r} is not an edge name; edges are written 'SENDER->RECEIVER'") from None
        s, r = self.sender_index(s_name), self.receiver_index(r_name)
        if s >= int(self.n_upstream[r]):
            raise KeyError(f"{name!r} is not an edge: {s_name} is not written before {r_name} reads the "
                           f"residual stream ({self.describe()})")
        return s, r

    @cached_property
    def edge_order(self) -> torch.Tensor:
        """``[n_edges, 2]`` (sender, receiver) in the order MIB/EAP-IG files list edges.

        Per layer: for each sender, the q, k, v of every head; then every sender of the MLP; logits last.
        """
        rows: list[torch.Tensor] = []
        H = self.n_heads
        for layer in range(self.n_layers):
            n_up = self.attn_upstream(layer)
            s = torch.arange(n_up)[:, None, None].expand(n_up, H, 3)
            r = torch.tensor([[self.qkv_receiver(layer, h, q) for q in QKV] for h in range(H)])
            rows.append(torch.stack([s, r.expand(n_up, H, 3)], dim=-1).reshape(-1, 2))
            if not self.has_mlp:
                continue
            m = self.mlp_upstream(layer)
            rows.append(torch.stack([torch.arange(m), torch.full((m,), self.mlp_receiver(layer))], dim=-1))
        rows.append(torch.stack([torch.arange(self.n_senders),
                                 torch.full((self.n_senders,), self.logits_receiver)], dim=-1))
        return torch.cat(rows)

    def edge_names(self) -> Iterator[str]:
        snames = [n.name for n in self.senders]
        rnames = [r.name for r in self.receivers]
        for s, r in self.edge_order.tolist():
            yield f"{snames[s]}->{rnames[r]}"

    # ---- comparison --------------------------------------------------------------------------------------
    def cfg(self) -> dict:
        """MIB's ``cfg`` block."""
        out = {"n_layers": self.n_layers, "n_heads": self.n_heads, "parallel_attn_mlp": self.parallel_attn_mlp}
        if self.d_model is not None:
            out["d_model"] = self.d_model
        if self.n_kv_heads is not None and self.n_kv_heads != self.n_heads:
            out["n_key_value_heads"] = self.n_kv_heads
        if not self.has_mlp:
            out["attn_only"] = True
        return out

    def same_shape(self, other: "GraphStructure") -> bool:
        return (self.n_layers, self.n_heads, self.parallel_attn_mlp, self.has_mlp) == (
            other.n_layers, other.n_heads, other.parallel_attn_mlp, other.has_mlp)

    def check_fits(self, model: GraphStructure, *, source: object, model_name: str,
                   compare_kv: bool = True) -> GraphStructure:
        """``model`` (a model's structure), after checking that a graph of this structure was made for it, else
        :class:`GraphMismatchError` naming both shapes. Compared: n_layers, n_heads, parallel_attn_mlp, MLPs;
        d_model when both know it; key/value heads when ``compare_kv`` (MIB's own files do not record them)."""
        diffs = [f"{k} {a} vs {b}" for k, a, b in (
            ("n_layers", self.n_layers, model.n_layers), ("n_heads", self.n_heads, model.n_heads),
            ("parallel_attn_mlp", self.parallel_attn_mlp, model.parallel_attn_mlp),
            ("attn_only", not self.has_mlp, not model.has_mlp)) if a != b]
        if self.d_model is not None and model.d_model is not None and self.d_model != model.d_model:
            diffs.append(f"d_model {self.d_model} vs {model.d_model}")
        if compare_kv and self.n_kv_heads != model.n_kv_heads:
            diffs.append(f"n_key_value_heads {self.n_kv_heads} vs {model.n_kv_heads}")
        if diffs:
            raise GraphMismatchError(
                f"{source}: this graph was made for a model with {self._shape()}, but {model_name!r} has "
                f"{model._shape()} (file vs model: {'; '.join(diffs)}); load it with the model it was discovered on")
        return model

    def _shape(self) -> str:
        return self.describe() + (f", d_model {self.d_model}" if self.d_model is not None else "")

    def describe(self) -> str:
        block = "attention-only" if not self.has_mlp else "parallel" if self.parallel_attn_mlp else "sequential"
        kv = f", {self.n_kv_heads} kv heads" if self.n_kv_heads != self.n_heads else ""
        return f"{self.n_layers} layers x {self.n_heads} heads{kv}, {block} blocks"
