"""REPORT.md and its figures, generated from a sweep's results table (``results/<sweep>/results.parquet``).

One row per job (columns as the sweeps write them: ``sweep, job_id, model, task, method, params, ablation,
seed, status, error, cpr, cmd, minimal_size, auroc, spearman_exact, wall_time_s, graph_path, curve``; any
missing column is simply left out of the report). The report aggregates over seeds per (model, task, method)
-- mean +- sample std of every number, over the jobs that succeeded -- lists the failed jobs with their error,
and draws what the table allows: faithfulness curves per (model, task), a summary of CPR / CMD, cost against
CPR, and, where the graph files are at hand, method agreement and score distributions. Every figure and table
carries the commit, machine, date and settings that produced it, and the header says how to regenerate it all.

>>> path = write_report(pd.read_parquet("results/benchmark/results.parquet"), "results/benchmark",
...                     provenance=provenance(command="circuits plot --results ..."))   # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Hashable, Iterable, Mapping

import numpy as np

from circuits.plotting.provenance import machine_line, provenance as current_provenance, provenance_line

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

OK_STATUS = {"ok", "success", "succeeded", "done", "finished", "completed", "complete"}
# (column, heading, format): the numbers aggregated per (model, task, method), in this order.
METRICS = (
    ("cpr", "CPR ↑", "{:.3f}"),
    ("cmd", "CMD ↓", "{:.3f}"),
    ("minimal_size", "minimal circuit (f ≥ 0.9), edges", "{:,.0f}"),
    ("auroc", "AUROC vs known circuit", "{:.3f}"),
    ("spearman_exact", "Spearman vs exact", "{:.3f}"),
    ("wall_time_s", "discovery wall time (s)", "{:,.3g}"),
)
GROUP = ("model", "task", "method")
GRAPH_FILES = 12  # at most this many graph files are loaded per (model, task) for agreement / distributions


# ---- reading and aggregating -----------------------------------------------------------------------------------

def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """A results table from ``.parquet``, ``.csv``, ``.json`` (records) or ``.jsonl``."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results table at {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path, comment="#")
    if suffix == ".jsonl":
        return pd.read_json(path, lines=True)
    if suffix == ".json":
        return pd.read_json(path)
    raise ValueError(f"cannot read a results table from {path}: use .parquet, .csv, .json or .jsonl")


def succeeded(results: pd.DataFrame) -> pd.Series:
    """Bool per row: the job finished (status ok / success / done ..., or no status and no error)."""
    import pandas as pd

    n = len(results)
    if "status" in results:
        status = results["status"].astype("string").str.lower().str.strip()
        ok = status.isin(OK_STATUS).fillna(False)
        if "error" in results:
            no_status = status.isna()
            no_error = results["error"].isna() | (results["error"].astype("string").str.strip() == "")
            ok = ok | (no_status & no_error)
        return ok.astype(bool)
    if "error" in results:
        return (results["error"].isna() | (results["error"].astype("string").str.strip() == "")).astype(bool)
    return pd.Series(np.ones(n, dtype=bool), index=results.index)


def _group_keys(results: pd.DataFrame) -> list[str]:
    keys = [k for k in GROUP if k in results]
    if "ablation" in results and results["ablation"].nunique(dropna=True) > 1:
        keys.append("ablation")
    return keys


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, method[, ablation]): ``runs``, ``failed``, and ``{metric}_mean``, ``{metric}_std``,
    ``{metric}_n`` for every metric column present, over the jobs that succeeded (NaN values ignored)."""
    import pandas as pd

    keys = _group_keys(results)
    if not keys:
        raise ValueError(f"a results table needs at least one of {GROUP} to group by; got {list(results.columns)}")
    ok = succeeded(results)
    frame = results.assign(_ok=ok)
    rows = []
    for key, group in frame.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(keys, key))
        good = group[group["_ok"]]
        row["runs"] = int(len(good))
        row["failed"] = int((~group["_ok"]).sum())
        if "seed" in group:
            row["seeds"] = ", ".join(str(s) for s in sorted(good["seed"].dropna().unique().tolist()))
        for col, _, _ in METRICS:
            if col not in group:
                continue
            vals = pd.to_numeric(good[col], errors="coerce").to_numpy(dtype=float)
            vals = vals[np.isfinite(vals)]
            row[f"{col}_n"] = int(vals.size)
            row[f"{col}_mean"] = float(vals.mean()) if vals.size else float("nan")
            row[f"{col}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def from_sweep(results: pd.DataFrame, bases: Iterable[Path] = ()) -> pd.DataFrame:
    """The report's columns from a ``circuits run`` table (see :mod:`circuits.sweeps.job`); other tables pass.

    * ``method`` becomes the method *and its settings* (``acdc threshold=0.01``; seeds excluded), so different
      settings are separate rows, never averaged together (the bare name stays in ``method_name``);
    * ``minimal_size`` = ``minimal_edges``, ``wall_time_s`` = ``discover_s`` (the method's own time),
      ``graph_path`` = ``graph_file``, ``curve`` = the signed curve with MIB's CPR and CMD;
    * ``spearman_exact``: Spearman rank correlation of each job's edge scores with those of the ``exact`` job on
      the same model, task, ablation, seed and data size (read from the graph files; NaN where either is
      missing, for node-level methods, and for ``exact`` itself).
    """

    if "minimal_edges" not in results and "discover_s" not in results:
        return results
    out = results.copy()
    if "params" in out and "method" in out:
        out["method_name"] = out["method"]
        out["method"] = [_setting_label(m, p) for m, p in zip(out["method"], out["params"])]
    for new, old in (("minimal_size", "minimal_edges"), ("wall_time_s", "discover_s"), ("graph_path", "graph_file")):
        if old in out and new not in out:
            out[new] = out[old]
    if "curve_signed" in out and "curve" not in out:
        out["curve"] = [_sweep_curve(r) for _, r in out.iterrows()]
    if "spearman_exact" not in out and "graph_path" in out and "method_name" in out:
        out["spearman_exact"] = _spearman_with_exact(out, list(bases))
    return out


def _setting_label(method: Any, params: Any) -> str:
    try:
        values = json.loads(params) if isinstance(params, str) else dict(params or {})
    except (TypeError, ValueError):
        values = {}
    shown = " ".join(f"{k}={v}" for k, v in sorted(values.items()) if k != "seed")
    return f"{method} {shown}".strip()


def _sweep_curve(row: Any) -> Any:
    try:
        fractions, signed = json.loads(row["curve_fractions"]), json.loads(row["curve_signed"])
    except (TypeError, ValueError, KeyError):
        return None
    return {"fractions": fractions, "faithfulness": signed, "cpr": row.get("cpr"), "cmd": row.get("cmd")}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    import pandas as pd

    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _spearman_with_exact(frame: pd.DataFrame, bases: list[Path]) -> list[float]:
    from circuits.graph import Graph

    keys = [k for k in ("model", "task", "ablation", "seed", "n") if k in frame]
    ok = succeeded(frame)
    cache: dict[Path, np.ndarray | None] = {}

    def edge_scores(path_value: Any) -> np.ndarray | None:
        path = _resolve(path_value, bases or [Path.cwd()])
        if path is None:
            return None
        if path not in cache:
            try:
                g = Graph.load(path)
                order = g.structure.edge_order
                cache[path] = g.scores.detach().double().cpu()[order[:, 0], order[:, 1]].numpy()
            except Exception:  # a missing or unreadable file leaves NaN, it does not stop the report
                cache[path] = None
        return cache[path]

    exact = {tuple(r[k] for k in keys): r["graph_path"]
             for _, r in frame[ok & (frame["method_name"] == "exact")].iterrows()}
    out = []
    for i, r in frame.iterrows():
        ref = exact.get(tuple(r[k] for k in keys))
        if not ok.at[i] or ref is None or r["method_name"] in ("exact", "node-ap", "node-patching"):
            out.append(float("nan"))
            continue
        a, b = edge_scores(r["graph_path"]), edge_scores(ref)
        out.append(_spearman(a, b) if a is not None and b is not None and len(a) == len(b) else float("nan"))
    return out


def _cell(mean: float, std: float, n: int, fmt: str) -> str:
    if n == 0 or not math.isfinite(mean):
        return "—"
    text = fmt.format(mean)
    if n > 1 and math.isfinite(std):
        text += " ± " + fmt.format(std)
    return text


# ---- figures ---------------------------------------------------------------------------------------------------

def _slug(*parts: Any) -> str:
    text = "_".join(str(p) for p in parts if p is not None and str(p) != "")
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "all"


def _has_curve(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    if isinstance(value, str):
        return bool(value.strip()) and value.strip().lower() not in ("nan", "none", "null")
    try:
        return len(value) > 0
    except TypeError:
        return False


def _curve_value(value: Any) -> Any:
    """Parquet gives back numpy arrays and dicts of arrays; turn strings of JSON into objects."""
    if isinstance(value, (str, bytes)):
        return json.loads(value)
    return value


def _resolve(path_value: Any, bases: Iterable[Path]) -> Path | None:
    if not isinstance(path_value, str) or not path_value.strip():
        return None
    p = Path(path_value)
    if p.is_absolute():
        return p if p.exists() else None
    for base in bases:
        if (base / p).exists():
            return base / p
    return None


def _figure_provenance(prov: Mapping[str, Any], **settings: Any) -> dict[str, Any]:
    out = dict(prov)
    out["settings"] = {**dict(prov.get("settings") or {}), **{k: v for k, v in settings.items() if v is not None}}
    return out


def _curves_figures(results: pd.DataFrame, ok: pd.Series, out_dir: Path, prov: Mapping[str, Any],
                    keys: list[str]) -> list[tuple[str, Path]]:
    from circuits.plotting.curves import plot_faithfulness_curves

    if "curve" not in results:
        return []
    figs = []
    frame = results[ok & results["curve"].map(_has_curve)]
    scope = [k for k in ("model", "task") if k in frame]
    groups = frame.groupby(scope, sort=True) if scope else [((), frame)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        label_cols = [k for k in keys if k not in scope]
        curves: dict[str, list[Any]] = {}
        for _, row in group.iterrows():
            label = " / ".join(str(row[k]) for k in label_cols) or "run"
            try:
                curves.setdefault(label, []).append(_curve_value(row["curve"]))
            except (ValueError, TypeError):
                continue
        if not curves:
            continue
        name = f"curves_{_slug(*key)}.png"
        where = " · ".join(f"{k} {v}" for k, v in zip(scope, key))
        try:
            fig = plot_faithfulness_curves(curves, out_dir / name, title=f"Faithfulness: {where}",
                                           provenance=_figure_provenance(prov, **dict(zip(scope, key))))
        except (ValueError, TypeError) as err:
            warnings.warn(f"could not draw the faithfulness curves of {where}: {err}", stacklevel=3)
            continue
        del fig
        figs.append((f"Faithfulness curves, {where}", out_dir / name))
    return figs


def _summary_figure(summary: pd.DataFrame, keys: list[str], out_dir: Path, prov: Mapping[str, Any]) -> Path | None:
    from circuits.plotting.style import method_colour, save_figure, subplots

    metrics = [m for m in ("cpr", "cmd") if f"{m}_mean" in summary and summary[f"{m}_mean"].notna().any()]
    if not metrics or "method" not in summary:
        return None
    scope = [k for k in keys if k != "method"]
    summary = summary.assign(_where=summary[scope].astype(str).agg(" / ".join, axis=1) if scope else "all")
    wheres = list(dict.fromkeys(summary["_where"]))
    methods = list(dict.fromkeys(summary["method"]))
    width = max(6.0, 1.1 + 0.35 * len(wheres) * len(methods))
    fig, axes = subplots(1, len(metrics), min(width, 20.0) * (len(metrics) / 1.5), 4.0)
    bar = 0.8 / len(methods)
    for ax, metric in zip(axes[0], metrics):
        for j, method in enumerate(methods):
            sub = summary[summary["method"] == method].set_index("_where").reindex(wheres)
            xs = np.arange(len(wheres)) + (j - (len(methods) - 1) / 2) * bar
            ax.bar(xs, sub[f"{metric}_mean"].to_numpy(float), bar * 0.92, color=method_colour(method, j),
                   yerr=np.nan_to_num(sub[f"{metric}_std"].to_numpy(float)), capsize=2, error_kw={"lw": 0.8},
                   label=str(method))
        ax.set_xticks(np.arange(len(wheres)))
        ax.set_xticklabels(wheres, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{metric.upper()} ({'higher' if metric == 'cpr' else 'lower'} is better), mean ± std",
                     fontsize=9, loc="left")
        ax.grid(True, axis="y", color="0.92")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0, -1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    from circuits.plotting.provenance import stamp
    stamp(fig, prov)
    return save_figure(fig, out_dir / "summary.png")


def _cost_figure(results: pd.DataFrame, ok: pd.Series, out_dir: Path, prov: Mapping[str, Any]) -> Path | None:
    import pandas as pd

    from circuits.plotting.style import method_colour, save_figure, subplots

    if not {"wall_time_s", "cpr", "method"} <= set(results.columns):
        return None
    frame = results[ok].assign(wall=pd.to_numeric(results["wall_time_s"], errors="coerce"),
                               cprv=pd.to_numeric(results["cpr"], errors="coerce"))
    frame = frame[np.isfinite(frame["wall"]) & np.isfinite(frame["cprv"]) & (frame["wall"] > 0)]
    if frame.empty:
        return None
    fig, axes = subplots(1, 1, 6.0, 4.0)
    ax = axes[0, 0]
    for j, (method, group) in enumerate(frame.groupby("method", sort=True)):
        ax.scatter(group["wall"], group["cprv"], s=22, color=method_colour(str(method), j), label=str(method),
                   alpha=0.85, edgecolors="white", linewidths=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("wall time per job (s, log scale)")
    ax.set_ylabel("CPR")
    ax.set_title("Cost against faithfulness (each point one job)", fontsize=9, loc="left")
    ax.grid(True, color="0.92")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    from circuits.plotting.provenance import stamp
    stamp(fig, prov)
    return save_figure(fig, out_dir / "cost.png")


def _graph_figures(results: pd.DataFrame, ok: pd.Series, out_dir: Path, prov: Mapping[str, Any],
                   bases: list[Path], agreement_fraction: float) -> list[tuple[str, Path]]:
    from circuits.graph import Graph
    from circuits.plotting.scores import plot_method_agreement, plot_score_distribution

    if "graph_path" not in results or "method" not in results:
        return []
    frame = results[ok]
    if "seed" in frame:
        frame = frame.sort_values("seed", kind="stable")
    scope = [k for k in ("model", "task") if k in frame]
    figs: list[tuple[str, Path]] = []
    groups = frame.groupby(scope, sort=True) if scope else [((), frame)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        graphs: dict[str, Graph] = {}
        for _, row in group.drop_duplicates("method").head(GRAPH_FILES).iterrows():
            path = _resolve(row["graph_path"], bases)
            if path is None:
                continue
            try:
                graphs[str(row["method"])] = Graph.load(path)
            except Exception as err:  # a bad file must not stop the report
                warnings.warn(f"could not read {path}: {err}", stacklevel=3)
        if not graphs:
            continue
        where = " · ".join(f"{k} {v}" for k, v in zip(scope, key))
        fprov = _figure_provenance(prov, **dict(zip(scope, key)))
        shapes = {(g.structure.n_layers, g.structure.n_heads, g.structure.has_mlp) for g in graphs.values()}
        name = f"scores_{_slug(*key)}.png"
        plot_score_distribution(graphs, out_dir / name, title=f"Edge-score distributions: {where}", provenance=fprov)
        figs.append((f"Edge-score distributions, {where} (first seed of each method)", out_dir / name))
        if len(graphs) >= 2 and len(shapes) == 1:
            n_edges = next(iter(graphs.values())).structure.n_edges
            k = max(1, int(agreement_fraction * n_edges))
            name = f"agreement_{_slug(*key)}.png"
            plot_method_agreement(graphs, k, out_dir / name, title=f"Top-{k:,} edges ({100 * agreement_fraction:g}%), "
                                  f"Jaccard: {where}", provenance=_figure_provenance(fprov, k=k))
            figs.append((f"Agreement of the methods' top {100 * agreement_fraction:g}% edges (k = {k:,}), {where}",
                         out_dir / name))
    return figs


# ---- which method wins -----------------------------------------------------------------------------------------

def best_per_task(summary: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per (task scope, criterion): the best method on mean CPR (highest) and on mean CMD (lowest), the
    runner-up, the margin of the means, both spreads over seeds and both discovery times."""
    import pandas as pd

    scope = [k for k in keys if k != "method"]
    if "method" not in keys or not scope:
        return pd.DataFrame()
    rows = []
    for key, group in summary.groupby(scope, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        for col, label, higher in (("cpr", "CPR ↑", True), ("cmd", "CMD ↓", False)):
            if f"{col}_mean" not in group:
                continue
            ranked = group.dropna(subset=[f"{col}_mean"]).sort_values(f"{col}_mean", ascending=not higher,
                                                                        kind="stable")
            if ranked.empty:
                continue
            first = ranked.iloc[0]
            second = ranked.iloc[1] if len(ranked) > 1 else None

            row: dict[str, Any] = dict(zip(scope, key))
            row.update({"criterion": label, "best": first["method"], "best value": _value(first, col),
                        "runner-up": "—" if second is None else second["method"],
                        "runner-up value": "—" if second is None else _value(second, col),
                        "margin": "—" if second is None else f"{abs(first[f'{col}_mean'] - second[f'{col}_mean']):.3f}",
                        "beyond spread": "—" if second is None else _beyond_spread(first, second, col),
                        "best time (s)": f"{_seconds(first):.3g}",
                        "time vs runner-up": "—" if second is None or not _seconds(second) > 0
                        else f"{_seconds(first) / _seconds(second):.2g}x"})
            rows.append(row)
    return pd.DataFrame(rows)


def _value(r: Any, col: str) -> str:
    return _cell(r[f"{col}_mean"], r[f"{col}_std"], int(r[f"{col}_n"]), "{:.3f}")


def _beyond_spread(first: Any, second: Any, col: str) -> str:
    """"yes" when the margin of the means exceeds both spreads over seeds and the table's rounding (else the order
    is not settled)."""
    spreads = [float(r[f"{col}_std"]) for r in (first, second)]
    spread = max([x for x in spreads if math.isfinite(x)] + [5e-4])  # below the table's 3 decimals: a tie
    return "yes" if abs(float(first[f"{col}_mean"]) - float(second[f"{col}_mean"])) > spread else "no"


def _seconds(r: Any) -> float:
    return float(r.get("wall_time_s_mean", float("nan")))


def cost_per_method(summary: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean discovery wall time over the tasks it ran on, and its ratio to ``eap-ig`` on the same
    tasks (geometric mean of the per-task ratios)."""
    import pandas as pd

    if "wall_time_s_mean" not in summary or "method" not in summary:
        return pd.DataFrame()
    scope = [k for k in ("model", "task", "ablation") if k in summary]
    reference = [m for m in summary["method"].unique() if str(m).split(" ")[0] == "eap-ig"]
    ref = summary[summary["method"] == reference[0]] if reference else None
    rows = []
    for method, group in summary.groupby("method", sort=True):
        times = group["wall_time_s_mean"].to_numpy(dtype=float)
        row: dict[str, Any] = {"method": method, "tasks": int(np.isfinite(times).sum()),
                               "mean time (s)": f"{np.nanmean(times):.3g}" if np.isfinite(times).any() else "—"}
        ratio = "—"
        if ref is not None and scope:
            joined = group.merge(ref, on=scope, suffixes=("", "_ref"))
            r = joined["wall_time_s_mean"].to_numpy(dtype=float) / joined["wall_time_s_mean_ref"].to_numpy(dtype=float)
            r = r[np.isfinite(r) & (r > 0)]
            if r.size:
                ratio = f"{float(np.exp(np.log(r).mean())):.2g}x"
        row[f"vs {reference[0] if reference else 'eap-ig'}"] = ratio
        rows.append(row)
    return pd.DataFrame(rows)


# ---- the report ------------------------------------------------------------------------------------------------

def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    head = [h.replace("|", "\\|") for h in header]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines)


def _distinct(results: pd.DataFrame, col: str, limit: int = 12) -> str:
    if col not in results:
        return ""
    vals = [str(v) for v in dict.fromkeys(results[col].dropna().tolist())]
    more = f" (+{len(vals) - limit} more)" if len(vals) > limit else ""
    return ", ".join(vals[:limit]) + more


def _params_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "{}"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, Mapping):
        value = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in value.items()}
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def write_report(results: pd.DataFrame, out_dir: str | os.PathLike, *,
                 provenance: Mapping[str, Any] | None = None, title: str | None = None,
                 results_path: str | os.PathLike | None = None, figures: bool = True,
                 agreement_fraction: float = 0.01) -> Path:
    """Write ``out_dir/REPORT.md`` (and ``summary.csv`` and the figures) from a results table; return its path.

    Parameters
    ----------
    results : DataFrame
        One row per job (see the module docstring).
    provenance : mapping, optional
        ``{commit, machine, date, command, settings}`` of this run (default: :func:`provenance` now). The
        ``command`` is printed as the way to regenerate the report.
    results_path : path, optional
        Where the table was read from (named in the header; graph paths are also looked up relative to it).
    figures : bool
        Draw the figures (curves, summary, cost, agreement and score distributions where possible).
    agreement_fraction : float
        Method agreement compares each method's top ``agreement_fraction`` of the edges (default 1%).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = from_sweep(results, [Path.cwd(), out_dir] + ([Path(results_path).parent] if results_path else []))
    prov = dict(provenance or current_provenance())
    sweep = _distinct(results, "sweep") or out_dir.name
    prov.setdefault("settings", {})
    prov["settings"] = {"sweep": sweep, **dict(prov["settings"])}
    ok = succeeded(results)
    keys = _group_keys(results)
    summary = summarize(results)

    # summary.csv: the aggregated table, provenance in comment lines (pandas: read_csv(..., comment="#")).
    csv_path = out_dir / "summary.csv"
    with csv_path.open("w") as fh:
        fh.write(f"# {provenance_line(prov)}\n")
        if prov.get("command"):
            fh.write(f"# regenerate: {prov['command']}\n")
        summary.to_csv(fh, index=False)

    figs: list[tuple[str, Path]] = []
    if figures:
        bases = [Path.cwd(), out_dir] + ([Path(results_path).parent] if results_path else [])
        figs += _curves_figures(results, ok, out_dir, prov, keys)
        for fn in (lambda: _summary_figure(summary, keys, out_dir, prov),
                   lambda: _cost_figure(results, ok, out_dir, prov)):
            path = fn()
            if path is not None:
                figs.append(({"summary.png": "CPR and CMD per task and method (mean ± std over seeds)",
                              "cost.png": "Wall time against CPR, one point per job"}[path.name], path))
        figs += _graph_figures(results, ok, out_dir, prov, bases, agreement_fraction)

    m = prov.get("machine") or {}
    lines = [f"# {title or f'Benchmark report: {sweep}'}", ""]
    lines.append("_Generated from the results table; do not edit by hand._")
    lines.append("")
    if prov.get("command"):
        lines += [f"Regenerate this report and its figures: `{prov['command']}`", ""]
    src = f"`{results_path}`" if results_path else "the results table"
    n_fail = int((~ok).sum())
    lines.append(f"- Source: {src}, {len(results):,} jobs ({int(ok.sum()):,} succeeded, {n_fail:,} failed).")
    lines.append(f"- Report written at commit `{prov.get('commit', '?')}` on "
                 f"{machine_line(m) if isinstance(m, Mapping) else m}, {prov.get('date', '?')}.")
    for col, what in (("commit", "commit(s)"), ("git_commit", "commit(s)"), ("machine", "machine(s)"),
                      ("host", "host(s)"), ("device", "device(s)"), ("gpu", "GPU(s)")):
        if col in results:
            lines.append(f"- Jobs ran at {what}: {_distinct(results, col)}.")
    for col, what in (("model", "Models"), ("task", "Tasks"), ("method", "Methods"), ("ablation", "Ablation"),
                      ("seed", "Seeds")):
        if col in results:
            lines.append(f"- {what}: {_distinct(results, col, 30)}.")
    extra = {k: v for k, v in (prov.get("settings") or {}).items() if k != "sweep"}
    if extra:
        lines.append("- Settings: " + ", ".join(f"{k}={v}" for k, v in extra.items()) + ".")
    lines.append("")

    # The main table, per (model, task, method): mean ± std over the seeds that succeeded; best CPR/CMD in bold.
    present = [(c, h, f) for c, h, f in METRICS if f"{c}_mean" in summary]
    header = [k for k in keys] + ["runs"] + [h for _, h, _ in present]
    scope = [k for k in keys if k != "method"]
    best: dict[tuple[str, Hashable], bool] = {}  # (column, summary row label)
    if scope and "method" in keys:
        for col, better in (("cpr", max), ("cmd", min)):
            if f"{col}_mean" not in summary:
                continue
            for _, group in summary.groupby(scope, dropna=False):
                vals = group[f"{col}_mean"].dropna()
                if len(group) > 1 and len(vals):
                    best[(col, vals.idxmax() if better is max else vals.idxmin())] = True
    rows = []
    for i, r in summary.iterrows():
        runs = f"{r['runs']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
        cells = [str(r[k]) for k in keys] + [runs]
        for col, _, fmt in present:
            text = _cell(r[f"{col}_mean"], r[f"{col}_std"], int(r[f"{col}_n"]), fmt)
            cells.append(f"**{text}**" if best.get((col, i)) else text)
        rows.append(cells)
    lines += ["## Results per task and method", "",
              "Mean ± sample standard deviation over the seeds whose job succeeded (failed jobs are listed below, "
              "not averaged). CPR: area under the faithfulness curve of signed scores (higher is better); CMD: area "
              "under |1 − f| of absolute scores (lower is better), both on MIB's edge fractions. Minimal circuit: "
              "the fewest edges, top-k by signed score, with f ≥ 0.9. AUROC of the absolute scores against the known "
              "circuit (a planted model's ground truth) where one exists (— otherwise). "
              "Spearman: rank correlation of the edge scores with exact patching. Best CPR and CMD per task in bold.",
              "", _md_table(header, rows), "",
              f"<sub>{provenance_line(prov)}. Table as CSV: [summary.csv](summary.csv).</sub>", ""]

    ranked = best_per_task(summary, keys)
    if len(ranked):
        lines += ["## Best method per task", "",
                  "Per task (and ablation), the method with the best mean CPR (highest) and the best mean CMD "
                  "(lowest), the runner-up, the margin between their means, each one's spread (sample std over "
                  "seeds), whether the margin exceeds both spreads (if not, the order of the two is not settled by "
                  "these seeds), and the discovery time of both (mean seconds per job, and the ratio best / "
                  "runner-up).",
                  "", _md_table(list(ranked.columns), ranked.astype(str).values.tolist()), ""]
    cost = cost_per_method(summary)
    if len(cost):
        lines += ["## Time cost per method", "",
                  "Mean discovery wall time per job over every task, and relative to `eap-ig` where it ran "
                  "(ratios are within this run's machine, so they compare; the absolute times do not travel).", "",
                  _md_table(list(cost.columns), cost.astype(str).values.tolist()), ""]

    if figs:
        lines += ["## Figures", ""]
        for caption, path in figs:
            rel = os.path.relpath(path, out_dir)
            lines += [f"### {caption}", "", f"![{caption}]({rel})", ""]
        lines += [f"<sub>Every figure carries its provenance in a footer and in the file's metadata: "
                  f"{provenance_line(prov)}.</sub>", ""]

    if "params" in results and "method" in results:
        lines += ["## Settings per method", ""]
        prow = []
        for method, group in results.groupby("method", sort=True):
            for p in dict.fromkeys(_params_text(v) for v in group["params"].tolist()):
                prow.append([str(method), f"`{p}`"])
        lines += [_md_table(["method", "params"], prow), ""]

    if n_fail:
        lines += ["## Failed jobs", ""]
        cols = [c for c in ("job_id", "model", "task", "method", "seed", "status") if c in results]
        frows = []
        for _, r in results[~ok].iterrows():
            err = str(r.get("error", "") or "").strip().splitlines()
            msg = (err[-1] if err else "")[:160]
            frows.append([str(r[c]) for c in cols] + [msg])
        lines += [_md_table(cols + ["error (last line)"], frows), ""]

    report = out_dir / "REPORT.md"
    report.write_text("\n".join(lines))
    return report
