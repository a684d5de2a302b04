"""Shared by the benchmark scripts: provenance (commit, machine, settings) and writing results/."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from circuits.plotting.provenance import git_commit
from circuits.plotting.provenance import machine as provenance_machine

RESULTS = Path(__file__).resolve().parent.parent / "results"


def machine() -> dict:
    """The machine (circuits.plotting.provenance) plus the torch thread count the timings ran with."""
    return {**provenance_machine(), "torch_threads": torch.get_num_threads()}


def commit() -> str:
    return git_commit()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def pass_peak_mb(fn: Callable[[], object], device: str) -> float:
    """Peak memory of one call of ``fn`` in MB above what was held before it: CUDA's peak allocated, else the
    process's peak resident size (VmHWM, meaningful in a fresh process) above its resident size (VmRSS)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - base) / 1024


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, run in turns so machine noise hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def write(name: str, result: dict, markdown: str, command: str) -> tuple[Path, Path]:
    """results/NAME.json (numbers and provenance) and results/NAME.md (the table people read)."""
    RESULTS.mkdir(exist_ok=True)
    result = {"benchmark": name, "command": command, "commit": commit(), "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **result}
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    header = (f"# {name}\n\nRegenerate: `{command}`\n\nCommit `{result['commit']}`, {result['date']}; "
              f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads)"
              f"{', ' + m['gpu'] if 'gpu' in m else ''}.\n\n")
    md_path.write_text(header + markdown.strip() + "\n")
    return json_path, md_path


def markdown_table(frame, floatfmt: str = ".3f") -> str:
    """A pandas DataFrame as a Markdown table (no extra dependency); NaN/None shown as '-'."""
    import math

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)
