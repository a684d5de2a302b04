"""Which edges and nodes of a selected edge set actually form a circuit: input -> ... -> logits.

A selection (top-k, threshold, ...) picks edges one by one, so it can keep an edge whose sender is never
computed from the input inside the circuit, or whose receiver feeds nothing that reaches the logits. Such a
dangling edge changes nothing in a circuit run but inflates the circuit's size. :func:`prune` removes them:

* a sender is *reached* if the input reaches it through circuit edges (a head counts as reached when any of
  its q, k or v inputs has an incoming circuit edge from a reached sender; ``input`` is reached by itself);
* a node is *live* if it reaches ``logits`` through circuit edges (``logits`` is live by itself);
* an edge ``S->R`` stays iff S is reached and the node of R is live, i.e. the edge lies on a path
  input -> ... -> logits. The nodes kept are those both reached and live, plus ``logits``.

This is the fixed point EAP-IG's / MIB's iterative ``Graph.prune`` converges to, computed in one forward and
one backward sweep over layers with dense boolean tensor ops (no Python loop over edges, no device sync), so a
Llama-3-8B-sized graph (1.6M edges) prunes in milliseconds on CPU or GPU.
"""

from __future__ import annotations

import torch

from circuits.graph.structure import GraphStructure


def node_mask(structure: GraphStructure, in_graph: torch.Tensor) -> torch.Tensor:
    """``[n_nodes]`` bool: the nodes an (unpruned) edge set touches, by EAP-IG's rule.

    A node is in when it has an outgoing edge and an incoming edge (``input`` needs only the outgoing one);
    ``logits`` is always in, as in MIB files. On a pruned edge set this equals :func:`prune`'s node set.
    """
    E = in_graph & structure.on(in_graph.device).edge_mask  # [S, R]
    S = structure.n_senders
    has_in = structure.nodes_fed(E.any(0))  # [S + 1]
    nodes = torch.ones(S + 1, dtype=torch.bool, device=in_graph.device)  # logits stays True
    nodes[:S] = E.any(1) & has_in[:S]
    nodes[0] = E[0].any()
    return nodes


def prune(structure: GraphStructure, in_graph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep only edges on a path input -> ... -> logits.

    Returns ``(edges [n_senders, n_receivers] bool, nodes [n_nodes] bool)``; the input is not modified.

    >>> s = GraphStructure(n_layers=1, n_heads=1)
    >>> g = torch.zeros(s.n_senders, s.n_receivers, dtype=torch.bool)
    >>> g[s.sender_index("a0.h0"), s.receiver_index("logits")] = True   # a0.h0 is never fed: dangling
    >>> g[s.sender_index("input"), s.receiver_index("m0")] = True
    >>> g[s.sender_index("m0"), s.receiver_index("logits")] = True
    >>> edges, nodes = prune(s, g)
    >>> int(edges.sum()), int(nodes.sum())
    (2, 3)
    """
    dev = in_graph.device
    E = in_graph & structure.on(dev).edge_mask  # [S, R]
    S, R, H = structure.n_senders, structure.n_receivers, structure.n_heads
    incidence = structure.on(dev).receiver_nodes  # [R, S + 1]: the heads each q/k/v receiver feeds

    # Forward sweep: reached[s] <=> input reaches sender s through circuit edges.
    reached = torch.zeros(S, dtype=torch.bool, device=dev)
    reached[0] = True
    for layer in range(structure.n_layers):
        n_up = structure.attn_upstream(layer)
        attn = structure.attn_receivers(layer)
        fed = (E[:n_up, attn] & reached[:n_up, None]).any(0)  # [A]: q, k, v receivers of the layer
        first = structure.head_sender(layer, 0)
        feeds = incidence[attn, first:first + H]  # [A, H]
        reached[first:first + H] = (feeds & fed[:, None]).any(0)  # a head runs if any of its q/k/v is fed
        if not structure.has_mlp:
            continue
        m_up = structure.mlp_upstream(layer)
        reached[structure.mlp_sender(layer)] = (E[:m_up, structure.mlp_receiver(layer)] & reached[:m_up]).any()

    # Backward sweep: live_recv[r] <=> the node owning receiver r reaches logits through circuit edges.
    live_recv = torch.zeros(R, dtype=torch.bool, device=dev)
    live_recv[structure.logits_receiver] = True
    live = torch.zeros(S, dtype=torch.bool, device=dev)
    for layer in reversed(range(structure.n_layers)):
        if structure.has_mlp:
            m = structure.mlp_sender(layer)
            live[m] = (E[m] & live_recv).any()
            live_recv[structure.mlp_receiver(layer)] = live[m]
        first = structure.head_sender(layer, 0)
        heads = slice(first, first + H)
        live[heads] = (E[heads] & live_recv[None, :]).any(1)  # sees m{layer} too in sequential blocks
        attn = structure.attn_receivers(layer)
        live_recv[attn] = (incidence[attn, heads] & live[heads][None, :]).any(1)  # feeds a live head
    live[0] = (E[0] & live_recv).any()

    edges = E & reached[:, None] & live_recv[None, :]
    nodes = torch.ones(S + 1, dtype=torch.bool, device=dev)  # logits is always in (MIB)
    nodes[:S] = reached & live
    return edges, nodes
