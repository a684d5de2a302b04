"""The circuits of the literature as graphs: IOI and greater-than in GPT-2 small, docstring in attn-only-4l,
induction heads in a 2-layer attention-only model.

The source is ``circuits/evaluation/data/published-circuits.json`` (head classes, edge rules and edge lists
re-encoded from the cited papers and from ACDC's ``get_*_true_edges``, checked against the published edge
counts; see its ``_meta``). :func:`published_circuit` builds a :class:`Graph` from it; the repository's
``graphs/published/*.json`` are those graphs written in MIB's JSON format (:func:`write_published`
regenerates them, run in the repository: ``python -c "from circuits.evaluation import write_published;
write_published()"``; a test checks the files equal a fresh build). Nothing reads those files at run time.

Conventions:

* Edges are in MIB / EAP-IG's convention (no internal q/k/v -> head edges): IOI 963 edges (ACDC counts 1,041 with
  its 78 internal edges), greater-than 235 (ACDC 262), docstring 24 (ACDC 37).
* Scores are 1.0 on the circuit's edges and 0.0 elsewhere, so ``graph.top_k(graph.n_edges)`` gives the circuit
  back; there are no real scores in a hand-found circuit.
* The induction circuit has no canonical edge-level ground truth (ACDC: "no canonical induction circuit"); it is
  stored at node level: ``node_in_graph`` marks ``a0.h0`` (previous-token head), ``a1.h5`` and ``a1.h6``
  (induction heads), with ``input`` and ``logits``, and no edges. Use it with ``level="node"``
  (:func:`circuits.evaluation.auroc`, :func:`circuits.evaluate`).
* The attention-only models have no MLP nodes (``GraphStructure(has_mlp=False)``, MIB cfg ``attn_only``).
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from circuits.graph.graph import Graph
from circuits.graph.structure import GraphStructure

if TYPE_CHECKING:  # pragma: no cover
    from circuits.models.circuit_model import CircuitModel

SOURCE = Path(__file__).resolve().parent / "data" / "published-circuits.json"
GRAPHS_DIR = Path("graphs") / "published"  # the repository's copies, relative to the working directory

# name -> where it lives in the source file, the model shape, and what it is for
PUBLISHED: dict[str, dict[str, Any]] = {
    "ioi": {"key": "ioi_gpt2-small", "file": "ioi_gpt2-small.json", "model": "gpt2", "task": "ioi",
            "structure": GraphStructure(n_layers=12, n_heads=12, d_model=768), "level": "edge",
            "citation": "Wang et al. 2022, Interpretability in the Wild (arXiv:2211.00593); edges as in Conmy et al. "
                        "2023, Towards Automated Circuit Discovery (ACDC), App. F"},
    "greater-than": {"key": "greater-than_gpt2-small", "file": "greater-than_gpt2-small.json", "model": "gpt2",
                     "task": "greater-than", "structure": GraphStructure(n_layers=12, n_heads=12, d_model=768),
                     "level": "edge",
                     "citation": "Hanna, Liu, Variengien 2023, How does GPT-2 compute greater-than? "
                                 "(arXiv:2305.00586); edges as in ACDC App. G"},
    "docstring": {"key": "docstring_attn-only-4l", "file": "docstring_attn-only-4l.json", "model": "attn-only-4l",
                  "task": None, "structure": GraphStructure(n_layers=4, n_heads=8, has_mlp=False), "level": "edge",
                  "citation": "Heimersheim & Janiak 2023, A circuit for Python docstrings in a 4-layer attention-only "
                              "transformer (Alignment Forum); edges as in ACDC App. H"},
    "induction": {"key": "induction_redwood_attn_2l", "file": "induction_attn-only-2l.json",
                  "model": "redwood_attn_2l", "task": "induction",
                  "structure": GraphStructure(n_layers=2, n_heads=8, has_mlp=False), "level": "node",
                  "citation": "Goldowsky-Dill et al. 2023, Localizing Model Behavior with Path Patching "
                              "(arXiv:2304.05969); ACDC App. D.1 / J"},
}
ALIASES = {"greater_than": "greater-than", "greaterthan": "greater-than", "gt": "greater-than",
           "induction-heads": "induction", "ioi-gpt2": "ioi"}


@lru_cache(maxsize=1)
def _source() -> dict:
    with open(SOURCE) as f:
        return json.load(f)


def _name(name: str) -> str:
    key = ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in PUBLISHED:
        raise KeyError(f"no published circuit {name!r}; available: {', '.join(PUBLISHED)}")
    return key


def _build(name: str) -> Graph:
    info = PUBLISHED[name]
    entry = _source()[info["key"]]
    st: GraphStructure = info["structure"]
    metadata = {"name": name, "kind": "published circuit", "model": info["model"], "task": info["task"],
                "level": info["level"], "citation": info["citation"],
                "source": entry["source"], "source_file": "circuits/evaluation/data/published-circuits.json",
                "reference_model": entry["model"]}
    for key in ("nodes", "edge_counts", "edge_rule", "notes", "ground_truth_quality", "original_paper_head_set_note",
                "excluded_from_original_8_heads", "mlps"):
        if key in entry:
            metadata[key] = copy.deepcopy(entry[key])
    if info["level"] == "node":
        heads = [h for group in entry["nodes"].values() for h in group]
        nodes = torch.zeros(st.n_nodes, dtype=torch.bool)
        for h in ["input", "logits", *heads]:
            nodes[st.node_index(h)] = True
        empty = torch.zeros(st.n_senders, st.n_receivers, dtype=torch.bool)
        return Graph(st, scores=torch.zeros(st.n_senders, st.n_receivers), in_graph=empty, node_in_graph=nodes,
                     metadata=metadata)
    names = [f"{s}->{r}" for s, r in entry["edges"]]
    if len(set(names)) != len(names):
        raise ValueError(f"published circuit {name!r}: duplicate edges in {SOURCE}")
    expected = entry["edge_counts"]["eapig_convention"]
    if len(names) != expected:
        raise ValueError(f"published circuit {name!r}: {len(names)} edges in {SOURCE}, the paper count is {expected}")
    graph = Graph.from_edges(st, names, metadata=metadata)  # KeyError names any edge the model does not have
    graph.set_scores(graph.in_graph.float())
    return graph


@lru_cache(maxsize=None)
def _cached(name: str) -> Graph:
    return _build(name)


def published_circuit(name: str, model: CircuitModel | None = None) -> Graph:
    """A published circuit as a :class:`Graph` (a fresh copy; see the module docstring for conventions).

    ``name``: ``ioi``, ``greater-than``, ``docstring`` or ``induction``. With ``model`` (anything with
    ``.structure``), the model must have the circuit's shape (else :class:`~circuits.graph.io.GraphMismatchError`)
    and the graph uses ``model.structure``.

    >>> published_circuit("ioi").n_edges
    963
    """
    key = _name(name)
    graph = _cached(key)
    if model is None:
        return graph.copy()
    st = graph.structure.check_fits(model.structure, source=f"published circuit {key!r}",
                                    model_name=getattr(model, "name", None) or type(model).__name__)
    return Graph(st, graph.scores, graph.in_graph, graph.node_scores, graph._node_in_graph, graph.metadata)


def list_published():
    """A DataFrame of the published circuits: name, model, level, edges, nodes, file, source."""
    import pandas as pd

    rows = []
    for name, info in PUBLISHED.items():
        g = _cached(name)
        rows.append({"name": name, "model": info["model"], "shape": info["structure"].describe(),
                     "level": info["level"], "edges": g.n_edges, "nodes": g.n_nodes,
                     "file": f"graphs/published/{info['file']}", "source": info["citation"]})
    return pd.DataFrame(rows)


def published_path(name: str, directory: str | Path = GRAPHS_DIR) -> Path:
    """The circuit's graph file in ``directory`` (default ``graphs/published`` of the working directory: the
    repository's copies). :func:`published_circuit` needs no file: it builds from the package's source data."""
    return Path(directory) / PUBLISHED[_name(name)]["file"]


def write_published(directory: str | Path | None = None) -> list[Path]:
    """(Re)write every published circuit as MIB JSON into ``directory`` (default ``graphs/published`` of the
    working directory: run it in the repository to regenerate its copies)."""
    out = Path(directory) if directory is not None else GRAPHS_DIR
    return [_cached(name).save(out / info["file"]) for name, info in PUBLISHED.items()]

