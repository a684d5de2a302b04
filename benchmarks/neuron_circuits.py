"""Neuron-level circuits beside node-level ones on a bundled model (issue 20, point 3).

``zoo:gpt2-tasks`` (4 layers x 2 heads, d_model 128, 512 MLP neurons per layer: 8 heads, 4 MLPs, 2,048 neurons),
tasks ``ioi`` and ``greater-than`` (n pairs, discovery on the training split, corrupted ablation). For each
attribution method the smallest circuit with f >= 0.9 on the **validation** split is found by bisection at two
levels, from the same scores:

* node level: units are the 8 heads and the 4 whole MLPs (node scores: each node's summed outgoing edge scores);
* neuron level: units are the 8 heads and the 2,048 MLP neurons (an MLP runs only its kept neurons, the others
  carry their corrupted activation).

``input`` and ``logits`` are always kept (not units). Selection by absolute score (MIB's CMD ranking) and by signed score.
Reported: units kept / scored, heads, MLPs and neurons kept, f by ``circuits.evaluate`` on the validation split.

    python benchmarks/neuron_circuits.py            # writes results/neuron_circuits.{json,md}
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write  # noqa: E402

import circuits  # noqa: E402

METHODS = {"eap": ("eap-neurons", {}), "eap-ig": ("eap-ig-neurons", {"steps": 5}),
           "patching": ("neuron-patching", {})}


def row(model, task, scored, method, level, absolute, seconds):
    s = model.structure
    circuit = scored.minimal(model, task, 0.9, level=level, absolute=absolute)
    record = circuit.metadata["minimal"]
    check = circuits.evaluate(model, task, circuit, level=level)
    heads = [s.head_sender(layer, h) for layer in range(s.n_layers) for h in range(s.n_heads)]
    mlps = [s.mlp_sender(layer) for layer in range(s.n_layers)]
    kept = circuit.node_in_graph
    return {"task": task.name, "method": method, "level": level, "selection": "absolute" if absolute else "signed",
            "units_kept": record["k"], "units": record["n_units"], "fraction": record["k"] / record["n_units"],
            "heads": int(kept[heads].sum()), "mlps": int(kept[mlps].sum()),
            "neurons": circuit.n_neurons if level == "neuron" else int(kept[mlps].sum()) * scored.neuron_scores.shape[1],
            "f": check.faithfulness, "f_below": dict(map(tuple, record["evaluated"])).get(record["k"] - 1),
            "discovery_s": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--tasks", default="ioi,greater-than")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = circuits.load_model("zoo:gpt2-tasks", device="cpu")
    rows = []
    for name in args.tasks.split(","):
        task = circuits.load_task(name, model, n=args.n, seed=0)
        for method in args.methods.split(","):
            fn, params = METHODS[method]
            start = time.perf_counter()
            scored = circuits.discover(model, task, fn, split="train", batch_size=32, **params)
            seconds = time.perf_counter() - start
            scored.node_scores[0] = float("nan")  # input: always kept, not a unit
            for absolute in (True, False):
                for level in ("node", "neuron"):
                    rows.append(row(model, task, scored, method, level, absolute, seconds))
                    print(rows[-1], flush=True)
    import pandas as pd

    from _common import markdown_table

    frame = pd.DataFrame(rows)
    md = ["Smallest circuit with f >= 0.9 (validation split, corrupted ablation) on `zoo:gpt2-tasks`, at node level "
          "(units: 8 heads + 4 MLPs) and at neuron level (units: 8 heads + 2,048 MLP neurons), from the same "
          f"scores (n = {args.n} pairs per task, discovery on the training half). `neurons`: MLP neurons run "
          "(at node level, every neuron of each kept MLP). `f_below`: f with one unit fewer.", "",
          markdown_table(frame[["task", "method", "selection", "level", "units_kept", "units", "fraction", "heads",
                                "mlps", "neurons", "f", "f_below"]]), ""]
    write("neuron_circuits", {"n": args.n, "rows": rows}, "\n".join(md),
          f"python benchmarks/neuron_circuits.py --n {args.n}")


if __name__ == "__main__":
    main()
