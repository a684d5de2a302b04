"""``circuits discover``: score a model's edges for a task and write the scored graph."""

from __future__ import annotations

import argparse
import time
import tomllib
from pathlib import Path
from typing import Any

from circuits.cli.options import (
    UsageError,
    add_memory_arguments,
    add_worker_options,
    check_workers,
    memory_options,
    model_options,
    parse_params,
    worker_pool,
)

EPILOG = """examples:
  circuits discover                                             # EAP-IG on the bundled zoo:planted-ioi
  circuits discover --task greater-than --method eap --n 100
  circuits discover --model gpt2 --task ioi --method eap-ig --param steps=10 --out graphs/gpt2-ioi.json
  circuits discover --method exact --checkpoint runs/exact.ckpt  # interrupt and run again to resume
  circuits discover --config discovery/ioi.toml --method acdc --param threshold=0.02
  circuits discover --model gpt2 --task ioi --method eap-ig --workers 4              # 4 Ray actors (GPUs)
  circuits discover --model gpt2 --task ioi --method exact --workers 8 --address auto # a running Ray cluster
  circuits discover --model random:llama-3.1-8b --method eap-ig --memory-budget 60GB  # chunked to fit, or refused
  circuits discover --model random:qwen2.5-0.5b --grouped-kv --method eap   # k/v receivers per key/value group
  circuits discover --task induction --method exact --positions --align-positions  # one score per edge and position

A --config TOML file holds the same options as keys (model, task, method, n, seed, ablation, split,
batch_size, out, top, device, dtype, checkpoint, workers, address, memory_budget, examples_per_pass,
position_chunk, grouped_kv, positions, align_positions, and a [params] table); the command line overrides it.
"""

DEFAULT_MODEL = "zoo:planted-ioi"  # bundled, with a known circuit: the first run needs no download

OPTIONS = ("model", "task", "method", "n", "seed", "ablation", "split", "batch_size", "out", "top", "device",
           "dtype", "checkpoint", "params", "workers", "address", "memory_budget", "examples_per_pass",
           "position_chunk", "grouped_kv", "positions", "align_positions")


def load_config(path: str) -> dict:
    """A run configuration TOML; unknown keys are named with the allowed ones."""
    try:
        config = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{path}: not valid TOML: {err}") from None
    unknown = sorted(set(config) - set(OPTIONS))
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(OPTIONS)}")
    return config


def run(args: argparse.Namespace) -> int:
    import circuits

    config = load_config(args.config) if args.config else {}
    opts: dict[str, Any] = {k: config.get(k) for k in OPTIONS}
    for key in OPTIONS:  # the command line wins over the file
        value = getattr(args, key, None)
        if value is not None and key != "params":
            opts[key] = value
    defaults = dict(model=DEFAULT_MODEL, method="eap-ig", n=200, seed=0, ablation="corrupted", split="train",
                    batch_size=16)
    opts = {k: (defaults.get(k) if v is None else v) for k, v in opts.items()}
    if opts["task"] is None:  # a bundled model's own task, else IOI
        opts["task"] = _zoo_file(opts["model"], "task.toml") or "ioi"

    # the merged options are untyped (TOML values, argparse strings and ints, defaults): convert them once
    task_spec, method = str(opts["task"]), str(opts["method"])
    ablation, split = str(opts["ablation"]), str(opts["split"])
    n, seed, batch_size = (_integer(opts, key, low) for key, low in (("n", 2), ("seed", 0), ("batch_size", 1)))
    params = parse_params(args.param or [], method, config.get("params"))  # every check before the model loads
    if opts["positions"]:
        from circuits.discovery import METHODS

        if "positions" not in METHODS[method].parameters:
            takes = sorted(name for name, m in METHODS.items() if "positions" in m.parameters)
            raise UsageError(f"--positions: method {method!r} has no position-aware form; use one of "
                             f"{', '.join(takes)}")
        params["positions"] = True
    check_workers(opts["workers"], opts["address"])
    memory = memory_options(_text(opts["memory_budget"]), *(_optional_integer(opts, key)
                                                           for key in ("examples_per_pass", "position_chunk")))

    start = time.perf_counter()
    if not isinstance(opts["grouped_kv"], (bool, type(None))):
        raise UsageError(f"grouped_kv must be true or false, got {opts['grouped_kv']!r}")
    model = circuits.load_model(opts["model"], **model_options(opts["device"], opts["dtype"]),
                                grouped_kv=bool(opts["grouped_kv"]))
    task = circuits.load_task(task_spec, model, n=n, seed=seed)
    if opts["align_positions"]:
        before = len(task)
        task = task.aligned()
        print(f"align  kept the {len(task)} of {before} pairs of {task.options['aligned_length']} tokens")
    print(f"model  {model.name}: {model.structure.describe()}, {model.structure.n_edges:,} edges")
    print(f"task   {task.name}: {len(task)} pairs ({opts['split']} split used for discovery), metric "
          f"{task.base_metric.name}")
    with worker_pool(opts["workers"], opts["address"], opts["model"], task, ablation=ablation, split=split,
                     batch_size=batch_size, dtype=opts["dtype"],
                     grouped_kv=opts["grouped_kv"]) as pool:  # None without --workers
        graph = circuits.discover(model, task, method, ablation=ablation, split=split, batch_size=batch_size,
                                  checkpoint=opts["checkpoint"], workers=pool, **memory, **params)
    meta = graph.metadata
    print(f"method {meta['method']} {meta['params']}, ablation {meta['ablation']}: {meta['wall_time_s']:.1f} s")
    frame = graph.to_frame()
    if meta["level"] == "node":
        import pandas as pd

        if graph.node_scores is None:
            raise RuntimeError(f"method {meta['method']} made a node-level graph without node scores")
        names = [node.name for node in model.structure.nodes]
        frame = pd.DataFrame({"node": names, "score": graph.node_scores.tolist()})
    neurons, node_scores = graph.neuron_scores, graph.node_scores
    if meta["level"] == "neuron" and neurons is not None and node_scores is not None:  # heads, neurons ranked
        import pandas as pd

        s = model.structure
        heads = [s.head_sender(layer, h) for layer in range(s.n_layers) for h in range(s.n_heads)]
        L, m = neurons.shape
        names = [s.nodes[i].name for i in heads] + [f"m{layer}.n{i}" for layer in range(L) for i in range(m)]
        scores = node_scores[heads].tolist() + neurons.flatten().tolist()
        frame = pd.DataFrame({"node": names, "score": scores})
    frame = frame.dropna(subset=["score"]).sort_values("score", ascending=False, kind="stable")
    top = int(opts["top"] or 10)
    print(f"\ntop {top} by score (positive = helps the task):")
    print(frame.head(top)[[c for c in ("name", "node", "score") if c in frame]].to_string(index=False))
    out = opts["out"] or f"graphs/{Path(str(opts['model'])).name.replace(':', '-')}_{task.name}_{meta['method']}.json"
    path = graph.save(out)
    written = [f"{path} (every edge scored, MIB JSON; load with circuits.Graph.load)"]
    if meta["level"] == "edge" and not args.no_evaluate:
        written += _evaluate_and_draw(model, task, graph, opts, Path(path))
    print("\nwrote  " + "\n       ".join(written))
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _integer(opts: dict, key: str, low: int) -> int:
    """An integer option (from the command line or the config file) of at least ``low``."""
    value = opts[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise UsageError(f"--{key.replace('_', '-')} {value!r}: expected an integer >= {low}")
    return value


def _optional_integer(opts: dict, key: str) -> int | None:
    return None if opts[key] is None else _integer(opts, key, 1)


def _text(value) -> str | None:
    return None if value is None else str(value)


def _zoo_file(model_spec, filename: str) -> str | None:
    """A file a bundled model ships (its task, its ground truth), if ``model_spec`` is ``zoo:NAME``."""
    from circuits.zoo import model_dir

    spec = str(model_spec)
    if not spec.startswith("zoo:"):
        return None
    try:
        path = model_dir(spec) / filename
    except FileNotFoundError:
        return None
    return str(path) if path.is_file() else None


def _evaluate_and_draw(model, task, graph, opts: dict, path: Path) -> list[str]:
    """The smallest circuit that keeps 90% of the behaviour on held-out pairs, its drawing, and, for planted
    models, how well the scores recover the known circuit."""
    import circuits
    from circuits.evaluation import minimal_circuit

    written = []
    circuit = minimal_circuit(model, task, graph, target=0.9, ablation=opts["ablation"])
    info = circuit.metadata.get("minimal", {})
    f = info.get("faithfulness", info.get("f", float("nan")))
    print(f"\ncircuit: the smallest top-k with faithfulness >= 0.9 on the validation split keeps "
          f"{circuit.n_edges} of {model.structure.n_edges:,} edges, {circuit.n_nodes} nodes (f = {f:.3f})")
    truth_file = _zoo_file(opts["model"], "ground_truth.json")
    if truth_file:
        from circuits.evaluation import auroc, precision_recall_at_size

        truth = circuits.Graph.load(truth_file, model=model)
        pr = precision_recall_at_size(graph, truth, absolute=True)
        print(f"ground truth ({truth.n_edges} planted edges): AUROC {auroc(graph, truth, absolute=True):.3f}, "
              f"precision/recall at its size {pr['precision']:.2f}/{pr['recall']:.2f}; "
              f"found circuit == planted: {set(circuit.edges) == set(truth.edges)}")
    circuit_path = circuit.save(path.with_name(path.stem + "_circuit.json"))
    written.append(f"{circuit_path} (the circuit)")
    try:
        from circuits.plotting import draw_circuit
    except ImportError:  # plotting is optional for headless installs without matplotlib
        return written
    picture = path.with_name(path.stem + "_circuit.png")
    draw_circuit(circuit, picture, title=f"{model.name} / {task.name} / {graph.metadata['method']}: "
                                        f"{circuit.n_edges} edges, f = {f:.2f}")
    written.append(f"{picture} (its drawing)")
    return written


def add_parser(sub) -> None:
    p = sub.add_parser("discover", help="score every edge of a model's graph for a task (EAP, EAP-IG, ACDC, ...)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="a TOML file with these options (see discovery/)")
    p.add_argument("--model", help=f"hub id, local folder, zoo:NAME or random:PRESET (default: {DEFAULT_MODEL})")
    p.add_argument("--task", help="task name, tasks/*.toml, or a pairs file (default: a bundled model's own task, "
                                  "else ioi)")
    p.add_argument("--method", help="a discovery method, e.g. eap-ig (the default), eap, exact, acdc, edge-pruning, "
                                    "node-patching, eap-ig-neurons; a name that is not one lists them all")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="a method parameter, e.g. steps=10")
    p.add_argument("--n", type=int, help="pairs to build (default: 200; half for discovery)")
    p.add_argument("--seed", type=int, help="task seed (default: 0)")
    p.add_argument("--ablation", choices=("corrupted", "mean", "zero"), help="default: corrupted")
    p.add_argument("--split", choices=("train", "validation", "all"), help="data split to discover on")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="pairs per batch (default: 16)")
    p.add_argument("--checkpoint", help="save progress here and resume from it (exact, acdc, edge-pruning)")
    p.add_argument("--out", help="where to write the scored graph (.json, .graphml, .pt)")
    p.add_argument("--top", type=int, help="how many top edges to print (default: 10)")
    p.add_argument("--no-evaluate", action="store_true", help="skip the minimal circuit, ground-truth comparison "
                   "and drawing that follow discovery")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", help="float32, bfloat16, ... (default: the checkpoint's)")
    add_worker_options(p)
    add_memory_arguments(p)
    p.add_argument("--grouped-kv", dest="grouped_kv", action="store_const", const=True, default=None,
                   help="k/v receivers per key/value group instead of MIB's per query head (grouped-query models; "
                        "Llama-3.1-8B: 805,681 edges instead of 1,592,881; MIB export expands them)")
    p.add_argument("--positions", action="store_const", const=True, default=None,
                   help="position-aware edges: one score (and circuit flag) per edge and position, [S, R, L] "
                        "(eap, eap-ig, eap-ig-activations, exact, acdc; needs pairs of one length)")
    p.add_argument("--align-positions", dest="align_positions", action="store_const", const=True, default=None,
                   help="keep the pairs of the task's most common token length (what --positions needs)")
    p.set_defaults(func=run)

