"""Position-aware vs position-free circuits where the effect is known to sit at a few positions (issue 20, point 2).

zoo:attn-only-2l (a trained 2-layer induction model) on induction with the ``match`` corruption at one index
(period 8, token 3 of the first copy replaced, every pair read at one position, 20): the clean/corrupted difference
runs through the key match (previous-token head at the token after the replaced one -> induction head's key) and
is read at position 20. Each method scores the graph position-free ([S, R]) and position-aware ([S, R, L]); the
smallest top-k circuit with f >= 0.9 on the validation split is found for both (``minimal_circuit``, absolute
scores); ACDC chooses its own circuit. A position-free circuit of k edges keeps each at all L positions, so its
size in edge-positions is k * L.

    python benchmarks/position_circuits.py          # writes results/position_circuits.{json,md,png}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write  # noqa: E402

import circuits  # noqa: E402
from circuits.evaluation import evaluate, minimal_circuit  # noqa: E402

METHODS = ("eap", "eap-ig", "exact")


def _positions(graph) -> list[int]:
    return graph.in_graph.any(0).any(0).nonzero().flatten().tolist()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--acdc-threshold", type=float, default=0.05)
    args = parser.parse_args()
    model = circuits.load_model("zoo:attn-only-2l")
    task = circuits.load_task("induction", model, n=args.n, corruption="match", min_period=8, max_period=8,
                              replaced=3, seq_len=24)
    read = sorted(set(task.positions[:, 0].tolist()))
    L = int(task.data.lengths[0])
    rows = []
    scored_positions = None
    for method in METHODS:
        for positions in (False, True):
            graph = circuits.discover(model, task, method, positions=positions, show_progress=False)
            circuit = minimal_circuit(model, task, graph, target=0.9, absolute=True)
            info = circuit.metadata["minimal"]
            f = evaluate(model, task, circuit).faithfulness
            distinct = info["n_distinct_edges"]
            rows.append({"method": method, "positions": positions, "edges": distinct,
                         "edge_positions": circuit.n_edges if positions else distinct * L, "f": round(f, 4),
                         "positions_kept": _positions(circuit) if positions else list(range(L)),
                         "circuit": sorted(circuit.edges)})
            if method == "exact" and positions:
                scored_positions = graph
    for positions in (False, True):
        graph = circuits.discover(model, task, "acdc", positions=positions, threshold=args.acdc_threshold,
                                  show_progress=False)
        f = evaluate(model, task, graph).faithfulness
        distinct = int(graph.in_graph.any(-1).sum()) if positions else graph.n_edges
        rows.append({"method": f"acdc (tau={args.acdc_threshold})", "positions": positions, "edges": distinct,
                     "edge_positions": graph.n_edges if positions else distinct * L, "f": round(f, 4),
                     "positions_kept": _positions(graph) if positions else list(range(L)),
                     "circuit": sorted(graph.edges)})
    figure = None
    if scored_positions is not None:
        from circuits.plotting import plot_position_scores

        figure = Path("results/position_circuits.png")
        plot_position_scores(scored_positions, figure, top=16,
                             title="exact patching per edge and position, zoo:attn-only-2l, induction (match)")
    exact_circuit = next(r for r in rows if r["method"] == "exact" and r["positions"])["circuit"]
    table = "\n".join(
        f"| {r['method']} | {'[S, R, L]' if r['positions'] else '[S, R]'} | {r['edges']} | {r['edge_positions']} | "
        f"{r['f']:.3f} | {', '.join(map(str, r['positions_kept'])) if r['positions'] else 'all'} |" for r in rows)
    md = f"""
Smallest circuit with f >= 0.9 (validation split, corrupted ablation), position-free and position-aware, on
`zoo:attn-only-2l` / induction `match` (period 8, token 3 replaced: {args.n} pairs of {L} tokens, read at position
{', '.join(map(str, read))}; the replaced token sits at position 12). Edge-positions of a position-free circuit:
edges x {L}.

| method | scores | edges | edge-positions | f | positions with a kept edge |
|---|---|---|---|---|---|
{table}

Circuit (position-aware, exact): {', '.join(exact_circuit)}.
"""
    if figure is not None:
        md += f"\n![exact scores per edge and position]({figure.name})\n"
    paths = write("position_circuits", {"settings": {"model": "zoo:attn-only-2l", "n": args.n, "length": L,
                                                      "read_positions": read}, "rows": rows}, md,
                  "python benchmarks/position_circuits.py")
    print(md)
    print("wrote", *paths, figure or "")


if __name__ == "__main__":
    main()
