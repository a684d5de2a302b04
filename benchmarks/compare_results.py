"""Compare the speed ratios of two sets of benchmark results (e.g. before and after a redesign).

    python benchmarks/compare_results.py --before results/redesign_before --after results --name redesign_benchmarks

Reads the JSON files that patched_forward.py, discovery_speed.py, faithfulness_curve.py and acdc_batching.py
wrote into each folder and writes results/NAME.md: every ratio, before and after, and the change. A ratio where
lower is better (x a Hugging Face pass) may grow by at most ``--tolerance``; ACDC's speed-up may shrink by as much.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results"

# (file, label, how to read the ratio, True when lower is better)
RATIOS = [
    ("patched_forward", "patched forward / HF forward", lambda d: d["patched_over_hf"], True),
    ("discovery_speed", "EAP / its HF passes", lambda d: d["eap_over_budget"], True),
    ("discovery_speed", "EAP-IG (5 steps) / its HF passes", lambda d: d["eap_ig_over_budget"], True),
    ("faithfulness_curve", "10-point faithfulness curve / HF forward", lambda d: d["curve_over_hf"], True),
    ("acdc_batching_gap", "ACDC complete run, GPT-2-small shape: one at a time / batched",
     lambda d: d["gpt2_complete"]["speedup"], False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=RESULTS)
    parser.add_argument("--name", default="redesign_benchmarks")
    parser.add_argument("--tolerance", type=float, default=0.05)
    args = parser.parse_args()
    rows, worst = [], 0.0
    for file, label, read, lower_better in RATIOS:
        b = json.loads((args.before / f"{file}.json").read_text())
        a = json.loads((args.after / f"{file}.json").read_text())
        rb, ra = float(read(b)), float(read(a))
        change = (ra / rb - 1.0) if lower_better else (rb / ra - 1.0)  # > 0: worse
        worst = max(worst, change)
        rows.append(f"| {label} | {rb:.2f} (`{b['commit']}`) | {ra:.2f} (`{a['commit']}`) | "
                    f"{'+' if change > 0 else ''}{100 * change:.1f}% |")
    machine = json.loads((args.after / "patched_forward.json").read_text())["machine"]
    text = f"""# {args.name}

Regenerate: `python benchmarks/compare_results.py --before {args.before} --after {args.after} --name {args.name}`

Speed ratios before and after, each measured in one run with its runs interleaved (the files in
`{args.before}` and `{args.after}` name commit, machine and date); machine: {machine.get('cpu', machine)}.
Change > 0 means slower (for the speed-up: a smaller speed-up). Tolerance: {100 * args.tolerance:.0f}%.

| ratio | before | after | change |
|---|---|---|---|
{chr(10).join(rows)}

Worst change: {100 * worst:+.1f}%: **{'within' if worst <= args.tolerance else 'OUTSIDE'} the tolerance**.
"""
    out = RESULTS / f"{args.name}.md"
    out.write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
