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

Grouped-query attention (``n_kv_heads < n_heads``). By default (MIB) every query head has its own k and v
receiver, ``a{l}.h{h}<k>``: the forward computes head h's keys from head h's own mixed input with its group's
weights, so a circuit may feed two heads of one group different keys. ``grouped_kv=True`` gives one k and one v
receiver per key/value *group* instead, ``a{l}.g{g}<k>`` / ``a{l}.g{g}<v>`` (group g serves query heads
``g * H/K .. (g + 1) * H/K - 1``), as the model itself computes them: each group's k/v once, from the group's own
mixed input. Llama-3.1-8B then has 805,681 edges instead of MIB's 1,592,881. The names are not MIB's
``a{l}.h{h}<k>`` because such a receiver is no one head's input: naming it after a head would read as MIB's
per-head receiver in another tool. MIB's files are per head, so saving in MIB's format expands a grouped graph
(:func:`circuits.graph.submission.expand_grouped`). A model whose n_kv_heads equals n_heads has one group per
head: ``grouped_kv=True`` is then the MIB graph itself (stored as ``grouped_kv=False``), names included.
"""

from __future__ import annotations

import dataclasses
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
    """A place that reads the residual stream: one of a head's q/k/v inputs, an MLP input, or the logits.

    A grouped k/v receiver (``a3.g1<k>``, ``grouped_kv``) has ``head=None`` and ``group`` set: it feeds every
    query head of its group."""

    name: str
    kind: str  # "qkv" | "mlp" | "logits"
    layer: int
    head: int | None = None
    qkv: str | None = None
    group: int | None = None

    @property
    def node(self) -> str:
        """The node this receiver belongs to (``a3.h2<k>`` -> ``a3.h2``; a grouped ``a3.g1<k>`` -> ``a3.g1``, which
        is no node: use :meth:`GraphStructure.receiver_heads` for the heads it feeds)."""
        return self.name.split("<")[0]


@dataclass(frozen=True)
class StructureTensors:
    """A structure's index tensors on one device (see :meth:`GraphStructure.on`)."""

    edge_mask: torch.Tensor  # [n_senders, n_receivers] bool
    edge_order: torch.Tensor  # [n_edges, 2] long, MIB file order
    receiver_nodes: torch.Tensor  # [n_receivers, n_nodes] bool


@dataclass(frozen=True)
class GraphStructure:
    """The node and edge layout of one model shape, in MIB's convention.

    >>> s = GraphStructure(n_layers=12, n_heads=12)
    >>> s.n_nodes, s.n_edges
    (158, 32491)
    >>> s.edge_name(s.sender_index("a0.h1"), s.receiver_index("m0"))
    'a0.h1->m0'

    ``grouped_kv``: one k and one v receiver per key/value group (module docstring), e.g. Llama-3.1-8B:

    >>> GraphStructure(n_layers=32, n_heads=32, n_kv_heads=8, grouped_kv=True).n_edges
    805681
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    parallel_attn_mlp: bool = False
    d_model: int | None = None
    has_mlp: bool = True
    grouped_kv: bool = False

    def __post_init__(self) -> None:
        kv = self.n_heads if self.n_kv_heads is None else self.n_kv_heads
        object.__setattr__(self, "n_kv_heads", kv)
        if self.n_layers < 1 or self.n_heads < 1:
            raise ValueError(f"a graph needs at least one layer and one head, got {self.n_layers=} {self.n_heads=}")
        if kv < 1 or self.n_heads % kv:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if kv == self.n_heads:  # one group per head: the grouped graph is the MIB graph
            object.__setattr__(self, "grouped_kv", False)
        object.__setattr__(self, "grouped_kv", bool(self.grouped_kv))

    # ---- sizes -------------------------------------------------------------------------------------------
    @property
    def _m(self) -> int:  # MLPs per layer: 1, or 0 in attention-only models
        return 1 if self.has_mlp else 0

    @property
    def n_kv_receivers(self) -> int:
        """k receivers (and as many v receivers) per layer: one per key/value group with ``grouped_kv``, else one
        per query head (MIB)."""
        assert self.n_kv_heads is not None
        return self.n_kv_heads if self.grouped_kv else self.n_heads

    @property
    def group_size(self) -> int:
        """Query heads per key/value group (1 without grouped-query attention)."""
        assert self.n_kv_heads is not None
        return self.n_heads // self.n_kv_heads

    @property
    def _a(self) -> int:  # attention receivers per layer: q of every head, k and v of every head or group
        return self.n_heads + 2 * self.n_kv_receivers

    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * (self.n_heads + self._m)

    @property
    def n_receivers(self) -> int:
        return self.n_layers * (self._a + self._m) + 1

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
        """The q, k or v receiver of query head ``head`` (with ``grouped_kv``, k and v are its group's)."""
        start = layer * (self._a + self._m)
        if qkv == "q":
            return start + head
        g = head // self.group_size if self.grouped_kv else head
        return start + self.n_heads + (QKV.index(qkv) - 1) * self.n_kv_receivers + g

    def attn_receivers(self, layer: int) -> slice:
        """Receiver indices of ``layer``'s attention, ordered q (all heads), k (all heads or groups), v (same)."""
        start = layer * (self._a + self._m)
        return slice(start, start + self._a)

    def head_inputs(self, layer: int, heads: list[int]) -> list[int]:
        """The receivers ``heads`` of ``layer`` read: their q, then the k and the v of each head (MIB) or of each
        group one of them is in (``grouped_kv``, each group once, in order)."""
        start = layer * (self._a + self._m)
        kv = sorted({h // self.group_size for h in heads}) if self.grouped_kv else heads
        H, G = self.n_heads, self.n_kv_receivers
        return [start + h for h in heads] + [start + H + g for g in kv] + [start + H + G + g for g in kv]

    def mlp_receiver(self, layer: int) -> int:
        self._require_mlp()
        return layer * (self._a + 1) + self._a

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
        sender indices, with ``logits`` = ``n_senders`` (MIB's node order). A grouped k/v receiver feeds several
        nodes: with ``grouped_kv`` use :attr:`receiver_nodes`."""
        if self.grouped_kv:
            raise ValueError("with grouped_kv a k/v receiver feeds every head of its group, not one node; "
                             "use GraphStructure.receiver_nodes")
        out = torch.empty(self.n_receivers, dtype=torch.long)
        for layer in range(self.n_layers):
            heads = torch.arange(self.n_heads) + self.head_sender(layer, 0)
            out[self.attn_receivers(layer)] = heads.repeat(3)  # q (all heads), k (all heads), v (all heads)
            if self.has_mlp:
                out[self.mlp_receiver(layer)] = self.mlp_sender(layer)
        out[self.logits_receiver] = self.n_senders
        return out

    @cached_property
    def receiver_nodes(self) -> torch.Tensor:
        """``[n_receivers, n_nodes]`` bool: the nodes whose input each receiver is part of (one node each, MIB; a
        grouped k/v receiver: every head of its group). Node indices are sender indices, ``logits`` last."""
        out = torch.zeros(self.n_receivers, self.n_senders + 1, dtype=torch.bool)
        heads = torch.arange(self.n_heads)
        for layer in range(self.n_layers):
            nodes = heads + self.head_sender(layer, 0)
            for q in QKV:
                out[[self.qkv_receiver(layer, h, q) for h in range(self.n_heads)], nodes] = True
            if self.has_mlp:
                out[self.mlp_receiver(layer), self.mlp_sender(layer)] = True
        out[self.logits_receiver, self.n_senders] = True
        return out

    def nodes_fed(self, receivers: torch.Tensor) -> torch.Tensor:
        """``[..., n_nodes]`` bool: the nodes that some receiver marked in ``receivers [..., n_receivers]`` (bool)
        feeds: a one-hot row per receiver (MIB), a grouped k/v receiver's row marks its group's heads."""
        incidence = self.on(receivers.device).receiver_nodes.to(torch.float32)
        return (receivers.to(torch.float32) @ incidence) > 0

    def node_receivers(self) -> list[list[int]]:
        """Per node (sender order, ``logits`` last): the receivers that feed it (a grouped k/v receiver is listed
        under every head of its group)."""
        out: list[list[int]] = [[] for _ in range(self.n_senders + 1)]
        for r, n in self.receiver_nodes.nonzero().tolist():
            out[n].append(r)
        return out

    def on(self, device: torch.device | str | None) -> StructureTensors:
        """The index tensors of this structure on ``device`` (copied once per device, kept with the structure)."""
        device = torch.device("cpu") if device is None else torch.device(device)
        copies: dict[torch.device, StructureTensors] = self.__dict__.setdefault("_copies", {})
        if device not in copies:
            copies[device] = StructureTensors(self.edge_mask.to(device), self.edge_order.to(device),
                                              self.receiver_nodes.to(device))
        return copies[device]

    def descendants(self, changed: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """``[n_senders]`` bool: the senders among ``changed [n_nodes]`` (logits last) and every sender they reach
        through ``edges [n_senders, n_receivers]`` (bool): what must be recomputed when ``changed`` nodes change."""
        S = self.n_senders
        feeds = self.nodes_fed(edges.cpu())  # [S, S + 1]: sender -> node it has an edge into
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
                if qkv != "q" and self.grouped_kv:
                    out += [Receiver(f"a{layer}.g{g}<{qkv}>", "qkv", layer, None, qkv, g)
                            for g in range(self.n_kv_receivers)]
                    continue
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
            kinds = ("'a{l}.h{h}<q>', 'a{l}.g{g}<k|v>' (grouped_kv)" if self.grouped_kv
                     else "'a{l}.h{h}<q|k|v>'")
            raise KeyError(f"{name!r} is not a receiver of this graph ({self.describe()}); receivers are "
                           f"{kinds}, 'm{{l}}' and 'logits'") from None

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

        Per layer: for each sender, the q, k, v of every head; then every sender of the MLP; logits last. With
        ``grouped_kv`` (no MIB order exists): for each sender, the q of every head, then the k and v of every group.
        """
        rows: list[torch.Tensor] = []
        H = self.n_heads
        for layer in range(self.n_layers):
            n_up = self.attn_upstream(layer)
            if self.grouped_kv:
                r = torch.arange(self.attn_receivers(layer).start, self.attn_receivers(layer).stop)
                r = torch.cat([r[:H], r[H:].view(2, -1).T.reshape(-1)])  # q of every head, then k, v per group
            else:
                r = torch.tensor([[self.qkv_receiver(layer, h, q) for q in QKV] for h in range(H)]).reshape(-1)
            s = torch.arange(n_up)[:, None].expand(n_up, len(r))
            rows.append(torch.stack([s, r.expand(n_up, len(r))], dim=-1).reshape(-1, 2))
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
        if self.grouped_kv:  # not MIB's: a MIB loader must not read these receivers as per-head ones
            out["grouped_kv"] = True
        return out

    def same_shape(self, other: "GraphStructure") -> bool:
        return (self.n_layers, self.n_heads, self.parallel_attn_mlp, self.has_mlp, self.grouped_kv) == (
            other.n_layers, other.n_heads, other.parallel_attn_mlp, other.has_mlp, other.grouped_kv)

    def per_head(self) -> "GraphStructure":
        """This shape with MIB's per-head k/v receivers (itself when it has them)."""
        return self if not self.grouped_kv else dataclasses.replace(self, grouped_kv=False)

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
        if self.grouped_kv != model.grouped_kv:
            raise GraphMismatchError(
                f"{source}: this graph has {self._kv_kind()} but {model_name!r} is loaded with "
                f"{model._kv_kind()}; load the model with grouped_kv={self.grouped_kv} "
                f"(command line: {'--grouped-kv' if self.grouped_kv else 'without --grouped-kv'}) to use it")
        if diffs:
            raise GraphMismatchError(
                f"{source}: this graph was made for a model with {self._shape()}, but {model_name!r} has "
                f"{model._shape()} (file vs model: {'; '.join(diffs)}); load it with the model it was discovered on")
        return model

    def _shape(self) -> str:
        return self.describe() + (f", d_model {self.d_model}" if self.d_model is not None else "")

    def _kv_kind(self) -> str:
        return ("k/v receivers per key/value group (grouped_kv=True)" if self.grouped_kv
                else "k/v receivers per query head (MIB, grouped_kv=False)")

    def describe(self) -> str:
        block = "attention-only" if not self.has_mlp else "parallel" if self.parallel_attn_mlp else "sequential"
        kv = f", {self.n_kv_heads} kv heads" if self.n_kv_heads != self.n_heads else ""
        kv += " (grouped k/v receivers)" if self.grouped_kv else ""
        return f"{self.n_layers} layers x {self.n_heads} heads{kv}, {block} blocks"
