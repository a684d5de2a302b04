"""MIB leaderboard submissions (circuit localization track): write one, and check one before uploading it.

MIB's rules (the circuit track's README, "Submitting to the MIB Leaderboard"):

* one folder per task and model, named ``{task}_{model}`` (``ioi_gpt2``, ``arc-easy_llama3``), MIB's tasks
  (:data:`MIB_TASKS`) and models (:data:`MIB_MODELS`); at least 2 models and at least 2 tasks in all;
* each folder holds either **one** ``.json`` or ``.pt`` file of floating-point importance scores for every edge
  (``.pt``: the full ``[senders, receivers]`` grid, ``-inf`` where the pair is not an edge), or **nine** ``.json``
  / ``.pt`` circuits (binary membership), one with at most each of 0.1, 0.2, 0.5, 1, 2, 5, 10, 20 and 50% of the
  model's edges;
* the graph is the model's: MIB node and edge names, and the model's full edge count (GPT-2 small 32,491).

MIB's checker only counts a submission that passes, but says little about why one fails; :func:`check_submission`
applies the same rules locally and names every problem and its fix.

    export_submission(scored, "submission", task="ioi", model="gpt2")               # importances.json
    export_submission(scored, "submission", task="mcqa", model="gpt2", kind="circuits", file_type="pt")
    problems = check_submission("submission")                                        # [] when valid
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from circuits.errors import CircuitsError
from circuits.graph.grouped import expand_grouped
from circuits.graph.io import GraphFormatError, load, save, write_mib_pt
from circuits.graph.structure import GraphStructure

if TYPE_CHECKING:  # pragma: no cover
    from circuits.graph.graph import Graph

__all__ = ["MIB_TASKS", "MIB_MODELS", "MIB_FRACTIONS", "SubmissionError", "export_submission", "check_submission",
           "validate_submission", "folder_name"]

MIB_TASKS = ("ioi", "mcqa", "arithmetic-addition", "arithmetic-subtraction", "arc-easy", "arc-challenge")
# MIB's models and the graph shape (layers, heads) each one has; the edge count follows (GPT-2 small 32,491).
MIB_MODELS = {"gpt2": (12, 12), "qwen2.5": (24, 14), "gemma2": (26, 8), "llama3": (32, 32), "interpbench": (6, 4)}
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)  # of the edges: 0.1% ... 50%
MIN_MODELS = 2
MIN_TASKS = 2
_FILE_TYPES = (".json", ".pt")

Kind = Literal["importances", "circuits"]


class SubmissionError(CircuitsError, ValueError):
    """A submission that MIB would refuse: names the folder or file, the rule and the fix."""


def folder_name(task: str, model: str) -> str:
    """``{task}_{model}`` after checking both are MIB's (``ioi``, ``gpt2`` -> ``ioi_gpt2``)."""
    if task not in MIB_TASKS:
        hint = task.replace("_", "-")
        fix = f"use {hint!r}" if hint in MIB_TASKS else f"use one of {', '.join(MIB_TASKS)}"
        raise SubmissionError(f"{task!r} is not an MIB task; fix: {fix}")
    if model not in MIB_MODELS:
        raise SubmissionError(f"{model!r} is not an MIB model; fix: use one of {', '.join(MIB_MODELS)}")
    return f"{task}_{model}"


def _model_structure(model: str) -> GraphStructure:
    layers, heads = MIB_MODELS[model]
    return GraphStructure(n_layers=layers, n_heads=heads)


def _check_shape(st: GraphStructure, model: str, where: str) -> str | None:
    expected = _model_structure(model)
    if (st.n_layers, st.n_heads) != (expected.n_layers, expected.n_heads) or st.n_edges != expected.n_edges:
        return (f"{where}: the graph is {st.n_layers} layers x {st.n_heads} heads ({st.n_edges:,} edges), but MIB's "
                f"{model} has {expected.n_layers} x {expected.n_heads} ({expected.n_edges:,} edges); fix: export the "
                f"graph discovered on {model}, or put it in the folder of its own model")
    return None


def export_submission(graph: Graph, root: str | os.PathLike, *, task: str, model: str,
                      kind: Kind = "importances", file_type: str = "json", absolute: bool = False) -> Path:
    """Write ``graph``'s folder of an MIB submission under ``root`` and return the folder.

    ``kind="importances"``: one file with every edge's score (``importances.json`` / ``.pt``).
    ``kind="circuits"``: nine circuits, the top edges by score (``absolute``: by ``|score|``) at each of
    :data:`MIB_FRACTIONS`, pruned to input-to-logits paths, each within its fraction.
    Run :func:`check_submission` on ``root`` once every task and model is in. A graph with grouped k/v
    receivers (``grouped_kv``) is written with MIB's per-head names (:func:`~circuits.graph.grouped.expand_grouped`:
    scores divided by the group size, flags copied), circuits selected after the expansion.
    """
    name = folder_name(task, model)
    graph = expand_grouped(graph)  # MIB names k/v receivers per query head (circuits.graph.grouped)
    problem = _check_shape(graph.structure, model, f"{name}")
    if problem:
        raise SubmissionError(problem)
    suffix = "." + file_type.lstrip(".").lower()
    if suffix not in _FILE_TYPES:
        raise SubmissionError(f"file_type {file_type!r}: MIB reads .json and .pt; fix: use 'json' or 'pt'")
    st = graph.structure
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    stale = [p for p in folder.iterdir() if p.suffix in _FILE_TYPES]
    for p in stale:  # a folder holds one submission: a rerun replaces it
        p.unlink()
    if kind == "importances":
        edge_scores = graph.scores[st.on(graph.scores.device).edge_mask]
        n_nan = int(torch.isnan(edge_scores).sum())
        if n_nan:
            raise SubmissionError(f"{name}: {n_nan:,} of {st.n_edges:,} edges have no score (NaN), and MIB ranks "
                                  "every edge; fix: score every edge, or export kind='circuits'")
        path = folder / f"importances{suffix}"
        if suffix == ".pt":
            write_mib_pt(graph, path)
        else:
            save(graph, path)
        return folder
    if kind != "circuits":
        raise SubmissionError(f"kind {kind!r}: use 'importances' (one file of scores) or 'circuits' (nine circuits)")
    for fraction in MIB_FRACTIONS:
        k = math.floor(fraction * st.n_edges)
        with warnings.catch_warnings():  # an empty pruned circuit is a valid entry; the sizes are in the files
            warnings.simplefilter("ignore", UserWarning)
            circuit = graph.top_k(max(k, 0), absolute=absolute)
        path = folder / f"circuit_{fraction:g}{suffix}"
        if suffix == ".pt":
            write_mib_pt(circuit, path, scores=False)
        else:
            _write_circuit_json(circuit, path)
    return folder


def _write_circuit_json(circuit: Graph, path: Path) -> None:
    """MIB's circuit JSON: the graph file without scores (membership only)."""
    from circuits.graph.io import to_mib_dict

    doc = to_mib_dict(circuit)
    doc["edges"] = {name: {"in_graph": e["in_graph"]} for name, e in doc["edges"].items()}
    doc["nodes"] = {name: {"in_graph": n["in_graph"]} for name, n in doc["nodes"].items()}
    path.write_text(json.dumps(doc))


# ---- the check ---------------------------------------------------------------------------------------------------
def check_submission(root: str | os.PathLike, *, min_models: int = MIN_MODELS, min_tasks: int = MIN_TASKS) -> list[str]:
    """Every problem MIB's rules find in the submission folder ``root``, each naming the place and the fix;
    ``[]`` when it is valid. ``min_models`` / ``min_tasks``: MIB asks for at least 2 of each."""
    root = Path(root)
    if not root.is_dir():
        return [f"{root}: no such folder; fix: give the folder that holds the {{task}}_{{model}} folders"]
    problems: list[str] = []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        return [f"{root}: no {{task}}_{{model}} folders (e.g. ioi_gpt2); fix: export at least one graph into it"]
    tasks, models = set(), set()
    for folder in folders:
        parsed = _parse_folder(folder)
        if isinstance(parsed, str):
            problems.append(parsed)
            continue
        task, model = parsed
        folder_problems = _check_folder(folder, model)
        problems += folder_problems
        if not folder_problems:
            tasks.add(task)
            models.add(model)
    if len(models) < min_models or len(tasks) < min_tasks:
        problems.append(f"{root}: valid folders cover {len(tasks)} task(s) ({', '.join(sorted(tasks)) or 'none'}) "
                        f"and {len(models)} model(s) ({', '.join(sorted(models)) or 'none'}); MIB needs at least "
                        f"{min_tasks} tasks and {min_models} models; fix: export more task/model folders")
    return problems


def validate_submission(root: str | os.PathLike, **options: int) -> None:
    """Raise :class:`SubmissionError` (the first problem, and how many more) unless ``root`` is a valid submission."""
    problems = check_submission(root, **options)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise SubmissionError(problems[0] + more)


def _parse_folder(folder: Path) -> tuple[str, str] | str:
    task, sep, model = folder.name.rpartition("_")
    if not sep:
        return (f"{folder}: folder names are {{task}}_{{model}} (e.g. ioi_gpt2); fix: rename it")
    if task not in MIB_TASKS:
        hint = task.replace("_", "-")
        fix = f"rename it {hint}_{model}" if hint in MIB_TASKS else f"use one of the tasks {', '.join(MIB_TASKS)}"
        return f"{folder}: {task!r} is not an MIB task; fix: {fix}"
    if model not in MIB_MODELS:
        return f"{folder}: {model!r} is not an MIB model; fix: use one of {', '.join(MIB_MODELS)}"
    return task, model


def _check_folder(folder: Path, model: str) -> list[str]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    graph_files = [p for p in files if p.suffix.lower() in _FILE_TYPES]
    others = [p.name for p in files if p.suffix.lower() not in _FILE_TYPES and p.name.lower() != "readme.md"]
    problems = [f"{folder}: {name}: not a .json or .pt file; fix: remove it" for name in others]
    if len(graph_files) == 1:
        return problems + _check_importances(graph_files[0], model)
    if len(graph_files) == len(MIB_FRACTIONS):
        return problems + _check_circuits(graph_files, model)
    return problems + [f"{folder}: {len(graph_files)} graph files; MIB takes 1 file of importance scores or "
                       f"{len(MIB_FRACTIONS)} circuits (at most 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50% of the edges); "
                       "fix: keep one or the other"]


def _load(path: Path) -> tuple[Graph | None, str | None]:
    try:
        return load(path), None
    except (GraphFormatError, ValueError, OSError) as e:
        return None, f"{path}: cannot be read as an MIB graph ({e}); fix: write it with circuits export-mib"


def _check_importances(path: Path, model: str) -> list[str]:
    graph, problem = _load(path)
    if graph is None:
        return [problem or f"{path}: unreadable"]
    shape = _check_shape(graph.structure, model, str(path))
    if shape:
        return [shape]
    st = graph.structure
    out = []
    edge_scores = graph.scores[st.edge_mask]  # [n_edges]
    n_nan = int(torch.isnan(edge_scores).sum())
    if n_nan:
        out.append(f"{path}: {n_nan:,} of {st.n_edges:,} edges have no score (missing, null or NaN); MIB ranks "
                   "every edge by its importance; fix: give every edge a number (-inf for never)")
    if path.suffix.lower() == ".pt":
        out += _check_pt_grid(path, st)
    return out


def _check_pt_grid(path: Path, st: GraphStructure) -> list[str]:
    """The raw grid of an importance ``.pt``: non-edges hold -inf (or EAP-IG's 0), never a score."""
    d = torch.load(path, map_location="cpu", weights_only=True)
    grid = d["edges_scores"]  # [S, R]
    off = grid[~st.edge_mask]
    bad = ~(torch.isneginf(off) | (off == 0))
    if bool(bad.any()):
        s, r = (~st.edge_mask).nonzero()[int(bad.nonzero()[0])].tolist()
        return [f"{path}: {int(bad.sum()):,} entries of edges_scores that are not edges hold scores (first: "
                f"{st.senders[s].name} -> {st.receivers[r].name} = {float(grid[s, r]):.4g}); the grid is "
                "[senders, receivers] in MIB's node order with -inf where there is no edge; fix: write it with "
                "circuits export-mib (a transposed or reordered grid shows this way)"]
    return []


def _check_circuits(paths: list[Path], model: str) -> list[str]:
    out: list[str] = []
    sizes: list[tuple[int, Path]] = []
    n_edges = _model_structure(model).n_edges
    for path in paths:
        graph, problem = _load(path)
        if graph is None:
            out.append(problem or f"{path}: unreadable")
            continue
        shape = _check_shape(graph.structure, model, str(path))
        if shape:
            out.append(shape)
            continue
        sizes.append((graph.n_edges, path))
    if out:
        return out
    sizes.sort()
    for (count, path), fraction in zip(sizes, MIB_FRACTIONS):  # smallest circuit for the smallest fraction, ...
        limit = math.floor(fraction * n_edges)
        if count > limit:
            out.append(f"{path}: {count:,} edges, but the circuit for {fraction * 100:g}% may have at most {limit:,} "
                       f"of {n_edges:,}; MIB needs one circuit within each of 0.1, 0.2, 0.5, 1, 2, 5, 10, 20 and "
                       "50% of the edges; fix: select fewer edges (circuits export-mib --circuits does)")
    return out
