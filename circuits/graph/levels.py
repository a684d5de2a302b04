"""Running circuits given at a level: edges, nodes, or nodes and MLP neurons (neuron-level circuits).

One rule turns a :class:`~circuits.graph.graph.Graph` into what a patched run takes: an edge circuit runs its
``in_graph``; a node circuit every edge between its nodes; a neuron circuit every edge between its nodes (kept heads,
the MLPs with a kept neuron, ``input``, ``logits``) with each kept MLP's cut neurons ablated
(:class:`~circuits.session.neurons.NeuronRuns`). Evaluation, curves and minimal circuits all use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from circuits.graph.pruning import prune as prune_mask
from circuits.graph.selection import SelectionError, edges_between
from circuits.session.neurons import NeuronRuns

if TYPE_CHECKING:  # pragma: no cover
    from circuits.graph.graph import Graph
    from circuits.session import CircuitMetrics, CircuitSession

LEVELS = ("edge", "node", "neuron")


def edge_mask_of(circuit: Graph, prune: bool, level: str) -> torch.Tensor:
    """``[S, R]`` bool: the edges a run of ``circuit`` at ``level`` keeps (pruned to input -> logits paths);
    ``[S, R, L]`` for a position-aware circuit, whose edge-positions are kept where their edge lies on such a path
    of the edges kept at any position (:func:`prune_positions`)."""
    by_position = circuit.in_graph.dim() == 3
    if by_position and level != "edge":
        raise SelectionError(f"level={level!r} does not apply to a position-aware circuit (its units are "
                             "edge-positions); use level='edge', or graph.summed() for a position-free one")
    if level in ("node", "neuron"):
        mask = edges_between(circuit.structure, circuit.node_in_graph.cpu())
    elif level == "edge":
        mask = circuit.in_graph.cpu()
    else:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if prune:
        mask = prune_positions(circuit.structure, mask) if by_position else prune_mask(circuit.structure, mask)[0]
    return mask


def prune_positions(structure, mask: torch.Tensor) -> torch.Tensor:
    """``[S, R, L]`` edge-positions whose edge lies on an input -> logits path of the edges kept at any position.
    Conservative: an edge-position whose sender is fed at other positions only is kept (it changes nothing in a
    run, so f is exact; only the size may count a few idle edge-positions)."""
    on_paths, _ = prune_mask(structure, mask.any(-1))
    return mask & on_paths[..., None].to(mask.device)


def check_positions(circuit: Graph, session: CircuitSession) -> None:
    """A position-aware circuit's L must be the session's pairs' token length."""
    if circuit.in_graph.dim() == 3 and circuit.in_graph.shape[-1] != session.n_positions:
        raise SelectionError(f"the circuit has {circuit.in_graph.shape[-1]} positions but the pairs of task "
                             f"{session.task_name!r} have {session.n_positions} tokens; evaluate it on pairs of its "
                             f"length (task.aligned({circuit.in_graph.shape[-1]}), or the task it was found on)")


def neuron_mask_of(circuit: Graph) -> torch.Tensor:
    """``[L, m]`` bool: the neurons a neuron-level run of ``circuit`` keeps."""
    kept = circuit.neuron_in_graph
    if kept is None:
        raise SelectionError("level='neuron' needs a neuron-level circuit (neuron scores or neuron_in_graph); "
                             "cut one with scored.top_k(k, level='neuron') from a neuron-level method's graph")
    return kept.cpu()


def neuron_masks(circuits: Sequence[Graph], prune: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(edges [C, S, R] bool, neurons [C, L, m] float)``: what a run of neuron-level ``circuits`` takes."""
    edges = torch.stack([edge_mask_of(c, prune, "neuron") for c in circuits])
    return edges, torch.stack([neuron_mask_of(c) for c in circuits]).float()


def run_circuits(session: CircuitSession, circuits: Sequence[Graph], level: str, *, prune: bool = True,
                 kl: bool = False, neuron_runs: NeuronRuns | None = None) -> CircuitMetrics:
    """The metrics of ``circuits`` run at ``level`` on ``session`` (one batched pass per batch of examples)."""
    if level != "neuron":
        return session.circuit_metrics(torch.stack([edge_mask_of(c, prune, level) for c in circuits]), kl=kl)
    return (neuron_runs or NeuronRuns(session)).circuit_metrics(*neuron_masks(circuits, prune), kl=kl)
