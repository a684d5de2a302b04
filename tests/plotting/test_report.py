"""The report generator on a synthetic results table, and the `circuits plot` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from circuits.cli import main
from circuits.plotting.curves import MIB_FRACTIONS
from circuits.plotting.report import load_results, summarize, write_report

from .conftest import check_png, check_svg, scored_graph

PROV = {"commit": "abc1234-dirty", "machine": {"cpu": "Test CPU", "cores": 2, "torch": "2.x", "gpu": "Test GPU"},
        "date": "2026-01-01 00:00:00 UTC", "command": "circuits plot --results R --out-dir D", "settings": {}}


def synthetic(graph_dir=None) -> pd.DataFrame:
    """2 tasks x 2 methods x 3 seeds; one failed job; NaN AUROC where no ground truth (greater-than)."""
    rows = []
    cpr = {("ioi", "eap"): [0.5, 0.7, 0.9], ("ioi", "eap-ig"): [0.8, 0.9, 1.0],
           ("greater-than", "eap"): [0.6, 0.6, 0.6], ("greater-than", "eap-ig"): [0.7, 0.75, float("nan")]}
    for (task, method), values in cpr.items():
        for seed, v in enumerate(values):
            failed = math.isnan(v)
            f = list(1 - np.exp(-(seed + 1) * np.asarray(MIB_FRACTIONS) * 100))
            rows.append({
                "sweep": "synthetic", "job_id": f"{task}-{method}-{seed}", "model": "gpt2", "task": task,
                "method": method, "params": json.dumps({"steps": 5} if method == "eap-ig" else {}),
                "ablation": "corrupted", "seed": seed, "status": "error" if failed else "ok",
                "error": "Traceback (most recent call last):\nMemoryError: out of memory" if failed else None,
                "cpr": v, "cmd": 1 - v if not failed else float("nan"),
                "minimal_size": 100 * (seed + 1) if not failed else float("nan"),
                "auroc": (0.6 + 0.1 * seed) if task == "ioi" else float("nan"),
                "spearman_exact": 0.5, "wall_time_s": 10.0 * (seed + 1),
                "graph_path": (f"graphs/{method}.json" if graph_dir is not None else None),
                "curve": None if failed else json.dumps({"fractions": list(MIB_FRACTIONS), "faithfulness": f}),
            })
    return pd.DataFrame(rows)


def test_summary_numbers():
    s = summarize(synthetic()).set_index(["task", "method"])
    assert s.loc[("ioi", "eap"), "cpr_mean"] == pytest.approx(0.7)
    assert s.loc[("ioi", "eap"), "cpr_std"] == pytest.approx(0.2)  # sample std of 0.5, 0.7, 0.9
    assert s.loc[("greater-than", "eap-ig"), "runs"] == 2 and s.loc[("greater-than", "eap-ig"), "failed"] == 1
    assert s.loc[("greater-than", "eap-ig"), "cpr_mean"] == pytest.approx(0.725)
    assert math.isnan(s.loc[("greater-than", "eap"), "auroc_mean"])


def test_report_tables(tmp_path):
    path = write_report(synthetic(), tmp_path, provenance=PROV, figures=False, results_path="results/x.parquet")
    text = path.read_text()
    assert path.name == "REPORT.md"
    assert "`circuits plot --results R --out-dir D`" in text  # how to regenerate
    assert "abc1234-dirty" in text and "Test CPU" in text and "Test GPU" in text and "2026-01-01" in text
    assert "12 jobs (11 succeeded, 1 failed)" in text
    lines = {tuple(c.strip() for c in line.strip("|").split("|")): line for line in text.splitlines()
             if line.startswith("| gpt2")}
    rows = {k[:3]: k for k in lines}
    # mean ± sample std by hand: ioi/eap CPR 0.5, 0.7, 0.9 -> 0.700 ± 0.200; minimal 100, 200, 300 -> 200 ± 100
    ioi_eap = rows[("gpt2", "ioi", "eap")]
    assert ioi_eap[3] == "3"
    assert ioi_eap[4] == "0.700 ± 0.200"
    assert ioi_eap[5] == "0.300 ± 0.200"
    assert ioi_eap[6] == "200 ± 100"
    assert ioi_eap[7] == "0.700 ± 0.100"  # AUROC 0.6, 0.7, 0.8
    assert ioi_eap[9] == "20 ± 10"  # wall time
    # the best CPR per task in bold; NaN AUROC (no ground truth) shows as a dash
    assert rows[("gpt2", "ioi", "eap-ig")][4] == "**0.900 ± 0.100**"
    gt = rows[("gpt2", "greater-than", "eap-ig")]
    assert gt[3] == "2 (1 failed)" and gt[4] == "**0.725 ± 0.035**" and gt[7] == "—"
    assert rows[("gpt2", "greater-than", "eap")][4] == "0.600 ± 0.000"
    # failed jobs with the error's last line; settings per method
    assert "| greater-than-eap-ig-2 | gpt2 | greater-than | eap-ig | 2 | error | MemoryError: out of memory |" in text
    assert '`{"steps": 5}`' in text
    csv = pd.read_csv(tmp_path / "summary.csv", comment="#")
    assert len(csv) == 4 and "cpr_mean" in csv
    assert (tmp_path / "summary.csv").read_text().startswith("# circuits @ abc1234-dirty")


def test_report_figures(tmp_path):
    (tmp_path / "graphs").mkdir()
    scored_graph(2, 4, seed=0).save(tmp_path / "graphs" / "eap.json")
    scored_graph(2, 4, seed=1).save(tmp_path / "graphs" / "eap-ig.json")
    table = synthetic(graph_dir=tmp_path / "graphs")
    table.to_parquet(tmp_path / "results.parquet")
    text = write_report(load_results(tmp_path / "results.parquet"), tmp_path, provenance=PROV,
                        results_path=tmp_path / "results.parquet").read_text()
    for name in ("curves_gpt2-ioi.png", "curves_gpt2-greater-than.png", "summary.png", "cost.png",
                 "scores_gpt2-ioi.png", "agreement_gpt2-ioi.png"):
        assert f"]({name})" in text, name
        check_png(tmp_path / name, min_px=(250, 400))


def test_cli_plot_graph(tmp_path, capsys):
    g = scored_graph(2, 4)
    g.save(tmp_path / "g.json")
    assert main(["plot", str(tmp_path / "g.json"), "--top-k", "30", "--absolute", "--out", str(tmp_path / "g.png"),
                 "--out", str(tmp_path / "g.svg"), "--out", str(tmp_path / "g.dot")]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.startswith(f"wrote {tmp_path / 'g.png'}, {tmp_path / 'g.svg'}, {tmp_path / 'g.dot'}")
    check_png(tmp_path / "g.png")
    check_svg(tmp_path / "g.svg", min_bytes=5_000)
    assert (tmp_path / "g.dot").read_text().startswith("digraph")
    assert main(["plot", str(tmp_path / "g.json"), "--out", str(tmp_path / "g.bmp")]) == 2  # a clean error
    assert main(["plot"]) == 2


def test_cli_plot_results(tmp_path, capsys):
    synthetic().to_csv(tmp_path / "results.csv", index=False)
    assert main(["plot", "--results", str(tmp_path / "results.csv"), "--no-figures"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.startswith(f"wrote {tmp_path / 'REPORT.md'}")
    text = (tmp_path / "REPORT.md").read_text()
    assert f"circuits plot --results {tmp_path / 'results.csv'} --out-dir {tmp_path} --no-figures" in text


def test_cli_help(capsys):
    with pytest.raises(SystemExit):
        main(["plot", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--results" in text and "dot -Tsvg" in text


def test_best_method_per_task_and_cost():
    """ioi: eap-ig's CPR mean 0.9 beats eap's 0.7 by 0.2, which is not beyond eap's spread (0.2); eap-ig's CMD
    0.1 beats 0.3. Times: both methods take 20 s on average (10, 20, 30 s), so 1x."""
    from circuits.plotting.report import best_per_task, cost_per_method

    summary = summarize(synthetic())
    best = best_per_task(summary, ["model", "task", "method"]).set_index(["task", "criterion"])
    row = best.loc[("ioi", "CPR ↑")]
    assert row["best"] == "eap-ig" and row["runner-up"] == "eap"
    assert row["margin"] == "0.200" and row["beyond spread"] == "no"
    assert row["best value"].startswith("0.900") and row["time vs runner-up"] == "1x"
    assert best.loc[("ioi", "CMD ↓"), "best"] == "eap-ig"
    gt = best.loc[("greater-than", "CPR ↑")]
    assert gt["best"] == "eap-ig" and gt["margin"] == "0.125"
    cost = cost_per_method(summary).set_index("method")
    assert cost.loc["eap", "vs eap-ig"] == "1.2x"  # ioi 20 s / 20 s, greater-than 20 / 15: geometric mean 1.15
