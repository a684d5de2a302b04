"""How well each discovery method recovers known circuits on the bundled models (issue 11, point 2).

For every bundled model with a task: every method's scores, their AUROC against the shipped ground truth
(planted models; signed and absolute, MIB ranks InterpBench edges by |score|), their Spearman correlation
with `exact` (the reference the approximations are judged by), the size of the circuit ACDC / edge pruning
return, and wall time.

    python benchmarks/discovery_quality.py        # writes results/discovery_quality.{json,md}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write  # noqa: E402

import circuits  # noqa: E402
from circuits.evaluation.ground_truth import auroc  # noqa: E402
from circuits.models.loading import ZOO_DIR, zoo_models  # noqa: E402
from circuits.zoo import task_file  # noqa: E402

METHODS = {"eap": {}, "eap-ig": {"steps": 5}, "eap-ig-activations": {"steps": 5}, "exact": {}, "acdc": {},
           "edge-pruning": {}, "node-ap": {}, "node-patching": {}, "random": {}}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation (average ranks for ties), i.e. Pearson on ranks."""
    ra = pd.Series(a.double().numpy()).rank().to_numpy()
    rb = pd.Series(b.double().numpy()).rank().to_numpy()
    return float(pd.Series(ra).corr(pd.Series(rb)))


def evaluate_model(name: str, n: int, seed: int) -> list[dict]:
    model = circuits.load_model(f"zoo:{name}")
    task = circuits.load_task(task_file(name), model, n=n, seed=seed)
    gt_path = ZOO_DIR / name / "ground_truth.json"
    truth = circuits.Graph.load(gt_path, model=model) if gt_path.exists() else None
    s = model.structure
    order = s.edge_order
    graphs = {m: circuits.discover(model, task, m, **p) for m, p in METHODS.items()}
    exact = graphs["exact"].scores[order[:, 0], order[:, 1]]
    rows = []
    for method, g in graphs.items():
        node = g.metadata["level"] == "node"
        row = {"model": name, "task": task.name, "method": method, "n_examples": g.metadata["n_examples"],
               "wall_time_s": g.metadata["wall_time_s"],
               "circuit_edges": g.n_edges if method in ("acdc", "edge-pruning") else None}
        if not node:
            flat = g.scores[order[:, 0], order[:, 1]]
            row["spearman_exact"] = spearman(flat, exact)
            row["spearman_exact_abs"] = spearman(flat.abs(), exact.abs())
        if truth is not None:
            level = "node" if node else "edge"
            row["auroc_signed"] = auroc(g, truth, level=level)
            row["auroc_abs"] = auroc(g, truth, absolute=True, level=level)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [m for m in zoo_models() if (ZOO_DIR / m / "task.toml").exists()]
    frame = pd.DataFrame([row for name in names for row in evaluate_model(name, args.n, args.seed)])
    cols = ["model", "method", "auroc_abs", "auroc_signed", "spearman_exact", "spearman_exact_abs", "circuit_edges",
            "wall_time_s"]
    table = markdown_table(frame[[c for c in cols if c in frame]])
    md = f"""
Every discovery method on every bundled model that ships a task ({', '.join(names)}); {args.n} prompts
(seed {args.seed}), discovery on the train half, corrupted ablation, default parameters.
AUROC against the shipped ground truth (node methods: at node level); Spearman with `exact` over all edges.

{table}
"""
    paths = write("discovery_quality", {"settings": vars(args), "rows": frame.to_dict(orient="records")}, md,
                  "python benchmarks/discovery_quality.py")
    print(md)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
