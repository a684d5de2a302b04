"""Graph files: MIB's JSON circuit format (exactly), GraphML (via networkx) and a compact ``.pt``.

``.json`` is MIB / EAP-IG's format, so circuits move between tools unchanged::

    {"cfg": {"n_layers": 12, "n_heads": 12, "parallel_attn_mlp": false, "d_model": 768},
     "nodes": {"input": {"in_graph": true}, ...},
     "edges": {"input->a0.h0<q>": {"score": -0.000295..., "in_graph": false}, ...},
     "metadata": {...}}

Edges are written in MIB order; ``metadata`` (written only when non-empty) and a node ``score`` (only when
the graph has node scores) are extra keys that MIB's loader ignores. GQA models also get
``cfg["n_key_value_heads"]``. Scores are written as the exact float64 value of the stored score (what
EAP-IG writes for its float32 scores) and read back as float64, so any file round-trips bit-exactly.

``.graphml`` holds every edge (not only the circuit) with its score, plus ``cfg`` / ``metadata`` as JSON
strings in the graph attributes. ``.pt`` stores the dense tensors; use it for Llama-sized graphs, whose
JSON is ~100 MB. MIB's / EAP-IG's own ``.pt`` files (``cfg``, ``src_nodes``, ``dst_nodes``, ``edges_scores``
``[senders, receivers]``, ``edges_in_graph``, ``nodes_in_graph``) load too, and :func:`write_mib_pt` writes them
(what MIB submissions hold; entries of the grid that are not edges are ``-inf``).

Grouped k/v receivers (``GraphStructure.grouped_kv``): ``.json``, ``.graphml`` and ``.pt`` keep them (names
``a{l}.g{g}<k>``, ``cfg["grouped_kv"] = true``, so a file loads back as the grouped graph it was and MIB's own
loader refuses the names instead of misreading them); the MIB-only writers (:func:`write_mib_pt`, the submission
export) expand them to MIB's per-head receivers (:func:`circuits.graph.grouped.expand_grouped`).

Position-aware graphs (``[S, R, L]`` scores / in_graph, ``graph.n_positions == L``):

* ``.pt`` keeps the axis: the tensors are stored as they are, with ``n_positions = L``; loading restores it.
* ``.json`` stays MIB's format: it holds the :meth:`~circuits.Graph.summed` view (scores summed over positions,
  an edge in the circuit when it is at any position, ``metadata["summed_positions"] = L``), so MIB's own loader
  reads it unchanged. Beside it goes a sidecar ``<stem>.positions.pt`` (``x.json`` -> ``x.positions.pt``) with
  the ``[S, R, L]`` scores and in_graph and the graph's own metadata. ``Graph.load("x.json")`` restores the
  position-aware graph when the sidecar is there and agrees with the JSON (its summed view equals the file's;
  else a warning, and the summed graph), and records ``metadata["positions_sidecar"] = "x.positions.pt"``;
  without the sidecar it loads the summed graph. Copy the two files together. Saving a position-free graph to
  ``x.json`` removes a circuits sidecar ``x.positions.pt`` left from an earlier save (it belonged to the old file).
* ``.graphml`` refuses a position-aware graph (:class:`GraphFormatError`): save it as ``.pt`` or ``.json``, or
  save ``graph.summed()``.
* MIB's ``.pt`` (:func:`write_mib_pt`) and submissions hold the summed view.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from circuits.errors import CircuitsError
from circuits.graph.structure import GraphMismatchError as GraphMismatchError, GraphStructure  # re-exported

if TYPE_CHECKING:  # pragma: no cover
    from circuits.graph.graph import Graph

SUFFIXES = (".json", ".graphml", ".pt")
PT_FORMAT = "circuits.Graph"
PT_VERSION = 1
POSITIONS_FORMAT = "circuits.Graph.positions"
#: The largest [senders, receivers] score matrix a file may ask for (Llama-3.1-405B's has 0.79e9 entries): a
#: damaged cfg must not make the loader allocate terabytes.
MAX_MATRIX = 2**31


class GraphFormatError(CircuitsError, ValueError):
    """A graph file that cannot be read: malformed, or missing a key this format requires."""


class GraphNotFoundError(CircuitsError, FileNotFoundError):
    """No graph file at the path given."""


class HasStructure(Protocol):
    """What :func:`load` needs from a model: its graph layout (a ``name``, when it has one, goes in messages)."""

    @property
    def structure(self) -> GraphStructure: ...


# ---- shared ---------------------------------------------------------------------------------------------------
def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise GraphFormatError(f"{path}: unknown graph file type {suffix!r}; use one of {', '.join(SUFFIXES)}")
    return suffix


def structure_from_cfg(cfg: Any, source: str | os.PathLike) -> GraphStructure:
    """MIB's ``cfg`` block -> :class:`GraphStructure`; errors name the file and the key."""
    if not isinstance(cfg, dict):
        raise GraphFormatError(f"{source}: 'cfg' must be an object with n_layers, n_heads, parallel_attn_mlp; "
                               f"got {type(cfg).__name__}")
    for key, kind in (("n_layers", int), ("n_heads", int), ("parallel_attn_mlp", bool)):
        if key not in cfg:
            raise GraphFormatError(f"{source}: cfg has no {key!r} (a MIB graph cfg needs n_layers, n_heads and "
                                   f"parallel_attn_mlp; found {sorted(cfg)})")
        if not isinstance(cfg[key], kind) or (kind is int and isinstance(cfg[key], bool)):
            raise GraphFormatError(f"{source}: cfg[{key!r}] must be {kind.__name__}, got {cfg[key]!r}")
    for key in ("d_model", "n_key_value_heads"):
        value = cfg.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise GraphFormatError(f"{source}: cfg[{key!r}] must be an integer, got {value!r}")
    if not isinstance(cfg.get("grouped_kv", False), bool):
        raise GraphFormatError(f"{source}: cfg['grouped_kv'] must be true or false, got {cfg['grouped_kv']!r}")
    layers, heads = cfg["n_layers"], cfg["n_heads"]
    if layers >= 1 and heads >= 1 and (1 + layers * (heads + 1)) * (1 + layers * (3 * heads + 1)) > MAX_MATRIX:
        raise GraphFormatError(f"{source}: cfg n_layers={layers}, n_heads={heads} is larger than any model (its "
                               f"score matrix would exceed {MAX_MATRIX:,} entries); check the cfg block")
    try:
        return GraphStructure(n_layers=cfg["n_layers"], n_heads=cfg["n_heads"],
                              n_kv_heads=cfg.get("n_key_value_heads"),
                              parallel_attn_mlp=cfg["parallel_attn_mlp"], d_model=cfg.get("d_model"),
                              has_mlp=not cfg.get("attn_only", False), grouped_kv=cfg.get("grouped_kv", False))
    except ValueError as e:
        raise GraphFormatError(f"{source}: invalid cfg {cfg}: {e}") from None


def _resolve_structure(cfg: Any, model: HasStructure | None, source: str | os.PathLike) -> GraphStructure:
    st = structure_from_cfg(cfg, source)
    if model is None:
        return st
    return st.check_fits(model.structure, source=source, model_name=getattr(model, "name", None) or
                         type(model).__name__, compare_kv="n_key_value_heads" in cfg)


def _empty_tensors(st: GraphStructure) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores [S, R] float64, NaN on every edge, 0 elsewhere; in_graph [S, R] all False)``."""
    scores = torch.zeros(st.n_senders, st.n_receivers, dtype=torch.float64)
    scores[st.edge_mask] = math.nan
    return scores, torch.zeros(st.n_senders, st.n_receivers, dtype=torch.bool)


def save(graph: Graph, path: str | os.PathLike) -> Path:
    """Write ``graph`` to ``path``; the format follows the suffix (.json, .graphml, .pt)."""
    path = Path(path)
    suffix = _suffix(path)
    try:
        json.dumps(graph.metadata, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"cannot save {path}: graph.metadata must be JSON-serializable ({e})") from None
    if suffix == ".graphml" and graph.n_positions is not None:
        raise GraphFormatError(f"cannot save {path}: GraphML holds no position axis, and this graph has "
                               f"{graph.n_positions} positions; save it as .pt (keeps the axis) or .json (MIB's "
                               "format: the summed view plus a .positions.pt sidecar), or save graph.summed() as "
                               ".graphml")
    path.parent.mkdir(parents=True, exist_ok=True)
    {".json": _write_json, ".graphml": _write_graphml, ".pt": _write_pt}[suffix](graph, path)
    return path


def load(path: str | os.PathLike, model: HasStructure | None = None) -> Graph:
    """Read a graph file; with ``model``, check it was made for the model's shape (``structure.check_fits``)."""
    path = Path(path)
    suffix = _suffix(path)
    if not path.exists():
        raise GraphNotFoundError(f"no graph file at {path}; check the path (graphs are written by "
                                 "`circuits discover --out` or graph.save)")
    return {".json": _read_json, ".graphml": _read_graphml, ".pt": _read_pt}[suffix](path, model)


# ---- JSON (MIB) -----------------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _edge_names(st: GraphStructure) -> tuple[str, ...]:
    return tuple(st.edge_names())


def to_mib_dict(graph: Graph) -> dict:
    """The MIB JSON document for ``graph`` (what ``.json`` files hold; a position-aware graph's summed view)."""
    if graph.n_positions is not None:
        graph = graph.summed()
    st = graph.structure
    order = st.on(graph.scores.device).edge_order
    scores = graph.scores.detach()[order[:, 0], order[:, 1]].cpu().tolist()  # exact float64 of each score
    flags = graph.in_graph[order[:, 0], order[:, 1]].cpu().tolist()
    node_in = graph.node_in_graph.cpu().tolist()
    nodes: dict[str, dict] = {n.name: {"in_graph": bool(f)} for n, f in zip(st.nodes, node_in)}
    if graph.node_scores is not None:
        for n, score in zip(st.nodes, graph.node_scores.detach().cpu().tolist()):
            nodes[n.name]["score"] = score
    edges = {name: {"score": s, "in_graph": f} for name, s, f in zip(_edge_names(st), scores, flags)}
    out: dict[str, Any] = {"cfg": st.cfg(), "nodes": nodes, "edges": edges}
    if graph.neuron_scores is not None or graph._neuron_in_graph is not None:
        out["neurons"] = neurons_dict(graph)  # circuits' extension; MIB's readers ignore the key
    if graph.metadata:
        out["metadata"] = graph.metadata
    return out


def neurons_dict(graph: Graph) -> dict[str, Any]:
    """The ``"neurons"`` block of a graph file: ``scores`` and ``in_graph``, ``[n_layers][d_mlp]`` lists (null when
    absent; in_graph null means every neuron)."""
    scores, kept = graph.neuron_scores, graph._neuron_in_graph
    return {"scores": None if scores is None else scores.detach().cpu().double().tolist(),
            "in_graph": None if kept is None else kept.cpu().tolist()}


def _read_neurons(block: Any, source: str | os.PathLike) -> dict[str, torch.Tensor | None]:
    """The Graph keyword arguments of a ``"neurons"`` block (:func:`neurons_dict`)."""
    if block is None:
        return {}
    if not isinstance(block, dict) or not {"scores", "in_graph"} >= set(block):
        raise GraphFormatError(f"{source}: 'neurons' must be an object with 'scores' and 'in_graph' "
                               "([n_layers][d_mlp] lists or null)")
    try:
        scores = None if block.get("scores") is None else torch.tensor(block["scores"], dtype=torch.float64)
        kept = None if block.get("in_graph") is None else torch.tensor(block["in_graph"], dtype=torch.bool)
    except (TypeError, ValueError) as e:
        raise GraphFormatError(f"{source}: 'neurons' holds no [n_layers][d_mlp] lists ({e})") from None
    return {"neuron_scores": scores, "neuron_in_graph": kept}


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the position sidecar of a ``.json`` graph file lies: ``x.json`` -> ``x.positions.pt``."""
    path = Path(path)
    return path.with_name(path.stem + ".positions.pt")


def _write_json(graph: Graph, path: Path) -> None:
    text = json.dumps(to_mib_dict(graph))  # one-shot dumps uses the C encoder; json.dump would not
    with open(path, "w") as f:
        f.write(text)
    side = sidecar_path(path)
    if graph.n_positions is None:
        if side.exists() and _is_sidecar(side):
            side.unlink()  # the old file's sidecar: it would restore positions this graph does not have
        return
    explicit = graph._node_in_graph
    torch.save({"format": POSITIONS_FORMAT, "version": PT_VERSION, "cfg": graph.structure.cfg(),
                "n_positions": graph.n_positions,
                "scores": graph.scores.detach().cpu(),  # [S, R, L]
                "in_graph": graph.in_graph.cpu(),  # [S, R, L]
                "node_in_graph": None if explicit is None else explicit.cpu(),
                "metadata": json.dumps(graph.metadata)}, side)


def _is_sidecar(path: Path) -> bool:
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not ours (or unreadable): leave it alone
        return False
    return isinstance(d, dict) and d.get("format") == POSITIONS_FORMAT


def _read_json(path: Path, model: HasStructure | None) -> Graph:
    try:
        with open(path) as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise GraphFormatError(f"{path}: not valid JSON ({e})") from None
    graph = from_mib_dict(doc, model=model, source=path)
    side = sidecar_path(path)
    return _with_positions(graph, side) if side.exists() else graph


def _with_positions(summed: Graph, side: Path) -> Graph:
    """The position-aware graph of a ``.json`` file's sidecar, checked against the file's summed graph."""
    from circuits.graph.graph import Graph

    try:
        d = torch.load(side, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt or foreign file
        raise GraphFormatError(f"{side}: not a readable position sidecar ({e})") from None
    if not isinstance(d, dict) or d.get("format") != POSITIONS_FORMAT:
        raise GraphFormatError(f"{side}: not a circuits position sidecar (no format={POSITIONS_FORMAT!r}); move it "
                               "away to load the JSON file's summed graph")
    st = summed.structure
    L = d.get("n_positions")
    scores, in_graph = d.get("scores"), d.get("in_graph")
    shape = (st.n_senders, st.n_receivers, L)
    if (not isinstance(L, int) or not isinstance(scores, torch.Tensor) or not isinstance(in_graph, torch.Tensor)
            or tuple(scores.shape) != shape or tuple(in_graph.shape) != shape):
        raise GraphFormatError(f"{side}: the sidecar's tensors do not fit {st.describe()} with n_positions={L!r} "
                               f"(expected [S, R, L] = {list(shape)})")
    if structure_from_cfg(d.get("cfg"), side).cfg() != st.cfg():
        raise GraphFormatError(f"{side}: the sidecar was written for another graph ({d.get('cfg')}), not "
                               f"{st.cfg()}")
    metadata = json.loads(d.get("metadata") or "{}")
    metadata["positions_sidecar"] = side.name
    graph = Graph(st, scores=scores, in_graph=in_graph, node_scores=summed.node_scores,
                  node_in_graph=d.get("node_in_graph"), metadata=metadata, **summed._neurons())
    view = graph.summed()
    mask = st.edge_mask
    a, b = view.scores.double()[mask], summed.scores.double()[mask]
    if not (torch.equal(view.in_graph, summed.in_graph)
            and bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())):
        warnings.warn(f"{side}: the position sidecar does not match its JSON file (was the JSON written or edited "
                      "without it?); loading the JSON's summed graph instead", stacklevel=4)
        return summed
    return graph


def from_mib_dict(doc: Any, model: HasStructure | None = None, source: str | os.PathLike = "<dict>") -> Graph:
    """Build a :class:`Graph` from a parsed MIB JSON document (the inverse of :func:`to_mib_dict`)."""
    from circuits.graph.graph import Graph

    if not isinstance(doc, dict):
        raise GraphFormatError(f"{source}: a graph file is a JSON object with 'cfg', 'nodes' and 'edges', "
                               f"got {type(doc).__name__}")
    for key in ("cfg", "edges"):
        if key not in doc:
            raise GraphFormatError(f"{source}: no {key!r} key (MIB graph files have 'cfg', 'nodes', 'edges'; "
                                   f"found {sorted(doc)})")
    st = _resolve_structure(doc["cfg"], model, source)
    edges = doc["edges"]
    if not isinstance(edges, dict):
        raise GraphFormatError(f"{source}: 'edges' must map 'SENDER->RECEIVER' to {{'score', 'in_graph'}}")

    names = list(edges)
    values = list(edges.values())
    score_list: list[float] = []
    flag_list: list[bool] = []
    for name, v in zip(names, values):  # one pass; the checks cost little next to json.load
        if not isinstance(v, dict) or "in_graph" not in v:
            raise GraphFormatError(f"{source}: edges[{name!r}] must be an object with 'score' and 'in_graph', "
                                   f"got {v!r}")
        s, f = v.get("score"), v["in_graph"]
        if s is None:
            s = math.nan  # EAP-IG writes null for unscored edges
        elif not isinstance(s, (int, float)) or isinstance(s, bool):
            raise GraphFormatError(f"{source}: edges[{name!r}]['score'] must be a number, got {s!r}")
        if not isinstance(f, bool):
            raise GraphFormatError(f"{source}: edges[{name!r}]['in_graph'] must be true or false, got {f!r}")
        score_list.append(float(s))
        flag_list.append(f)

    if tuple(names) == _edge_names(st):  # the usual case: every edge, in MIB order
        index = st.edge_order
    else:
        rows = []
        for name in names:
            try:
                rows.append(st.edge_index(name))
            except KeyError as e:
                raise GraphFormatError(f"{source}: edges[{name!r}]: {e.args[0]}") from None
        index = torch.tensor(rows, dtype=torch.long).view(-1, 2)
        if len(names) < st.n_edges:
            warnings.warn(f"{source}: {st.n_edges - len(names):,} of {st.n_edges:,} edges are missing; they are "
                          "loaded as unscored (NaN) and outside the circuit", stacklevel=3)
    scores, in_graph = _empty_tensors(st)
    scores[index[:, 0], index[:, 1]] = torch.tensor(score_list, dtype=torch.float64)
    in_graph[index[:, 0], index[:, 1]] = torch.tensor(flag_list, dtype=torch.bool)

    node_in_graph, node_scores = _read_nodes(doc.get("nodes"), st, in_graph, source)
    metadata = doc.get("metadata", {})
    if not isinstance(metadata, dict):
        raise GraphFormatError(f"{source}: 'metadata' must be an object, got {type(metadata).__name__}")
    return Graph(st, scores=scores, in_graph=in_graph, node_scores=node_scores, node_in_graph=node_in_graph,
                 metadata=metadata, **_read_neurons(doc.get("neurons"), source))


def _read_nodes(nodes: Any, st: GraphStructure, in_graph: torch.Tensor,
                source: str | os.PathLike) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``nodes`` block -> (explicit node mask or None, node scores or None); accepts EAP-IG's old ``{name: bool}``."""
    from circuits.graph.pruning import node_mask

    if nodes is None:
        return None, None
    if not isinstance(nodes, dict):
        raise GraphFormatError(f"{source}: 'nodes' must map node names to {{'in_graph': bool}}")
    mask = node_mask(st, in_graph)  # nodes the file does not list keep the value their edges imply
    scores: torch.Tensor | None = None
    for name, v in nodes.items():
        try:
            i = st.node_index(name)
        except KeyError as e:
            raise GraphFormatError(f"{source}: nodes[{name!r}]: {e.args[0]}") from None
        if isinstance(v, bool):
            v = {"in_graph": v}
        if not isinstance(v, dict) or not isinstance(v.get("in_graph"), bool):
            raise GraphFormatError(f"{source}: nodes[{name!r}] must be {{'in_graph': true|false}}, got {v!r}")
        mask[i] = v["in_graph"]
        if "score" in v:
            s = v["score"]
            if s is not None and (not isinstance(s, (int, float)) or isinstance(s, bool)):
                raise GraphFormatError(f"{source}: nodes[{name!r}]['score'] must be a number, got {s!r}")
            if scores is None:
                scores = torch.full((st.n_nodes,), math.nan, dtype=torch.float64)
            scores[i] = math.nan if s is None else float(s)
    return mask, scores


# ---- GraphML ----------------------------------------------------------------------------------------------------
def _write_graphml(graph: Graph, path: Path) -> None:
    import networkx as nx

    g = graph.to_networkx(circuit_only=False)
    g.graph = {"format": PT_FORMAT, "cfg": json.dumps(g.graph["cfg"]), "metadata": json.dumps(g.graph["metadata"])}
    nx.write_graphml(g, path)


def _read_graphml(path: Path, model: HasStructure | None) -> Graph:
    from xml.etree.ElementTree import ParseError

    import networkx as nx

    from circuits.graph.graph import Graph

    try:
        g = nx.read_graphml(path)
    except (ParseError, nx.NetworkXError) as e:
        raise GraphFormatError(f"{path}: not a readable GraphML file ({e})") from None
    if "cfg" not in g.graph:
        raise GraphFormatError(f"{path}: the GraphML graph has no 'cfg' attribute (write it with Graph.save)")
    try:
        cfg = json.loads(g.graph["cfg"])
        metadata = json.loads(g.graph.get("metadata", "{}"))
    except (TypeError, json.JSONDecodeError) as e:
        raise GraphFormatError(f"{path}: graph attribute 'cfg' or 'metadata' is not JSON ({e})") from None
    st = _resolve_structure(cfg, model, path)
    scores, in_graph = _empty_tensors(st)
    rows: list[tuple[int, int]] = []
    vals: list[float] = []
    flags: list[bool] = []
    for u, v, d in g.edges(data=True):
        if d.get("structural", False):
            continue
        name = f"{u}->{v}"
        try:
            rows.append(st.edge_index(name))
            vals.append(float(d["score"]))
            flags.append(bool(d["in_circuit"]))
        except KeyError as e:
            raise GraphFormatError(f"{path}: edge {name!r}: missing or unknown {e.args[0]}") from None
    if rows:
        index = torch.tensor(rows, dtype=torch.long)
        scores[index[:, 0], index[:, 1]] = torch.tensor(vals, dtype=torch.float64)
        in_graph[index[:, 0], index[:, 1]] = torch.tensor(flags, dtype=torch.bool)

    node_in_graph = None
    node_scores = None
    for name, d in g.nodes(data=True):
        if d.get("kind") == "qkv":
            continue
        try:
            i = st.node_index(name)
        except KeyError as e:
            raise GraphFormatError(f"{path}: node {name!r}: {e.args[0]}") from None
        if "in_circuit" in d:
            if node_in_graph is None:
                from circuits.graph.pruning import node_mask
                node_in_graph = node_mask(st, in_graph)
            node_in_graph[i] = bool(d["in_circuit"])
        if "score" in d:
            if node_scores is None:
                node_scores = torch.full((st.n_nodes,), math.nan, dtype=torch.float64)
            node_scores[i] = float(d["score"])
    return Graph(st, scores=scores, in_graph=in_graph, node_scores=node_scores, node_in_graph=node_in_graph,
                 metadata=metadata)


# ---- .pt --------------------------------------------------------------------------------------------------------
def _write_pt(graph: Graph, path: Path) -> None:
    explicit = graph._node_in_graph
    torch.save({
        "format": PT_FORMAT, "version": PT_VERSION, "cfg": graph.structure.cfg(),
        "n_positions": graph.n_positions,  # None, or L of [S, R, L] tensors
        "scores": graph.scores.detach().cpu(),  # [S, R] or [S, R, L]
        "in_graph": graph.in_graph.cpu(),  # [S, R] or [S, R, L]
        "node_scores": None if graph.node_scores is None else graph.node_scores.detach().cpu(),  # [n_nodes]
        "node_in_graph": None if explicit is None else explicit.cpu(),  # [n_nodes]
        "neuron_scores": None if graph.neuron_scores is None else graph.neuron_scores.detach().cpu(),  # [L, m]
        "neuron_in_graph": None if graph._neuron_in_graph is None else graph._neuron_in_graph.cpu(),  # [L, m]
        "metadata": json.dumps(graph.metadata),
    }, path)


def _read_pt(path: Path, model: HasStructure | None) -> Graph:
    from circuits.graph.graph import Graph

    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt or foreign file
        raise GraphFormatError(f"{path}: not a readable circuits graph .pt file ({e})") from None
    if isinstance(d, dict) and "format" not in d and "edges_scores" in d:
        return from_mib_pt_dict(d, model=model, source=path)
    if isinstance(d, dict) and d.get("format") == POSITIONS_FORMAT:
        raise GraphFormatError(f"{path}: a position sidecar, not a graph file; load the .json file beside it")
    if not isinstance(d, dict) or d.get("format") != PT_FORMAT:
        raise GraphFormatError(f"{path}: not a circuits graph file (no format={PT_FORMAT!r} entry) nor MIB's "
                               "(no 'edges_scores')")
    for key in ("cfg", "scores", "in_graph"):
        if key not in d:
            raise GraphFormatError(f"{path}: no {key!r} entry")
    st = _resolve_structure(d["cfg"], model, path)
    L = d.get("n_positions")
    if L is not None and (not isinstance(L, int) or isinstance(L, bool) or L < 1):
        raise GraphFormatError(f"{path}: n_positions must be a positive integer or None, got {L!r}")
    shape: tuple[int, ...] = (st.n_senders, st.n_receivers) if L is None else (st.n_senders, st.n_receivers, L)
    for key in ("scores", "in_graph"):
        if not isinstance(d[key], torch.Tensor) or tuple(d[key].shape) != shape:
            got = tuple(d[key].shape) if isinstance(d[key], torch.Tensor) else type(d[key]).__name__
            raise GraphFormatError(f"{path}: {key} has shape {got}, expected {shape} for {st.describe()}"
                                   + ("" if L is None else f" with {L} positions"))
    return Graph(st, scores=d["scores"], in_graph=d["in_graph"], node_scores=d.get("node_scores"),
                 node_in_graph=d.get("node_in_graph"), metadata=json.loads(d.get("metadata") or "{}"),
                 neuron_scores=d.get("neuron_scores"), neuron_in_graph=d.get("neuron_in_graph"))


# ---- MIB's .pt -------------------------------------------------------------------------------------------------
MIB_PT_KEYS = ("cfg", "src_nodes", "dst_nodes", "edges_scores", "edges_in_graph", "nodes_in_graph")


def to_mib_pt_dict(graph: Graph, *, scores: bool = True) -> dict[str, Any]:
    """MIB's / EAP-IG's ``.pt`` layout: the full ``[senders, receivers]`` grid in MIB's node orders, ``-inf`` where
    the pair is not an edge (so no evaluator can rank it); ``scores=False`` writes a circuit (no scores: zeros).
    Grouped k/v receivers are expanded to MIB's per-head ones (:func:`~circuits.graph.grouped.expand_grouped`)."""
    from circuits.graph.grouped import expand_grouped

    if graph.n_positions is not None:
        graph = graph.summed()
    graph = expand_grouped(graph)
    st = graph.structure
    mask = st.edge_mask  # [S, R]
    grid = graph.scores.detach().cpu().float() if scores else torch.zeros(st.n_senders, st.n_receivers)
    grid = grid.masked_fill(~mask, -math.inf)  # [S, R] float32
    d: dict[str, Any] = {"cfg": st.cfg(), "src_nodes": [n.name for n in st.senders],
                         "dst_nodes": [r.name for r in st.receivers], "edges_scores": grid,
                         "edges_in_graph": graph.in_graph.detach().cpu().clone(),  # [S, R] bool
                         "nodes_in_graph": graph.node_in_graph.detach().cpu().clone()}  # [n_nodes] bool
    if scores and graph.node_scores is not None:
        d["nodes_scores"] = graph.node_scores.detach().cpu().float()
    return d


def write_mib_pt(graph: Graph, path: str | os.PathLike, *, scores: bool = True) -> Path:
    """Write ``graph`` as MIB's ``.pt`` file (see :func:`to_mib_pt_dict`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(to_mib_pt_dict(graph, scores=scores), path)
    return path


def from_mib_pt_dict(d: dict, model: HasStructure | None = None,
                     source: str | os.PathLike = "<dict>") -> Graph:
    """Build a :class:`Graph` from MIB's ``.pt`` dict; the grid's non-edge entries are ignored (MIB masks them)."""
    from circuits.graph.graph import Graph

    missing = [k for k in ("cfg", "edges_scores", "edges_in_graph") if k not in d]
    if missing:
        raise GraphFormatError(f"{source}: MIB .pt file without {missing} (it needs {', '.join(MIB_PT_KEYS)})")
    st = _resolve_structure(d["cfg"], model, source)
    shape = (st.n_senders, st.n_receivers)
    grid, flags = d["edges_scores"], d["edges_in_graph"]
    for key, t in (("edges_scores", grid), ("edges_in_graph", flags)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise GraphFormatError(f"{source}: {key} must be a [senders, receivers] = {list(shape)} tensor for "
                                   f"{st.describe()}, got {got}")
    for key, expected in (("src_nodes", [n.name for n in st.senders]), ("dst_nodes", [r.name for r in st.receivers])):
        names = d.get(key)
        if names is not None and list(names) != expected:
            first = next((i for i, (a, b) in enumerate(zip(list(names), expected)) if a != b), min(len(names),
                                                                                                  len(expected)))
            raise GraphFormatError(f"{source}: {key} differs from MIB's order at position {first} "
                                   f"(expected {expected[first] if first < len(expected) else 'the end'!r}); "
                                   "the grid's rows and columns must follow MIB's node order")
    mask = st.edge_mask
    scores = grid.detach().to(torch.float64).masked_fill(~mask, 0.0)  # [S, R]
    node_in = d.get("nodes_in_graph")
    if node_in is not None and (not isinstance(node_in, torch.Tensor) or node_in.numel() != st.n_nodes):
        node_in = None  # EAP-IG versions differ in its length; the edges decide then
    return Graph(st, scores=scores, in_graph=flags.bool() & mask,
                 node_in_graph=None if node_in is None else node_in.bool().flatten(), metadata={})
