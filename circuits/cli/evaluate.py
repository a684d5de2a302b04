"""``circuits evaluate`` and ``circuits reproduce``: faithfulness of circuits, and the published circuits re-found."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

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

EPILOG_EVALUATE = """examples:
  circuits evaluate --model gpt2 --task ioi --graph graphs/ioi-eap-ig.json --k 200
  circuits evaluate --model gpt2 --task ioi --graph graphs/ioi-eap-ig.json --curve            # MIB curve, CPR
  circuits evaluate --model gpt2 --task ioi --graph graphs/ioi-eap-ig.json --curve --absolute # CMD's curve
  circuits evaluate --model gpt2 --task ioi --graph published:ioi --ablation mean
  circuits evaluate --model gpt2 --task ioi --graph scored.json --minimal 0.9 --save results/min.json
  circuits evaluate --model gpt2 --task ioi --graph scored.json --curve --workers 4 [--address auto]  # on Ray

The graph is evaluated as it is (its in_graph edges) unless --k, --fraction or --threshold selects a circuit from
its scores. f = (M(C) - M(empty)) / (M(full) - M(empty)) on the means over the task's validation split.
"""

EPILOG_REPRODUCE = """examples:
  circuits reproduce ioi --model gpt2                   # EAP-IG on IOI, compared with Wang et al.'s circuit
  circuits reproduce greater-than --model gpt2 --n 200 --param steps=10
  circuits reproduce ioi --model ./gpt2-folder --method eap --save results/reproduce-ioi.json

Runs discovery on the task's training split, then reports on its validation split the faithfulness of the
published circuit, of the discovered circuit of the same size, and the AUROC of the discovered scores against
the published circuit. The model's weights must be local (cache or folder); without them it stops at once
and says how to get them.
"""

REPRODUCIBLE = {"ioi": "ioi", "greater-than": "greater-than"}


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _load_graph(spec: str, model):
    import circuits
    from circuits.evaluation import published_circuit

    if spec.startswith("published:"):
        return published_circuit(spec.split(":", 1)[1], model=model)
    return circuits.Graph.load(spec, model=model)


def _task(args, model):
    import circuits

    task = circuits.load_task(args.task, model, n=args.n, seed=args.seed)
    return task.aligned() if getattr(args, "align_positions", False) else task


def _evaluate(args: argparse.Namespace) -> int:
    import circuits
    from circuits.evaluation import evaluate, faithfulness_curve, minimal_circuit

    start = time.perf_counter()
    chosen = [x is not None for x in (args.k, args.fraction, args.threshold)]
    if sum(chosen) > 1:
        raise UsageError("give at most one of --k, --fraction, --threshold")
    check_workers(args.workers, args.address)
    if args.workers is not None and not args.curve:
        raise UsageError("--workers spreads the circuits of a curve (--curve) over Ray actors; one circuit (as given, "
                         "--k, --fraction, --threshold, --minimal) runs in one process: drop --workers")
    memory = memory_options(args.memory_budget, args.examples_per_pass)
    model = circuits.load_model(args.model, **model_options(args.device, args.dtype), grouped_kv=args.grouped_kv)
    graph = _load_graph(args.graph, model)
    task = _task(args, model)
    saved: dict = {"model": model.name, "task": task.name, "graph": args.graph, "ablation": args.ablation,
                   "split": args.split}
    print(f"model     {model.name}: {model.structure.describe()}, {model.structure.n_edges:,} edges")
    if args.curve:
        with worker_pool(args.workers, args.address, args.model, task, ablation=args.ablation, split=args.split,
                         batch_size=args.batch_size, dtype=args.dtype,
                         grouped_kv=args.grouped_kv) as pool:
            if pool is None:
                curve = faithfulness_curve(model, task, graph, absolute=args.absolute, ablation=args.ablation,
                                           split=args.split, batch_size=args.batch_size, level=args.level, **memory)
            else:  # the curve's circuits split over the actors
                curve = pool.faithfulness_curve(graph, absolute=args.absolute, level=args.level)
        print(f"task      {task.name}: {curve.n_examples} {curve.split} examples, metric {curve.metric_name}, "
              f"ablation {curve.ablation}")
        print(f"full      {curve.metric_name} {_fmt(curve.metric_full)}; empty {_fmt(curve.metric_empty)}")
        frame = curve.to_frame()
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        kind = "absolute (|score|, MIB's CMD runs)" if args.absolute else "signed (MIB's CPR runs)"
        print(f"CPR {_fmt(curve.cpr)}   CMD {_fmt(curve.cmd)}   mean f {_fmt(curve.average)}   scores: {kind}")
        saved["curve"] = curve.to_dict()
    else:
        circuit = graph
        how = "as given"
        units = {"level": "neuron"} if args.level == "neuron" else {}  # select heads and MLP neurons
        if args.minimal is not None and units:
            circuit = graph.minimal(model, task, args.minimal, absolute=args.absolute, ablation=args.ablation,
                                    split=args.split, batch_size=args.batch_size, level="neuron")
            info = circuit.metadata["minimal"]
            how = f"minimal top-k heads and neurons reaching f >= {args.minimal}: k = {info['k']}"
            saved["minimal"] = info
        elif args.minimal is not None:
            circuit = minimal_circuit(model, task, graph, args.minimal, absolute=args.absolute, ablation=args.ablation,
                                      split=args.split, batch_size=args.batch_size)
            info = circuit.metadata["minimal"]
            how = f"minimal top-k reaching f >= {args.minimal}: k = {info['k']}"
            saved["minimal"] = info
        elif args.k is not None:
            circuit, how = graph.top_k(args.k, args.absolute, **units), f"top {args.k} {'units' if units else 'edges'}"
        elif args.fraction is not None:
            circuit = graph.top_fraction(args.fraction, args.absolute, **units)
            how = f"top {args.fraction:g} of {'units' if units else 'edges'}"
        elif args.threshold is not None:
            circuit, how = graph.threshold(args.threshold, args.absolute), f"score >= {args.threshold:g}"
        if how != "as given":
            how += " by |score|" if args.absolute else " by score"
        result = evaluate(model, task, circuit, args.ablation, split=args.split, batch_size=args.batch_size,
                          level=args.level, **memory)
        print(f"task      {task.name}: {result.n_examples} {result.split} examples, metric {result.metric_name}, "
              f"ablation {result.ablation}")
        neurons = "" if result.n_neurons is None else f", {result.n_neurons:,} MLP neurons"
        print(f"circuit   {args.graph}, {how}: {result.n_edges:,} edges, {result.n_nodes} nodes{neurons} "
              "(after pruning)")
        print(f"\n{'':14s}{result.metric_name:>12s}{'KL(full||.)':>14s}")
        print(f"{'full model':14s}{result.metric_full:12.4f}{0.0:14.4f}")
        print(f"{'empty circuit':14s}{result.metric_empty:12.4f}{result.kl_empty:14.4f}")
        print(f"{'circuit':14s}{result.metric:12.4f}{result.kl:14.4f}")
        print(f"\nfaithfulness  {_fmt(result.faithfulness)}")
        saved["result"] = result.to_dict()
        if args.save_circuit:
            path = circuit.save(args.save_circuit)
            print(f"wrote     {path} (the evaluated circuit)")
    if args.save:
        path = Path(args.save)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(saved, indent=2) + "\n")
        print(f"wrote     {path} (results as JSON)")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    import circuits
    from circuits.evaluation import auroc, evaluate_many, precision_recall_at_size, published_circuit, select_at_size
    from circuits.interventions.ablation import check_ablation

    start = time.perf_counter()
    name = args.circuit
    args.ablation = check_ablation(args.ablation)
    params = parse_params(args.param or [], args.method)
    # the weights first: without them, stop before anything else
    from circuits.models.loading import ModelNotFoundError

    try:
        model = circuits.load_model(args.model, **model_options(args.device, args.dtype),
                                    grouped_kv=args.grouped_kv)
    except ModelNotFoundError as err:
        raise ModelNotFoundError(f"reproducing the published {name} circuit needs the trained weights of GPT-2 small "
                                 f"(a random-weight model has no such circuit). {err}") from None
    reference = published_circuit(name, model=model)
    try:
        from circuits.discovery import discover
    except ModuleNotFoundError as err:
        if err.name != "circuits.discovery":
            raise
        raise UsageError(f"circuit discovery is not available in this installation ({err})") from None
    task = circuits.load_task(REPRODUCIBLE[name], model, n=args.n, seed=args.seed)
    print(f"model     {model.name}: {model.structure.describe()}, {model.structure.n_edges:,} edges")
    print(f"task      {task.name}: {len(task.train)} train / {len(task.validation)} validation examples, "
          f"metric {task.base_metric.name}, ablation {args.ablation}")
    print(f"published {name}: {reference.n_edges} edges, {reference.n_nodes} nodes ({reference.metadata['citation']})")
    t0 = time.perf_counter()
    scored = discover(model, task, method=args.method, ablation=args.ablation, **params)  # on task.train
    t_discover = time.perf_counter() - t0
    found = select_at_size(scored, reference.n_edges)  # same size after pruning
    k = found.metadata["selection"]["k"]
    r_pub, r_found = evaluate_many(model, task, [reference, found], args.ablation, batch_size=args.batch_size)
    roc = auroc(scored, reference)
    roc_abs = auroc(scored, reference, absolute=True)
    roc_node = auroc(scored, reference, level="node")
    pr = precision_recall_at_size(scored, reference)
    print(f"discovery {args.method} in {t_discover:.1f} s\n")
    print(f"{'circuit':34s}{'edges':>7s}{'faithfulness':>14s}{'KL':>9s}")
    print(f"{'published (' + name + ')':34s}{r_pub.n_edges:7d}{r_pub.faithfulness:14.4f}{r_pub.kl:9.4f}")
    print(f"{'discovered (top ' + str(k) + ', pruned)':34s}{r_found.n_edges:7d}{r_found.faithfulness:14.4f}"
          f"{r_found.kl:9.4f}")
    print(f"\nAUROC of the discovered scores against the published circuit: {roc:.4f} (signed), {roc_abs:.4f} "
          f"(|score|), {roc_node:.4f} (nodes)")
    print(f"at the published size: precision {_fmt(pr['precision'])}, recall {_fmt(pr['recall'])} "
          f"({pr['tp']} shared edges)")
    if args.save:
        path = Path(args.save)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"circuit": name, "model": model.name, "method": args.method, "params": params,
                                    "ablation": args.ablation, "published": r_pub.to_dict(),
                                    "discovered": r_found.to_dict(), "auroc": roc, "auroc_absolute": roc_abs,
                                    "auroc_nodes": roc_node, "precision_recall_at_size": pr,
                                    "k": k, "discovery_seconds": t_discover}, indent=2) + "\n")
        print(f"wrote     {path} (results as JSON)")
    if args.save_graph:
        path = scored.save(args.save_graph)
        print(f"wrote     {path} (the discovered scores)")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=200, help="task examples, half train / half validation "
                   "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="task seed (default: %(default)s)")
    p.add_argument("--ablation", default="corrupted", choices=["corrupted", "mean", "zero", "patching"],
                   help="what ablated edges carry (default: %(default)s; 'patching' is MIB's name for corrupted)")
    p.add_argument("--batch-size", type=int, default=16, help="examples per forward (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: the checkpoint's)")
    p.add_argument("--grouped-kv", action="store_true",
                   help="the model with k/v receivers per key/value group (for a graph discovered with --grouped-kv)")
    p.add_argument("--save", default=None, help="write the results here as JSON")


def add_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="faithfulness of a circuit (or a curve over circuit sizes, CPR / CMD)",
                        epilog=EPILOG_EVALUATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--model", required=True, help="hub id, local folder, zoo:NAME or random:PRESET")
    ev.add_argument("--task", required=True, help="task name or file (see `circuits tasks`)")
    ev.add_argument("--graph", required=True, help="graph file (.json MIB format, .graphml, .pt) or published:NAME")
    sel = ev.add_argument_group("selecting a circuit from the graph's scores (default: the graph as given)")
    sel.add_argument("--k", type=int, default=None, help="the top K edges (pruned)")
    sel.add_argument("--fraction", type=float, default=None, help="the top FRACTION of edges (MIB's int(f * n))")
    sel.add_argument("--threshold", type=float, default=None, help="edges scoring at least THRESHOLD")
    sel.add_argument("--minimal", type=float, default=None, metavar="TARGET",
                     help="the smallest top-k circuit with faithfulness >= TARGET (bisection over k)")
    sel.add_argument("--absolute", action="store_true", help="rank by |score| (MIB's CMD runs) instead of score")
    ev.add_argument("--curve", action="store_true",
                    help="the faithfulness curve at MIB's fractions with CPR and CMD instead of one circuit")
    ev.add_argument("--align-positions", dest="align_positions", action="store_true",
                    help="keep the pairs of the task's most common token length (position-aware graphs need one)")
    ev.add_argument("--level", default="edge", choices=["edge", "node", "neuron"],
                    help="node: run every edge between the circuit's nodes (node-level circuits); neuron: heads and "
                         "MLP neurons as units (--k/--fraction/--minimal count them), cut neurons ablated")
    ev.add_argument("--split", default="validation", choices=["validation", "train", "all"],
                    help="examples evaluated (default: %(default)s)")
    ev.add_argument("--save-circuit", default=None, help="write the evaluated circuit here (.json, .graphml, .pt)")
    add_memory_arguments(ev, positions=False)
    _common(ev)
    add_worker_options(ev)
    ev.set_defaults(func=_evaluate)

    rp = sub.add_parser("reproduce", help="re-find a published circuit (IOI, greater-than) and compare",
                        epilog=EPILOG_REPRODUCE, formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("circuit", choices=sorted(REPRODUCIBLE), help="the published circuit")
    rp.add_argument("--model", default="gpt2", help="GPT-2 small: hub id or local folder (default: %(default)s)")
    rp.add_argument("--method", default="eap-ig", help="discovery method (default: %(default)s)")
    rp.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="a discovery parameter (repeatable), e.g. --param steps=10")
    rp.add_argument("--save-graph", default=None, help="write the discovered scored graph here")
    _common(rp)
    rp.set_defaults(func=_reproduce)
