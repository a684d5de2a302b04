"""Peak memory above the weights on Llama-3.1-8B-width models, and its extrapolation to 32 layers (issue 18).

Models: random weights of Llama-3.1-8B's widths (hidden 4096, 32 heads, 8 key/value heads, intermediate 14336;
``PRESETS["llama-3.1-8b"]``) with 1, 2 and 4 layers and a vocabulary of 8,192 tokens instead of 128,256 (the task
reads one position, so the vocabulary enters only through the embedding and the one-position logits). Task:
random-token clean/corrupted pairs of the chosen batch x length, logit difference at the last position, corrupted
ablation.

Each (layers, dtype, batch x length) runs in a fresh subprocess: it builds the model, the task and a warmed
session (one tiny attribution pass and patched forward on another task, so kernels and thread pools exist), then
for each method builds a fresh session and measures the peak resident memory during the method above the
resident memory just before it. The peak is Linux's VmHWM after resetting it (``echo 5 > /proc/self/clear_refs``);
glibc is told to ``mmap`` every allocation above 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so freed tensors leave the
resident set at once. Cross-check: one configuration is rerun with every method in a subprocess of its own, where
``ru_maxrss`` (peak since the process started) minus the resident memory after building gives the same figure.

Methods: ``eap``; ``eap-ig`` with 5 steps, all stacked in one pass (the default ``steps_per_pass``) and one step
per pass (``steps_per_pass=1``); ``eap-ig-activations`` (its (group, step) passes are independent, so its peak is
one pass's: fitted at 1 step, with the 5-step ratio measured at two points and applied in the README's table;
it was 1.2-1.7x before each pass's graph was freed at once, tests/test_attribution_memory.py); ``patched``: one
batch of 4 random circuits (half the edges each) through ``CircuitSession.circuit_metrics`` in one pass; ``curve``: one
faithfulness curve (MIB's fractions of a random-scored graph) with the session's own circuits per pass.

    python benchmarks/memory_scale.py            # the grid below (~30 min on 2 cores), writes results/memory_scale.*
    python benchmarks/memory_scale.py --resume   # continue an interrupted run, or add grid points or methods
    python benchmarks/memory_scale.py --quick    # one layer, one small shape, fp32 (a minute)
    python benchmarks/memory_scale.py --render   # rewrite the .md from the saved .json
    python benchmarks/memory_scale.py --device cuda   # on a GPU: the series up to 32 layers, measured against
                                                      # predicted; writes results/memory_scale_gpu.*

On a GPU (``--device cuda``) every configuration runs in one process (the allocator's own peak,
``torch.cuda.max_memory_allocated`` above ``memory_allocated`` before the method, needs no process of its
own), each method after ``session.fit`` of its memory plans as ``circuits.discover`` does, so the session's
own budget (half the free GPU memory) chooses its chunks; the report sets each measured peak against the
session's estimate (:func:`circuits.session.memory.estimate_peak`, recomputed when the report is rendered) and
against the CPU fit's prediction (results/memory_scale.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, markdown_table, write  # noqa: E402

VOCAB = 8192
MiB = 2**20
GB = 1e9
METHODS = ("eap", "eap-ig", "eap-ig:spp1", "eap-ig-activations", "patched", "curve")
# (layers, dtype, batch, length, methods). fp32 spans the shapes; bf16 matmuls run ~10-100x slower on this
# AVX2 CPU (no bf16 instructions), so bf16 gets the few points 30 minutes allow.
GRID = [
    *[(1, "float32", b, p, METHODS) for b, p in ((1, 16), (4, 16), (2, 64))],
    (2, "float32", 1, 16, METHODS),
    (2, "float32", 2, 32, METHODS),
    (4, "float32", 1, 16, METHODS),
    (4, "float32", 2, 32, METHODS),  # every method at two token counts on 2 and 4 layers: c and e apart
    (1, "bfloat16", 1, 8, ("eap", "eap-ig", "eap-ig-activations", "patched", "curve")),
    (1, "bfloat16", 2, 16, ("eap", "eap-ig", "patched", "curve")),
    (2, "bfloat16", 1, 8, ("eap", "eap-ig", "patched", "curve")),
    (2, "bfloat16", 2, 16, ("eap-ig", "patched", "curve")),  # with the three above: bf16's own cross-layer slope
]
QUICK = [(1, "float32", 1, 16, METHODS)]
# On a GPU: the CPU grid's points (the same vocabulary: CPU against GPU at identical shapes), then the issue's
# target shape, bf16 batch 8 x 64, from 1 to 32 layers with Llama-3.1-8B's real vocabulary (edge pruning besides:
# a trained pass, 3 steps).
GPU_METHODS = (*METHODS, "edge-pruning")
# Last (a series cut short by its time keeps the rest): the finer circuits' passes, position-aware masks
# [4, S, R, 64] and neuron masks, against the estimate with their terms.
FINE_METHODS = ("patched-positions", "patched-neurons")
GPU_GRID = [*[(L, "bfloat16", 8, 64, GPU_METHODS, 128256) for L in (1, 2, 4, 8, 16, 32)],
            (2, "float32", 8, 64, GPU_METHODS, 128256), (8, "float32", 8, 64, GPU_METHODS, 128256),
            *[(*g[:4], g[4], VOCAB) for g in GRID],
            *[(L, "bfloat16", 8, 64, FINE_METHODS, 128256) for L in (2, 8)]]
CROSS_CHECK = (1, "float32", 1, 16, METHODS)
# each measured method's parameters (eap-ig-activations: 1 step, or the run's activation_steps)
METHOD_PARAMS = {"eap": {}, "eap-ig": {"steps": 5}, "eap-ig:spp1": {"steps": 5, "steps_per_pass": 1},
                 "eap-ig-activations": {"steps": 1}, "edge-pruning": {"steps": 3}}
TARGET = dict(layers=32, batch=8, length=64, dtype="bfloat16", weights_gb=16.06, limit_gb=60.0)
# Llama-3.1-8B: per layer q/o 4096^2, k/v 4096x1024, MLP 3x4096x14336, 2 norms; embedding and unembedding 128256 x 4096
LLAMA8B_PARAMS = 32 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096) + 2 * 128256 * 4096 + 4096


def _llama8b_widths():
    from circuits.graph.structure import GraphStructure
    from circuits.session.memory import ModelWidths

    s = GraphStructure(n_layers=32, n_heads=32, n_kv_heads=8)  # MIB's per-head k/v receivers
    return ModelWidths(n_layers=32, n_heads=32, n_kv_heads=8, d_model=4096, d_head=128, d_mlp=14336, vocab=128256,
                       n_senders=s.n_senders, gated=True, itemsize=2, head_inputs=3 * 32, rms_norm=True,
                       n_receivers=s.n_receivers)


LLAMA8B_WIDTHS = _llama8b_widths()  # bf16


# ---- the child: one (layers, dtype, shape) -------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size


class _Peak:
    """Peak memory of a block above what was held when it began: the CUDA allocator's peak on a GPU (and its
    reserved peak), Linux's VmHWM reset at the start on the CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = (torch.cuda.memory_allocated(), torch.cuda.memory_reserved())
        else:
            self.before = (_status_kib("VmRSS") * 1024, 0)
            _reset_peak()

    def stop(self) -> dict:
        if self.cuda:
            torch.cuda.synchronize()
            return {"peak_above_mib": (torch.cuda.max_memory_allocated() - self.before[0]) / MiB,
                    "reserved_above_mib": (torch.cuda.max_memory_reserved() - self.before[1]) / MiB,
                    "allocated_before_mib": self.before[0] / MiB}
        return {"peak_above_mib": (_status_kib("VmHWM") * 1024 - self.before[0]) / MiB,
                "rss_before_mib": self.before[0] / MiB}


def run_config(spec: dict) -> dict:
    """Build one (layers, dtype, batch x length) model and task, then measure each method's peak in turn."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from dataclasses import asdict

    from discovery_speed import random_pairs_task

    import circuits
    from circuits.discovery import METHODS
    from circuits.discovery.attribution import eap, eap_ig, eap_ig_activations, stacked_steps
    from circuits.discovery.edge_pruning import edge_pruning
    from circuits.graph import Graph
    from circuits.models.random import random_model
    from circuits.session import CircuitSession
    from circuits.session.memory import ModelWidths
    from circuits.session.neurons import NeuronRuns

    device = spec.get("device", "cpu")
    torch.set_num_threads(spec["threads"])
    warnings.filterwarnings("ignore", message="edge pruning")  # 3 steps do not converge: they are a memory probe
    dtype = getattr(torch, spec["dtype"])
    model = random_model("llama-3.1-8b", n_layers=spec["layers"], vocab_size=spec.get("vocab", VOCAB), dtype=dtype,
                         device=device)
    weights = sum(p.numel() * p.element_size() for p in model.hf.parameters())
    task = random_pairs_task(model, spec["batch"], spec["length"])
    s = model.structure
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(4, s.n_senders, s.n_receivers, generator=gen) < 0.5) & s.edge_mask
    sparse = masks.clone()  # a sparse circuit's layers: head 1 read by nothing, so each computes a head subset
    sparse[:, [s.layer_senders(layer).start + 1 for layer in range(s.n_layers)], :] = False
    scored = Graph(s, torch.randn(s.n_senders, s.n_receivers, generator=gen))
    params = {**METHOD_PARAMS, "eap-ig-activations": {"steps": spec.get("activation_steps", 1)}}

    def session(t=task):
        return CircuitSession(model, t, split="all", batch_size=spec["batch"], show_progress=False)

    def fit(method: str, sess: CircuitSession) -> None:  # as circuits.discover does before any forward
        name = method.split(":")[0]
        if name in METHODS:
            for plan in METHODS[name].memory_plans(params[method]):
                sess.fit(**plan)

    def run(method: str, sess: CircuitSession):
        if method == "eap":
            return eap(sess)
        if method == "eap-ig":
            return eap_ig(sess, steps=5)
        if method == "eap-ig:spp1":
            return eap_ig(sess, steps=5, steps_per_pass=1)
        if method == "eap-ig-activations":
            return eap_ig_activations(sess, steps=spec.get("activation_steps", 1))
        if method == "edge-pruning":
            return edge_pruning(sess, **params[method])
        if method in ("patched", "patched-sparse"):
            chosen = masks if method == "patched" else sparse
            return sess.circuit_metrics(chosen, circuits_per_pass=len(chosen))
        if method == "patched-positions":  # each edge kept at half the positions: masks [4, S, R, L]
            by_position = torch.rand(*masks.shape, spec["length"], generator=gen) < 0.5
            return sess.circuit_metrics(by_position & masks[..., None], circuits_per_pass=len(masks))
        if method == "patched-neurons":  # and half the MLP neurons: masks [4, L, m]
            runs = NeuronRuns(sess)
            neurons = (torch.rand(len(masks), *runs.shape, generator=gen) < 0.5).float()
            return runs.circuit_metrics(masks.float(), neurons, circuits_per_pass=len(masks))
        if method == "curve":
            return circuits.faithfulness_curve(None, None, scored, runner=sess)
        raise ValueError(method)

    if not spec.get("fresh"):  # warm kernels and thread pools on a tiny task (a fresh-process run skips it)
        tiny = random_pairs_task(model, 1, 4, seed=1)
        eap(session(tiny))
        session(tiny).circuit_metrics(masks[:1], circuits_per_pass=1)
    gc.collect()
    after_build = _status_kib("VmRSS")
    peak = _Peak(device)
    rows = []
    for method in spec["methods"]:
        sess = session()
        gc.collect()
        row: dict = {"method": method}
        peak.start()
        t0 = time.perf_counter()
        try:
            fit(method, sess)
            out = run(method, sess)
        except Exception as e:  # out of memory past the card, or a failure: recorded, the series goes on
            if not peak.cuda:
                raise
            import traceback

            out = None
            where = traceback.extract_tb(e.__traceback__)[-1]
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]} ({where.filename}:{where.lineno})"
            row["traceback"] = traceback.format_exc()[-3000:]
        row.update(peak.stop(), seconds=time.perf_counter() - t0)
        if not peak.cuda:
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, since the process started
            row["maxrss_above_build_mib"] = (maxrss - after_build) / 1024
        if method == "curve" and out is not None:  # the circuits one pass ran: the distinct non-trivial ones, capped
            run_circuits = len(sess._dedupe(torch.stack([c.in_graph for c in out.circuits]))[1])
            row["circuits_per_pass"] = min(run_circuits, sess.circuits_per_pass_for(sess.batches[0]))
        if method == "eap-ig":
            row["steps_per_pass"] = stacked_steps(sess, sess.batches[0], 5)
        if method == "eap-ig:spp1":
            row["steps_per_pass"] = 1
        row["examples_per_pass"] = max(len(b) for b in sess.batches)
        if peak.cuda:
            row["budget_mib"] = sess._fit_budget() / MiB  # what fit chunked to (read once per session)
        rows.append(row)
        del out, sess
        gc.collect()
        if peak.cuda:
            torch.cuda.empty_cache()
    return {"weights_mib": weights / MiB, "rss_after_build_mib": after_build / 1024,
            "widths": asdict(ModelWidths.of(model)), "rows": rows}


def child(spec: dict) -> None:
    print(json.dumps(run_config(spec)))


def _rows_of(out: dict, layers: int, dtype: str, batch: int, length: int, fresh: bool, extra: dict) -> list[dict]:
    rows = []
    for r in out["rows"]:
        rows.append({"layers": layers, "dtype": dtype, "batch": batch, "length": length, "tokens": batch * length,
                     "weights_mib": out["weights_mib"], "rss_after_build_mib": out["rss_after_build_mib"],
                     "widths": out["widths"], "fresh_process": fresh, **extra, **r})
        print(f"L={layers} {dtype} {batch}x{length} {r['method']}: {r['peak_above_mib']:.0f} MiB above "
              f"({r['seconds']:.1f} s){' ' + r['error'] if 'error' in r else ''}", flush=True)
    return rows


def measure_gpu(layers: int, dtype: str, batch: int, length: int, methods, vocab: int, threads: int) -> list[dict]:
    """One configuration on the GPU, in this process (the allocator's peak needs no process of its own)."""
    spec = {"layers": layers, "dtype": dtype, "batch": batch, "length": length, "methods": list(methods),
            "threads": threads, "device": "cuda", "vocab": vocab}
    out = run_config(spec)
    gc.collect()
    torch.cuda.empty_cache()
    return _rows_of(out, layers, dtype, batch, length, False, {"vocab": vocab})


def measure(layers: int, dtype: str, batch: int, length: int, methods, threads: int, fresh: bool = False,
            **extra) -> list[dict]:
    spec = {"layers": layers, "dtype": dtype, "batch": batch, "length": length, "methods": list(methods),
            "threads": threads, "fresh": fresh, **extra}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return _rows_of(out, layers, dtype, batch, length, fresh, extra)


# ---- the fit and the report -----------------------------------------------------------------------------------------
def _units(r: dict) -> float:
    """Token rows a method's activations scale with: batch x length, x stacked steps (eap-ig), x circuits."""
    t = r["tokens"]
    if r["method"] == "eap-ig":
        return t * r.get("steps_per_pass", 1)
    if r["method"] == "patched":
        return t * 4
    if r["method"] == "curve":
        return t * r.get("circuits_per_pass", 1)
    return t


def fit(rows: list[dict]) -> dict:
    """Per (method, dtype): least squares of peak (MiB) = a + L * (b + c * u), u = token rows of the pass
    (:func:`_units`); with enough points, also a tokens-only term e * u outside the layers."""
    import numpy as np

    out = {}
    keys = sorted({(r["method"], r["dtype"]) for r in rows if not r["fresh_process"]})
    for method, dtype in keys:
        pts = [r for r in rows if r["method"] == method and r["dtype"] == dtype and not r["fresh_process"]
               and r.get("activation_steps", 1) == 1]
        L = np.array([r["layers"] for r in pts], float)
        u = np.array([_units(r) for r in pts], float)
        y = np.array([r["peak_above_mib"] for r in pts], float)
        cols = [np.ones_like(L), L, L * u]
        names = ["a", "b", "c"]
        distinct = len({(a, b) for a, b in zip(L, u)})
        if distinct >= 4 and len(set(L)) >= 2:
            cols.append(u)
            names.append("e")
        X = np.stack(cols, 1)
        if distinct < len(names):
            continue
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        pred = X @ coef
        out[f"{method}|{dtype}"] = {
            "method": method, "dtype": dtype, "terms": dict(zip(names, map(float, coef))), "n_points": len(pts),
            "points": [{"layers": int(a), "units": float(b), "measured_mib": float(c), "fitted_mib": float(d)}
                       for a, b, c, d in zip(L, u, y, pred)],
            "max_abs_residual_mib": float(np.abs(y - pred).max()) if len(pts) else 0.0,
        }
    return out


def predict(f: dict, layers: int, units: float) -> float:
    t = f["terms"]
    return t["a"] + layers * (t["b"] + t["c"] * units) + t.get("e", 0.0) * units


def report(saved: dict) -> str:
    rows, fits = saved["rows"], saved["fits"]
    import pandas as pd

    main = [r for r in rows if not r["fresh_process"]]
    frame = pd.DataFrame([{
        "layers": r["layers"], "dtype": r["dtype"], "batch x length": f"{r['batch']} x {r['length']}",
        "method": r["method"] + (f" ({r['activation_steps']} steps)" if r.get("activation_steps", 1) != 1 else ""),
        "steps/pass or circuits/pass": r.get("steps_per_pass", r.get("circuits_per_pass", 4 if r["method"] == "patched"
                                                                        else "-")),
        "weights (MiB)": r["weights_mib"], "peak above (MiB)": r["peak_above_mib"], "seconds": r["seconds"],
    } for r in main])
    base = main[0]["rss_after_build_mib"] - main[0]["weights_mib"]
    lines = [
        f"Peak resident memory **above the weights** (and above the process's own ~{base:.0f} MiB of "
        "Python, torch and the model's graph structures), measured on CPU; random weights of Llama-3.1-8B's widths "
        f"(hidden 4096, 32 heads, 8 kv heads, intermediate 14336), 1, 2 and 4 layers, vocabulary **{VOCAB:,}** "
        "(instead of 128,256). **No GPU is lent to this task**: nothing here was measured on a GPU.",
        "",
        "How: each (layers, dtype, batch x length) in a fresh subprocess; per method a fresh `CircuitSession` "
        "(corrupted ablation, one batch of all pairs); peak = Linux VmHWM after resetting it "
        "(`/proc/self/clear_refs`) minus VmRSS just before the method; glibc `mmap`s every allocation above "
        "64 KiB so freed tensors leave the resident set. Everything a method allocates counts (the corrupted run, "
        "the full model's logits, probes, buffers, autograd). The CPU session caps a patched pass at "
        "48 rows (circuits x examples); the curve's circuits per pass are the session's own choice.",
        "",
        markdown_table(frame, ".1f"),
        "",
    ]
    fresh = [r for r in rows if r["fresh_process"]]
    if fresh:
        lines += ["### Cross-check: the same configuration, every method in a process of its own", "",
                  "`ru_maxrss` (peak since the process started) minus the resident size after building (no warm-up "
                  "in these processes), against the shared-process VmHWM figure above. The two readings of a "
                  "process agree to 2 MiB; the own-process figures are ~20 MiB higher because these processes skip "
                  "the warm-up, so their first pass also allocates the kernels' and thread pools' scratch.", "",
                  "| method | shared process: VmHWM - before (MiB) | own process: VmHWM - before (MiB) | own process: "
                  "ru_maxrss - after build (MiB) |", "|---|---|---|---|"]
        for r in fresh:
            ref = [m for m in main if (m["layers"], m["dtype"], m["batch"], m["length"], m["method"]) ==
                   (r["layers"], r["dtype"], r["batch"], r["length"], r["method"])
                   and m.get("activation_steps", 1) == r.get("activation_steps", 1)]
            label = r["method"] + (f" ({r['activation_steps']} steps)" if r.get("activation_steps", 1) != 1 else "")
            lines.append(f"| {label} (L={r['layers']}, {r['dtype']}, {r['batch']} x {r['length']}) | "
                         f"{ref[0]['peak_above_mib']:.0f} | " if ref else f"| {label} | - | ")
            lines[-1] += f"{r['peak_above_mib']:.0f} | {r['maxrss_above_build_mib']:.0f} |"
        lines.append("")
    lines += ["### Fit: peak (MiB) = a + L * (b + c * u) [+ e * u]", "",
              "L layers; u = token rows one pass holds: batch x length, times the stacked steps for eap-ig (5 at "
              "the default steps_per_pass when batch <= 19), times the circuits per pass for patched (4) and the "
              "curve. e (a term outside the layers: embedding, the logits, the input sender) is fitted where the "
              "points allow it.", "",
              "| method | dtype | points | a (MiB) | b (MiB / layer) | c (KiB / layer / token row) | "
              "e (KiB / token row) | max abs residual (MiB) |", "|---|---|---|---|---|---|---|---|"]
    for f in fits.values():
        t = f["terms"]
        lines.append(f"| {f['method']} | {f['dtype']} | {f['n_points']} | {t['a']:.0f} | {t['b']:.1f} | "
                     f"{t['c'] * 1024:.1f} | {t['e'] * 1024:.1f} |" if "e" in t else
                     f"| {f['method']} | {f['dtype']} | {f['n_points']} | {t['a']:.0f} | {t['b']:.1f} | "
                     f"{t['c'] * 1024:.1f} | - |")
        lines[-1] += f" {f['max_abs_residual_mib']:.0f} |"
    lines += ["", "Residuals (measured - fitted, MiB) per point: " + "; ".join(
        f"{f['method']} {f['dtype']}: " + ", ".join(f"L{p['layers']} u{p['units']:.0f} "
                                                    f"{p['measured_mib'] - p['fitted_mib']:+.0f}" for p in f["points"])
        for f in fits.values()), ""]
    lines += _half_check(saved)
    lines += extrapolation(saved)
    table, _ = fits_where(saved)
    lines += ["### What fits where (the README's table)", "", scaled_peak.__doc__.replace("\n    ", " "), ""]
    lines += table
    return "\n".join(lines)


def extrapolation(saved: dict) -> list[str]:
    fits = saved["fits"]
    T = TARGET
    tokens = T["batch"] * T["length"]
    lines = [f"### Extrapolation to Llama-3.1-8B: {T['layers']} layers, batch {T['batch']} x {T['length']} tokens", "",
             f"Weights: {LLAMA8B_PARAMS:,} parameters = {LLAMA8B_PARAMS * 2 / GB:.2f} GB in bf16 "
             f"({LLAMA8B_PARAMS * 4 / GB:.2f} GB in fp32). The vocabulary enters the activations only through the "
             "one-position logits (128,256 x 4 bytes x the read rows: under 0.5 MB per row), not fitted here.", ""]
    lines += ["| method | dtype | u (token rows) | a + L * (b + c * u) [+ e * u] | predicted peak above weights |",
              "|---|---|---|---|---|"]
    for f in sorted([*fits.values(), *derived_half(fits).values()], key=lambda f: (f["method"], f["dtype"])):
        t = f["terms"]
        spp = 5 if f["method"] == "eap-ig" else 1
        mult = {"eap-ig": 5, "patched": 4, "curve": 1}.get(f["method"], 1)
        u = tokens * mult
        p = predict(f, T["layers"], u)
        arith = (f"{t['a']:.0f} + {T['layers']} * ({t['b']:.1f} + {t['c']:.4f} * {u:.0f})"
                 + (f" + {t['e']:.4f} * {u:.0f}" if "e" in t else "") + f" = {p:.0f} MiB")
        note = {"eap-ig": f" ({spp} steps per pass)", "eap-ig:spp1": " (1 step per pass)",
                "patched": " (4 circuits per pass)", "curve": " (1 circuit per pass)"}.get(f["method"], "")
        lines.append(f"| {f['method']}{note} | {f['dtype']} | {u:.0f} | {arith} | **{p * MiB / GB:.1f} GB** |")
    factor = activation_steps_factor(saved["rows"])
    lines += ["", f"eap-ig-activations is fitted at 1 step; at 5 steps its resident peak was {factor:.2f}x the "
              "1-step one at the largest ratio measured (the passes are independent and free their graphs at once: "
              "the tensors they hold peak the same at any number of steps, tests/test_attribution_memory.py; the "
              "rest is the allocator's), so its rows are multiplied by that for 5 steps."]
    own = fits.get("patched|bfloat16")
    if own is not None:  # the session's own per-row estimate (CircuitSession._bytes_per_row) against the fit
        from circuits.session.memory import estimate_peak

        P = T["length"]
        one = estimate_peak(LLAMA8B_WIDTHS, "patched", examples=1, positions=P)
        session_row = one.total - one.ablated - one.weight_copies
        fitted_row = (T["layers"] * own["terms"]["c"] + own["terms"].get("e", 0.0)) * P * MiB
        derived = derived_half(fits).get("patched|bfloat16-derived")
        derived_row = None if derived is None else \
            (T["layers"] * derived["terms"]["c"] + derived["terms"].get("e", 0.0)) * P * MiB
        lines += ["", f"A patched pass per row (one circuit x one {P}-token example, 32 layers, bf16): "
                  f"`CircuitSession._bytes_per_row` (the estimate `circuits.session.memory.estimate_peak`, which "
                  f"sizes passes to a memory budget) assumes {session_row / GB:.2f} GB, besides "
                  f"{one.weight_copies / MiB:.0f} MiB of head-subset weight copies once per pass; the CPU fits give "
                  f"{fitted_row / GB:.2f} GB (bf16's own: {session_row / fitted_row:.2f}x)"
                  + (f" and {derived_row / GB:.2f} GB (fp32's, derived: {session_row / derived_row:.2f}x)"
                     if derived_row else "") + ". The estimate is checked against the tensors a pass holds "
                  "(tests/test_patched_memory.py) and against the CPU's resident peak at this width on 1-4 layers "
                  "(results/patched_memory.md, never below it); where bf16's own CPU fit extrapolates above it at 32 "
                  "layers, that fit's e term carries the CPU's bf16 scratch described above."]
    lines.append("")
    verdict = verdict_text(fits)
    if verdict:
        lines += [verdict, ""]
    return lines


def derived_half(fits: dict) -> dict:
    """bf16 terms from the fp32 fit (fp32 has the points and the token range bf16's slow CPU matmuls do not
    allow): what a pass holds across layers (c: sender outputs, their differences, saved activations) takes half
    the bytes; the constants (a, b: e.g. the float32 copies of a layer's projection weights the probe's backward
    makes) and the per-layer transients (e: the float32 per-head gradients of the q/k/v backward, the float32 sums
    of stacked steps) are kept as in fp32. An upper bound wherever a bf16 tensor is half its fp32 one."""
    out = {}
    for f in fits.values():
        if f["dtype"] != "float32":
            continue
        t = dict(f["terms"])
        t["c"] = t["c"] / 2
        out[f"{f['method']}|bfloat16-derived"] = {"method": f["method"], "dtype": "bfloat16 (from fp32)",
                                                   "terms": t, "n_points": f["n_points"]}
    return out


def _half_check(saved: dict) -> list[str]:
    """The derived bf16 model against the bf16 points that were measured."""
    derived = derived_half(saved["fits"])
    lines = ["### bf16: the fp32 fit with the cross-layer term halved, against the measured bf16 points", "",
             derived_half.__doc__.split("\n\n")[0].replace("\n    ", " ") if derived_half.__doc__ else "", "",
             "| method | layers | batch x length | measured bf16 (MiB) | derived bf16 (MiB) | "
             "fp32 fit at this point (MiB) |", "|---|---|---|---|---|---|"]
    for r in saved["rows"]:
        key = f"{r['method']}|bfloat16-derived"
        if r["dtype"] != "bfloat16" or r["fresh_process"] or key not in derived:
            continue
        lines.append(f"| {r['method']} | {r['layers']} | {r['batch']} x {r['length']} | {r['peak_above_mib']:.0f} | "
                     f"{predict(derived[key], r['layers'], _units(r)):.0f} | "
                     f"{predict(saved['fits'][r['method'] + '|float32'], r['layers'], _units(r)):.0f} |")
    fits = saved["fits"]

    def terms(method: str, dtype: str) -> dict | None:
        f = fits.get(f"{method}|{dtype}")
        return None if f is None else f["terms"]

    def kib(t: dict | None, key: str) -> str:
        return "-" if t is None or key not in t else f"{t[key] * 1024:,.0f}"

    said = []
    for method in ("eap-ig", "patched", "curve"):
        half, full = terms(method, "bfloat16"), terms(method, "float32")
        if half is None or full is None:
            continue
        said.append(f"{method}: c {kib(half, 'c')} KiB in bf16 against fp32's {kib(full, 'c')} (halved: "
                    f"{full['c'] * 512:,.0f}), e {kib(half, 'e')} against {kib(full, 'e')}")
    lines += ["", "bf16's own fits (4 points each: L = 1, 2 at two token counts, four terms, so no residual) against "
              "fp32's, per layer per token row (c) and outside the layers (e), KiB: " + "; ".join(said) + ". Where "
              "bf16's c is near half fp32's the derivation holds; where bf16's e (or the curve's c, whose u mixes "
              "the circuits per pass the session chose) exceeds fp32's, the cause is not established here (a "
              "candidate: torch's bf16 CPU matmul on AVX2 converting its operands to float32 internally, scratch "
              "that a GPU's bf16 kernels do not make). At these few tokens the measured bf16 peaks also sit up to "
              "~60 MiB above the derived ones: constants (a, b), e.g. the float32 copies of the bf16 projection "
              "weights the probe's q/k/v backward makes. So every bf16 prediction below that has a bf16 fit of "
              "its own is taken as the larger of the two.", ""]
    return lines


# Shapes for "what fits where" (bf16 weights; counts from the published configs)
SIZES = {
    "GPT-2 small (124M)": dict(layers=12, d=768, heads=12, d_mlp=3072, params=124_439_808),
    "Llama-3.2-1B": dict(layers=16, d=2048, heads=32, d_mlp=8192, params=1_235_814_400),
    "Llama-3.1-8B": dict(layers=32, d=4096, heads=32, d_mlp=14336, params=LLAMA8B_PARAMS),
    "Llama-3.1-70B": dict(layers=80, d=8192, heads=64, d_mlp=28672, params=70_553_706_496),
}
GPUS_GB = (24, 40, 80)
FITS_METHODS = (("eap", "eap"), ("eap-ig", "eap-ig (5 steps, stacked)"),
                ("eap-ig:spp1", "eap-ig (5 steps, 1 per pass)"), ("eap-ig-activations", "eap-ig-activations"),
                ("patched", "patched forward / curve (1 circuit / pass)"))
LENGTH = 64
USABLE = 0.9  # of a GPU's memory: the CUDA context, the allocator's fragmentation


def scaled_peak(terms: dict, method: str, shape: dict, batch: int, length: int = LENGTH) -> float:
    """Bytes above the weights for ``shape`` (a row of :data:`SIZES`): the Llama-3.1-8B-width terms scaled by
    width. Per layer per token row (c, e) by the larger of the sender width ((heads + 1) x d) and the MLP width
    ratios; the per-layer constant (b) by the layer's parameter count; plus the score matrix [S, R] (float32),
    which grows with layers squared and is not in the 1-4-layer fit."""
    L, d, H, m = shape["layers"], shape["d"], shape["heads"], shape["d_mlp"]
    width = max((H + 1) * d / (33 * 4096), m / 14336)
    per_layer_params = 4 * d * d + 3 * d * m
    b_scale = per_layer_params / (4 * 4096**2 + 3 * 4096 * 14336)  # q/o/k/v as 4 d^2: an upper bound under GQA
    mult = 5 if method == "eap-ig" else 1  # steps_per_pass=5 (the default stacks min(5, 96 // batch))
    u = batch * length * mult
    t = terms
    mib = t["a"] + L * (t["b"] * b_scale + t["c"] * width * u) + t.get("e", 0.0) * width * u
    S, R = 1 + L * (H + 1), L * (3 * H + 1) + 1
    return mib * MiB + 4 * S * R


def activation_steps_factor(rows: list[dict]) -> float:
    """The largest measured ratio of eap-ig-activations' peak at 5 steps to its peak at 1 step (same config)."""
    ratios = [r5["peak_above_mib"] / r1["peak_above_mib"] for r5 in rows if r5.get("activation_steps", 1) == 5
              for r1 in rows if r1["method"] == "eap-ig-activations" and r1.get("activation_steps", 1) == 1
              and not r1["fresh_process"]
              and (r1["layers"], r1["dtype"], r1["batch"], r1["length"]) ==
              (r5["layers"], r5["dtype"], r5["batch"], r5["length"])]
    return max(ratios, default=1.0)


def fits_where(saved: dict) -> tuple[list[str], list[dict]]:
    """The table of the README: per model size and GPU, the largest batch of 64-token examples each method fits."""
    derived = derived_half(saved["fits"])
    lines = [f"Largest batch of {LENGTH}-token examples (a power of 2) whose predicted peak fits beside the bf16 "
             f"weights in {USABLE:.0%} of the GPU ('-': the weights alone do not fit; 0: not even one example). "
             "Predicted peak: the larger of the derived bf16 model and bf16's own fit (where there is one), "
             "scaled to the model's widths as above. eap-ig stacked = steps_per_pass=5. eap-ig-activations: 5 "
             f"steps, its 1-step fit times {activation_steps_factor(saved['rows']):.2f}, the largest measured "
             "5-step / 1-step ratio.", "",
             "| model (bf16 weights) | method | " + " | ".join(f"{g} GB" for g in GPUS_GB) + " |",
             "|---|---|" + "---|" * len(GPUS_GB)]
    cells = []
    for name, shape in SIZES.items():
        weights = 2 * shape["params"]
        for key, label in FITS_METHODS:
            models = [m for m in (derived.get(f"{key}|bfloat16-derived"), saved["fits"].get(f"{key}|bfloat16"))
                      if m is not None]
            if not models:
                continue
            row = []
            for g in GPUS_GB:
                room = USABLE * g * GB - weights
                if room <= 0:
                    row.append("-")
                    continue
                best = 0
                for b in (1, 2, 4, 8, 16, 32, 64, 128, 256):
                    factor = activation_steps_factor(saved["rows"]) if key == "eap-ig-activations" else 1.0
                    if factor * max(scaled_peak(m["terms"], key, shape, b) for m in models) <= room:
                        best = b
                row.append(str(best) if best < 256 else ">= 256")
                cells.append({"model": name, "method": key, "gpu_gb": g, "max_batch": best})
            lines.append(f"| {name} ({weights / GB:.1f} GB) | {label} | " + " | ".join(row) + " |")
    return lines, cells


def verdict_text(fits: dict) -> str:
    T = TARGET
    tokens = T["batch"] * T["length"]
    out = []
    allfits = {**fits, **derived_half(fits)}
    for key, spp, how in (("eap-ig|bfloat16-derived", 5, "fp32 fit, cross-layer term halved"),
                          ("eap-ig:spp1|bfloat16-derived", 1, "fp32 fit, cross-layer term halved"),
                          ("eap-ig|bfloat16", 5, "bf16's own fit")):
        if key in allfits:
            p = predict(allfits[key], T["layers"], tokens * spp) * MiB / GB
            out.append(f"steps_per_pass={spp} ({how}): {p:.1f} GB ({'within' if p <= T['limit_gb'] else 'OVER'} "
                       f"{T['limit_gb']:.0f} GB)")
    if not out:
        return ""
    return (f"**Goal (issue 18): EAP-IG, 5 steps, batch {T['batch']} x {T['length']}, bf16, 32 layers, at most "
            f"{T['limit_gb']:.0f} GB above the {T['weights_gb']:.0f} GB of weights.** Predicted: "
            + "; ".join(out) + ".")


# ---- the GPU series: measured against predicted ------------------------------------------------------------------
def session_estimate_mib(r: dict) -> float | None:
    """What the session's estimate (:func:`circuits.session.memory.estimate_peak`, as the code now stands) says
    the row's pass holds: the largest of its method's memory plans at the chunks the row ran with."""
    from circuits.discovery import METHODS
    from circuits.session.memory import ModelWidths, estimate_peak

    w = ModelWidths(**r["widths"])
    b, P = r.get("examples_per_pass", r["batch"]), r["length"]
    method = r["method"].split(":")[0]
    if method in ("patched", "patched-sparse", "curve", *FINE_METHODS):
        circuits_ = r.get("circuits_per_pass") if method == "curve" else 4
        reads = {"patched-positions": {"by_position": True}, "patched-neurons": {"neurons": 1}}.get(method, {})
        return None if circuits_ is None else \
            estimate_peak(w, "patched", examples=b, positions=P, circuits=circuits_, **reads).total / MiB
    given = {"steps": r.get("activation_steps", 1)} if method == "eap-ig-activations" else {}
    out = []
    for plan in METHODS[method].memory_plans({**METHOD_PARAMS[r["method"]], **given}):
        steps = r.get("steps_per_pass", 1) if plan["kind"] == "attribution" else 1
        extra = {k: v for k, v in plan.items() if k not in ("kind", "steps", "fixed_steps")}
        out.append(estimate_peak(w, plan["kind"], examples=b, positions=P, steps=steps, **extra).total / MiB)
    return max(out)


def cpu_prediction_mib(cpu: dict | None, r: dict) -> float | None:
    """The CPU memory model's prediction at the row's point (results/memory_scale.json): its fit for the method
    and dtype, for bf16 the larger of bf16's own fit and the derived one (as the README's table takes it)."""
    if cpu is None:
        return None
    fits = cpu["fits"]
    keys = [f"{r['method']}|{r['dtype']}"] + ([f"{r['method']}|bfloat16-derived"] if r["dtype"] == "bfloat16" else [])
    models = [f for k, f in {**fits, **derived_half(fits)}.items() if k in keys]
    if not models:
        return None
    return max(predict(f, r["layers"], _units(r)) for f in models)


def gpu_report(saved: dict, cpu: dict | None) -> str:
    rows = saved["rows"]
    gpu = saved["machine"].get("gpu", "a GPU")
    cpu_rows = {(c["layers"], c["dtype"], c["batch"], c["length"], c["method"]): c["peak_above_mib"]
                for c in (cpu or {}).get("rows", []) if not c["fresh_process"] and c.get("activation_steps", 1) == 1}
    table = []
    for r in rows:
        est = session_estimate_mib(r)
        pred = cpu_prediction_mib(cpu, r)
        measured = None if "error" in r else r["peak_above_mib"]
        plan = (f"{r['steps_per_pass']} steps/pass" if "steps_per_pass" in r else
                f"{r['circuits_per_pass']} circuits/pass" if "circuits_per_pass" in r else
                "4 circuits/pass" if r["method"] == "patched" else "-")
        table.append({
            "layers": r["layers"], "dtype": r["dtype"], "batch x length": f"{r['batch']} x {r['length']}",
            "vocab": r["vocab"], "method": r["method"], "plan": plan, "examples/pass": r["examples_per_pass"],
            "weights (MiB)": r["weights_mib"], "measured peak above (MiB)": measured if measured is not None
            else r["error"], "allocator reserved above (MiB)": r.get("reserved_above_mib"),
            "session estimate (MiB)": est, "measured / estimate": None if est is None or measured is None
            else measured / est, "CPU fit's prediction (MiB)": pred,
            "measured / CPU fit": None if pred is None or measured is None else measured / pred,
            "measured on CPU, same point (MiB)": cpu_rows.get((r["layers"], r["dtype"], r["batch"], r["length"],
                                                                r["method"])),
            "seconds": r["seconds"]})
    import pandas as pd

    frame = pd.DataFrame(table)
    T = TARGET
    target = [t for t in table if (t["layers"], t["dtype"], t["batch x length"], t["method"]) ==
              (T["layers"], T["dtype"], f"{T['batch']} x {T['length']}", "eap-ig")]
    lines = [f"Measured on **{gpu}** (torch {saved['machine'].get('torch')}), random weights of Llama-3.1-8B's "
             "widths (hidden 4096, 32 heads, 8 kv heads, intermediate 14336). Peak = `torch.cuda.max_memory_allocated` "
             "above `memory_allocated` just before the method (the weights and the session's data are below it), "
             "after `session.fit` of the method's memory plans as `circuits.discover` does, so the session's own "
             "budget (half the free GPU memory, `budget_mib` in the .json) chose the chunks. 'allocator reserved "
             "above' is the caching allocator's reserved peak (what `nvidia-smi` sees grow). 'session estimate': "
             "`circuits.session.memory.estimate_peak` at the chunks the row ran with (recomputed when this report is "
             "rendered: `python benchmarks/memory_scale.py --device cuda --render`); 'CPU fit's prediction': the CPU "
             "memory model of results/memory_scale.md at this point (for bf16 the larger of its own fit and the "
             "derived one); the CPU grid's points (vocabulary 8,192) are repeated here, so CPU and GPU are compared "
             "at identical shapes. The target series (batch 8 x 64, 1 to 32 layers) uses the real vocabulary "
             "(128,256): at 32 layers it is Llama-3.1-8B's shape.", ""]
    if target:
        t = target[0]
        m = t["measured peak above (MiB)"]
        if isinstance(m, float):
            gb = m * MiB / GB
            est, pred = t["session estimate (MiB)"], t["CPU fit's prediction (MiB)"]
            verdict = "within" if gb <= T["limit_gb"] else "OVER"
            text = (f"**Issue 18's goal, measured: EAP-IG (5 steps, {t['plan']}), batch {T['batch']} x "
                    f"{T['length']}, bf16, {T['layers']} layers: {gb:.1f} GB above the "
                    f"{t['weights (MiB)'] * MiB / GB:.1f} GB of weights ({verdict} {T['limit_gb']:.0f} GB)")
            if est:
                text += f"; the session estimated {est * MiB / GB:.1f} GB"
            if pred:
                text += f", the CPU fit predicted {pred * MiB / GB:.1f} GB"
            lines += [text + ".**", ""]
        else:
            lines += [f"**Issue 18's goal shape ran out of memory: {m}.**", ""]
    over = [t for t in table if t["measured / estimate"] is not None and t["measured / estimate"] > 1.0]
    ratios = [t["measured / estimate"] for t in table if t["measured / estimate"] is not None]
    if ratios:
        lines += [f"Measured / session estimate over {len(ratios)} rows: {min(ratios):.2f} to {max(ratios):.2f}"
                  + (f"; {len(over)} row(s) above the estimate: "
                     + ", ".join(f"{t['method']} L={t['layers']} {t['dtype']} {t['batch x length']} "
                                 f"({t['measured / estimate']:.2f}x)" for t in over)
                     if over else "; the estimate is an upper bound on every row") + ".", ""]
    lines += [markdown_table(frame, ".2f"), ""]
    return "\n".join(lines)


def gpu_main(args) -> None:
    name = "memory_scale_gpu"
    cpu_json = RESULTS / "memory_scale.json"
    cpu = json.loads(cpu_json.read_text()) if cpu_json.exists() else None
    command = "python benchmarks/memory_scale.py --device cuda"
    if args.render:
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        kept = {k: v for k, v in saved.items() if k not in ("benchmark", "command")}  # the run's date, machine
        _, md_path = write(name, kept, gpu_report(saved, cpu), command)
        print(f"wrote {md_path} from the .json")
        return
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    partial = RESULTS / f"{name}.partial.json"
    rows: list[dict] = json.loads(partial.read_text()) if args.resume and partial.exists() else []
    done = {(r["layers"], r["dtype"], r["batch"], r["length"], r["vocab"]) for r in rows}
    grid = GPU_GRID[:1] if args.quick else GPU_GRID
    for layers, dtype, batch, length, methods, vocab in grid:
        if (layers, dtype, batch, length, vocab) in done:
            continue
        rows += measure_gpu(layers, dtype, batch, length, methods, vocab, threads=args.threads)
        partial.write_text(json.dumps(rows, indent=1))
    saved = {"rows": rows, "target": TARGET, **({"commit": args.commit} if args.commit else {})}
    from _common import machine

    json_path, md_path = write(name, saved, gpu_report({**saved, "machine": machine()}, cpu), command)
    partial.unlink(missing_ok=True)
    print(f"wrote {md_path} and {json_path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one layer, one small shape, fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the saved .json")
    p.add_argument("--resume", action="store_true", help="keep the configurations of an interrupted run's "
                   "results/memory_scale.partial.json")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: the GPU series (results/memory_scale_gpu.*), in one process")
    p.add_argument("--commit", help="the commit to record where the checkout has no git (a copied working tree)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.device == "cuda":
        gpu_main(args)
        return
    name = "memory_scale_quick" if args.quick else "memory_scale"
    if args.render:
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        md = report(saved)
        m = saved["machine"]
        header = (f"# {name}\n\nRegenerate: `{saved['command']}`\n\nCommit `{saved['commit']}`, {saved['date']}; "
                  f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads).\n\n")
        (RESULTS / f"{name}.md").write_text(header + md.strip() + "\n")
        print(f"wrote {RESULTS / name}.md from the .json")
        return
    torch.set_num_threads(args.threads)
    grid = QUICK if args.quick else GRID
    partial = RESULTS / f"{name}.partial.json"
    final = RESULTS / f"{name}.json"
    rows: list[dict] = []
    if args.resume:
        rows = json.loads(partial.read_text()) if partial.exists() else \
            json.loads(final.read_text())["rows"] if final.exists() else []
    measured: dict[tuple, set] = {}  # configuration -> the methods measured there
    for r in rows:
        key = (r["layers"], r["dtype"], r["batch"], r["length"], r["fresh_process"], r.get("activation_steps", 1))
        measured.setdefault(key, set()).add(r["method"])
    done = set(measured)
    for cfg in grid:
        missing = [m for m in cfg[4] if m not in measured.get((*cfg[:4], False, 1), set())]
        if not missing:  # (a resumed run measures only the methods a configuration lacks)
            continue
        rows += measure(*cfg[:4], missing, threads=args.threads)
        partial.write_text(json.dumps(rows, indent=1))
    for b, n in ((1, 16), (4, 16)):  # eap-ig-activations with 5 steps against the 1-step points
        if not args.quick and (1, "float32", b, n, False, 5) not in done:
            rows += measure(1, "float32", b, n, ("eap-ig-activations",), threads=args.threads, activation_steps=5)
    if not args.quick and (*CROSS_CHECK[:4], True, 1) not in done:
        L, dt, b, n, methods = CROSS_CHECK
        for method in methods:
            rows += measure(L, dt, b, n, (method,), threads=args.threads, fresh=True)
            partial.write_text(json.dumps(rows, indent=1))
    fits = fit(rows)
    saved = {"rows": rows, "fits": fits, "vocab": VOCAB, "target": TARGET, "verdict": verdict_text(fits)}
    command = "python benchmarks/memory_scale.py" + (" --quick" if args.quick else "")
    json_path, md_path = write(name, saved, report(saved), command)
    partial.unlink(missing_ok=True)
    print(f"wrote {md_path} and {json_path}")


if __name__ == "__main__":
    main()
