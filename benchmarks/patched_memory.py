"""The patched pass's memory estimate against its measured peak at Llama-3.1-8B width (issue 18, point 2).

``estimate_peak(kind="patched")`` sizes the circuits (and examples) of a patched pass to a memory budget; it must
not fall below what a pass really takes. Each point runs ``CircuitSession.circuit_metrics`` of 4 random circuits
(half the edges each) in one pass on a random Llama-3.1-8B-width model (4096 wide, 32 heads, 8 kv groups, MLP
14336, vocabulary 8192) of 1-4 layers, in a fresh subprocess, measured as ``benchmarks/memory_scale.py`` measures
(VmHWM above the resident size before the call: the ablation, the baselines and the pass itself), against the
estimate of the same (``total``, the ablation included).

    python benchmarks/patched_memory.py        # writes results/patched_memory.{json,md} (~4 min on 2 cores)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory_scale  # noqa: E402
from _common import write  # noqa: E402

from circuits.session.memory import ModelWidths, estimate_peak  # noqa: E402

# (layers, dtype, batch, length, circuits): "patched" = half the edges at random (every head computed),
# "patched-sparse" = the same with head 1 of every layer read by nothing, so each layer computes 31 heads through
# head_subset, which copies their weight rows (~300 MiB per pass at this width in fp32): few rows are mostly that
POINTS = [(1, "float32", 2, 64, "patched"), (2, "float32", 2, 32, "patched"), (4, "float32", 2, 32, "patched"),
          (2, "bfloat16", 2, 16, "patched"), (1, "float32", 1, 16, "patched-sparse"),
          (2, "float32", 2, 32, "patched-sparse"), (1, "bfloat16", 1, 16, "patched-sparse"),
          (2, "bfloat16", 2, 16, "patched-sparse"), (1, "float32", 2, 32, "patched-positions"),
          (2, "bfloat16", 2, 16, "patched-positions"), (1, "float32", 2, 32, "patched-neurons"),
          (2, "bfloat16", 2, 16, "patched-neurons")]
CIRCUITS = 4
WHAT = {"patched": "half the edges", "patched-sparse": "half the edges, 31 of 32 heads per layer",
        "patched-positions": "half the edges, each at half the positions", "patched-neurons":
        "half the edges and half the MLP neurons"}
READS = {"patched-positions": {"by_position": True}, "patched-neurons": {"neurons": 1}}  # what the estimate adds


def main() -> None:
    rows = []
    for layers, dtype, batch, length, method in POINTS:
        measured = memory_scale.measure(layers, dtype, batch, length, [method], 1)[0]
        widths = ModelWidths(**measured["widths"])  # the measured model's own (ModelWidths.of)
        estimate = estimate_peak(widths, "patched", examples=batch, positions=length, read_positions=1,
                                 circuits=CIRCUITS, **READS.get(method, {})).total / 2**20
        rows.append({"layers": layers, "dtype": dtype, "batch": batch, "length": length, "circuits": method,
                     "measured_mib": measured["peak_above_mib"], "estimate_mib": estimate,
                     "estimate_over_measured": estimate / measured["peak_above_mib"]})
    table = "\n".join(f"| {r['layers']} | {r['dtype']} | {r['batch']} x {r['length']} | {WHAT[r['circuits']]} | "
                      f"{r['measured_mib']:.0f} | "
                      f"{r['estimate_mib']:.0f} | {r['estimate_over_measured']:.2f} |" for r in rows)
    low = min(r["estimate_over_measured"] for r in rows)
    md = f"""
One patched pass of {CIRCUITS} random circuits (`CircuitSession.circuit_metrics`, corrupted ablation) on a random
Llama-3.1-8B-width model (half the edges at random; "31 of 32 heads": a sparse circuit's layers, which compute a head
subset and copy its weight rows, counted by the estimate's `weight_copies`; position-aware circuits, masks
`[4, S, R, L]`, and neuron circuits, `NeuronRuns.circuit_metrics` with the neurons' ablation, each with the
estimate's terms for them), each point in a fresh subprocess;
measured = VmHWM above the resident size before the call
(ablation, baselines and the pass), estimate = `estimate_peak("patched", ...).total` of the same.

| layers | dtype | batch x length | circuits | measured (MiB) | estimate (MiB) | estimate / measured |
|---|---|---|---|---|---|---|
{table}

The estimate is {'never below' if low >= 1 else 'below'} the measured peak here (lowest ratio {low:.2f}){
    ': passes sized to a budget by it stay under the budget' if low >= 1 else ''}.
"""
    paths = write("patched_memory", {"points": rows, "circuits": CIRCUITS}, md, "python benchmarks/patched_memory.py")
    print(md)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
