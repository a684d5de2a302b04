"""Tasks: seeded datasets of contrastive pairs with a readout and a metric.

    task = circuits.load_task("ioi", model, n=200, seed=0, corruption="abc")
    task.clean, task.corrupted          # LongTensor [n, seq], equal shapes, right-padded, one attention_mask
    task.metric(logits)                 # [n] per example (logits [n, seq, vocab] of the whole task)
    for batch in task.train.batches(32): batch.clean, batch.positions, task.metric(logits, batch)

Built in: ``ioi`` (Wang et al.), ``greater-than`` (Hanna et al.), ``induction``; any TOML file in the
working directory's ``tasks/`` folder (or a folder of ``$CIRCUITS_TASKS_PATH``) by name; any ``.toml`` task file
or ``.jsonl`` / ``.csv`` pairs file by path; a folder holding one of MIB's datasets as the hub lays it out
(:mod:`circuits.tasks.mib`).
See :mod:`circuits.tasks.files` for the file formats and :mod:`circuits.tasks.task` for the readout layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from circuits.tasks.errors import TaskError, TaskFileError, TokenizationError
from circuits.tasks.metrics import METRICS, Metric, get_metric
from circuits.tasks.task import Task, TaskBatch, build_batch
from circuits.tasks.tokenization import (
    default_gpt2_tokenizer,
    get_tokenizer,
    pad_id,
    resolve_prepend_bos,
    word_level_tokenizer,
)
from circuits.tasks.vocabulary import task_vocabulary

__all__ = [
    "Task", "TaskBatch", "Metric", "TaskError", "TaskFileError", "TokenizationError", "METRICS", "load_task",
    "list_tasks", "default_gpt2_tokenizer", "word_level_tokenizer", "task_vocabulary", "get_metric", "task_dirs",
    "task_files",
]

BUILTINS = {
    "ioi": "Indirect object identification (Wang et al. 2022): logit(IO) - logit(S) at the end",
    "greater-than": "Greater-than (Hanna et al. 2023): p(YY' > YY) - p(YY' <= YY) after 'to the year XX'",
    "induction": "Repeated random tokens with a variable period: log p(next token) in the second copy",
}
_BUILTIN_METRICS = {"ioi": "logit_diff", "greater-than": "prob_diff", "induction": "logprob"}
_ALIASES = {"greater_than": "greater-than", "greaterthan": "greater-than", "gt": "greater-than",
            "induction-heads": "induction", "ioi-gpt2": "ioi"}
_PAIR_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv")
_COMMON = ("prepend_bos", "metric", "split", "name")
_TEMPLATE_OPTIONS = _COMMON + ("corruption", "invalid", "drop_invalid_words")
_OPTIONS = {
    "ioi": _TEMPLATE_OPTIONS,
    "greater-than": _TEMPLATE_OPTIONS + ("centuries",),
    "induction": _COMMON + ("seq_len", "min_period", "max_period", "corpus", "token_ids", "corruption",
                           "replaced"),
    "template": _TEMPLATE_OPTIONS,
    "pairs": _COMMON + ("counterfactual",),
    "mib": _COMMON + ("counterfactual", "mib_split", "config", "invalid"),
}


def task_dirs() -> list[Path]:
    """Folders searched for task files by name: $CIRCUITS_TASKS_PATH, then ./tasks (the working directory's).

    The built-in tasks (ioi, greater-than, induction) are defined in the package itself and need no file; the
    repository's ``tasks/`` holds them written as files too, found by name when working in the repository."""
    dirs = [Path(p) for p in os.environ.get("CIRCUITS_TASKS_PATH", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "tasks"]
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def task_files() -> list[Path]:
    """The task files found by name (``*.toml`` in :func:`task_dirs`), in search order."""
    files: list[Path] = []
    for d in task_dirs():
        files += sorted(d.glob("*.toml"))
    return files


def _find_file(name: str) -> Path | None:
    from circuits.tasks.files import read_toml

    for path in task_files():
        if path.stem == name:
            return path
    for path in task_files():
        try:
            content, _ = read_toml(path)
        except TaskError:
            continue
        if content.get("name") == name:
            return path
    return None


def _check_options(kind: str, options: dict, where: str) -> None:
    unknown = sorted(set(options) - set(_OPTIONS[kind]))
    if unknown:
        raise TaskError(f"{where}: unknown option(s) {', '.join(unknown)}; fix: use {', '.join(_OPTIONS[kind])}")


def load_task(name_or_path: str | Path, model_or_tokenizer: Any, n: int = 200, seed: int = 0,
              **options: Any) -> Task:
    """Build a task for a tokenizer (or a model with ``.tokenizer``).

    ``name_or_path``: "ioi", "greater-than", "induction", the name of a TOML file in ``tasks/``, a path to a
    ``.toml`` task file, or a ``.jsonl`` / ``.csv`` pairs file. ``n`` pairs, deterministic for ``seed``.
    Options: ``prepend_bos`` (default: what the tokenizer does itself; the word-level tokenizer adds BOS, GPT-2's
    does not), ``metric`` (override: logit_diff, prob_diff, logprob, kl), ``split`` (train fraction of
    ``task.train``, default 0.5); for template tasks ``corruption`` (IOI: "abc", "s2", "swap"), ``invalid``
    ("resample" pairs that fail a tokenization check in context, or "error"), ``drop_invalid_words``;
    greater-than ``centuries``; induction ``seq_len``, ``min_period``, ``max_period``, ``corpus``, ``token_ids``,
    ``corruption`` ("copy", "match": see :func:`circuits.tasks.builtin.induction_pairs`), ``replaced`` (match);
    pairs files ``counterfactual`` (which MIB counterfactual to use). A folder holding an MIB dataset (as the hub
    lays it out; :mod:`circuits.tasks.mib`) takes ``mib_split`` (MIB's "train", "validation" or "test"; default
    "train"), ``counterfactual``, ``config`` (e.g. "4_answer_choices") and ``invalid`` ("drop", the default, leaves
    out records the tokenizer cannot use, as MIB does; "error" raises on the first).
    """
    tok = get_tokenizer(model_or_tokenizer)
    model = model_or_tokenizer if getattr(model_or_tokenizer, "tokenizer", None) is not None else None
    if n is not None and int(n) < 1:
        raise TaskError(f"n must be at least 1, got {n}")
    key = str(name_or_path)
    path = Path(key)
    lowered = _ALIASES.get(key.lower(), key.lower())
    if not path.suffix and lowered in BUILTINS:
        return _load_builtin(lowered, tok, model, n, seed, options)
    if path.is_dir():
        return _load_mib(path, tok, model, n, seed, options)
    if path.suffix.lower() in (".toml",) + _PAIR_SUFFIXES or path.exists():
        if not path.exists():
            raise TaskError(f"task file {key!r} not found; fix: check the path (relative to {Path.cwd()})")
        return _load_file(path, tok, model, n, seed, options)
    found = _find_file(key)
    if found is not None:
        return _load_file(found, tok, model, n, seed, options)
    available = sorted(set(BUILTINS) | {p.stem for p in task_files()})
    raise TaskError(f"unknown task {key!r}; fix: use one of {', '.join(available)}, or a path to a .toml, "
                    f".jsonl or .csv file")


def _finish(name: str, encoded: list, records: list[dict], tok, metric: str, *, description: str, source: str,
            seed: int, prepend_bos: bool, options: dict, split: float) -> Task:
    batch = build_batch([e.clean for e in encoded], [e.corrupted for e in encoded],
                        [e.readouts for e in encoded], pad_id(tok))
    return Task(name=name, data=batch, base_metric=Metric(metric), tokenizer=tok, records=records,
                description=description, source=source, seed=seed, prepend_bos=prepend_bos, options=options,
                split_fraction=split)


def _need_n(n: Any) -> int:
    if n is None:
        raise TaskError("n=None (every pair) only applies to pairs files; fix: pass n=<number of pairs>")
    return int(n)


def _from_spec(spec, tok, model, n: int, seed: int, options: dict, source: str) -> Task:
    options = dict(options)
    n = _need_n(n)
    bos = resolve_prepend_bos(tok, options.pop("prepend_bos", None) if "prepend_bos" in options
                              else spec.prepend_bos, model)
    metric = options.pop("metric", None) or spec.default_metric
    split = float(options.pop("split", 0.5))
    name = options.pop("name", None) or spec.name
    encoded, pairs, info = spec.build(tok, int(n), int(seed), corruption=options.pop("corruption", None),
                                      prepend_bos=bos, invalid=options.pop("invalid", "resample"),
                                      drop_invalid_words=bool(options.pop("drop_invalid_words", False)))
    return _finish(name, encoded, [p.record for p in pairs], tok, metric, description=spec.description,
                   source=source, seed=int(seed), prepend_bos=bos, options={**info, **options}, split=split)


def _load_builtin(name: str, tok, model, n: int, seed: int, options: dict) -> Task:
    from circuits.tasks import builtin

    _check_options(name, options, f"task {name!r}")
    options = dict(options)
    if name == "ioi":
        if options.get("corruption") is not None:
            c = str(options["corruption"]).lower()
            if c not in builtin.IOI_CORRUPTION_ALIASES:
                raise TaskError(f"task 'ioi' has no corruption {options['corruption']!r}; fix: use 'abc' "
                                f"(ACDC), 's2' (EAP-IG) or 'swap' (MIB)")
            options["corruption"] = builtin.IOI_CORRUPTION_ALIASES[c]
        return _from_spec(builtin.ioi_spec(), tok, model, n, seed, options, "builtin")
    if name == "greater-than":
        spec = builtin.greater_than_spec(options.pop("centuries", None))
        return _from_spec(spec, tok, model, n, seed, options, "builtin")
    # induction
    n = _need_n(n)
    bos = resolve_prepend_bos(tok, options.pop("prepend_bos", None), model)
    metric = options.pop("metric", None) or "logprob"
    split = float(options.pop("split", 0.5))
    task_name = options.pop("name", None) or "induction"
    clean, corrupted, readouts, records = builtin.induction_pairs(tok, int(n), int(seed), prepend_bos=bos,
                                                                  **options)
    batch = build_batch(clean, corrupted, readouts, pad_id(tok))
    options = {k: v for k, v in options.items() if k != "corpus"} | ({"corpus": True} if "corpus" in options else {})
    return Task(name=task_name, data=batch, base_metric=Metric(metric), tokenizer=tok, records=records,
                description=BUILTINS["induction"], source="builtin", seed=int(seed), prepend_bos=bos,
                options=options, split_fraction=split)


def _load_file(path: Path, tok, model, n: int, seed: int, options: dict) -> Task:
    from circuits.tasks.files import read_toml, spec_from_toml

    if path.suffix.lower() in _PAIR_SUFFIXES:
        return _load_pairs(path, tok, model, n, seed, options, name=path.stem, description="", metric=None,
                           prepend_bos=None)
    content, lines = read_toml(path)
    if "split" in content and "split" not in options:
        options = {**options, "split": content["split"]}
    if "generator" in content:
        gen = str(content["generator"]).lower()
        gen = _ALIASES.get(gen, gen)
        if gen not in BUILTINS:
            raise TaskFileError(path, f"unknown generator {content['generator']!r}",
                                f"use one of {', '.join(BUILTINS)}", key="generator", line=lines.get("generator"))
        extra = sorted(set(content) - {"generator", "options", "name", "description", "metric", "prepend_bos",
                                       "source", "citation", "notes", "split"})
        if extra:
            raise TaskFileError(path, f"keys {extra} do not apply to a generator task",
                                "remove them, or put generator parameters under [options]", key=extra[0],
                                line=lines.get(extra[0]))
        merged = dict(content.get("options", {}))
        for k in ("metric", "prepend_bos", "split"):
            if k in content:
                merged[k] = content[k]
        merged.update(options)
        merged.setdefault("name", content.get("name", path.stem))
        try:
            return _load_builtin(gen, tok, model, n, seed, merged)
        except TypeError as e:
            raise TaskFileError(path, f"bad generator options: {e}", f"use {', '.join(_OPTIONS[gen])}",
                                key="options", line=lines.get("options")) from None
    if "pairs" in content:
        pairs_path = (path.parent / str(content["pairs"])).resolve()
        if not pairs_path.exists():
            raise TaskFileError(path, f"pairs file {content['pairs']!r} not found (looked in {path.parent})",
                                "give the path relative to this TOML file", key="pairs", line=lines.get("pairs"))
        return _load_pairs(pairs_path, tok, model, n, seed, options, name=str(content.get("name", path.stem)),
                           description=str(content.get("description", "")), metric=content.get("metric"),
                           prepend_bos=content.get("prepend_bos"))
    spec = spec_from_toml(content, path, lines)
    _check_options("template", options, str(path))
    return _from_spec(spec, tok, model, n, seed, options, str(path))


def _load_pairs(path: Path, tok, model, n: int, seed: int, options: dict, *, name: str, description: str,
                metric: str | None, prepend_bos: bool | None) -> Task:
    from circuits.tasks.files import load_pairs

    _check_options("pairs", options, str(path))
    options = dict(options)
    bos = resolve_prepend_bos(tok, options.pop("prepend_bos", prepend_bos), model)
    encoded, pairs = load_pairs(path, tok, prepend_bos=bos, n=n, seed=int(seed),
                                counterfactual=options.pop("counterfactual", None))
    metric = options.pop("metric", None) or metric
    if metric is None:
        multi = any(len(p.answers) > 1 for p in pairs)
        metric = "prob_diff" if multi else ("logit_diff" if all(p.distractors for p in pairs) else "logprob")
    try:
        metric = Metric(metric).name
    except TaskError:
        raise TaskFileError(path, f"unknown metric {metric!r}", "use one of logit_diff, prob_diff, logprob, kl",
                            key="metric") from None
    split = float(options.pop("split", 0.5))
    return _finish(options.pop("name", None) or name, encoded, [p.record for p in pairs], tok, metric,
                   description=description, source=str(path), seed=int(seed), prepend_bos=bos, options=options,
                   split=split)


def _load_mib(path: Path, tok, model, n: int | None, seed: int, options: dict) -> Task:
    from circuits.tasks.files import encode_and_sample
    from circuits.tasks.mib import is_mib_dataset, mib_pairs

    _check_options("mib", options, str(path))
    if not is_mib_dataset(path):
        raise TaskError(f"{path} is a folder but holds no MIB dataset split (train/validation/test .jsonl, .json or "
                        ".parquet, or data/{split}-*.parquet); fix: give a task file, or an MIB dataset folder")
    options = dict(options)
    split_name = str(options.pop("mib_split", "train"))
    config = options.pop("config", None)
    pairs = mib_pairs(path, split_name, counterfactual=options.pop("counterfactual", None), config=config)
    bos = resolve_prepend_bos(tok, options.pop("prepend_bos", None), model)
    encoded, kept = encode_and_sample(pairs, tok, prepend_bos=bos, n=n, seed=int(seed), source=path,
                                      invalid=str(options.pop("invalid", "drop")))
    metric = options.pop("metric", None) or ("logit_diff" if all(p.distractors for p in kept) else "logprob")
    split = float(options.pop("split", 0.5))
    name = options.pop("name", None) or path.name
    return _finish(name, encoded, [p.record for p in kept], tok, Metric(metric).name,
                   description=f"MIB dataset {path.name}, {split_name} split", source=str(path), seed=int(seed),
                   prepend_bos=bos, options={"mib_split": split_name, "config": config,
                                             "counterfactual": kept[0].record.get("counterfactual"), **options},
                   split=split)


def list_tasks():
    """A pandas DataFrame of the available tasks: name, description, metric, source (for `circuits tasks`)."""
    import pandas as pd

    from circuits.tasks.files import read_toml

    rows = [{"name": k, "description": v, "metric": _BUILTIN_METRICS[k], "source": "builtin"}
            for k, v in BUILTINS.items()]
    for path in task_files():
        try:
            content, _ = read_toml(path)
        except TaskError as e:
            rows.append({"name": path.stem, "description": f"(unreadable: {e})", "metric": "", "source": str(path)})
            continue
        name = str(content.get("name", path.stem))
        metric = content.get("metric") or _BUILTIN_METRICS.get(str(content.get("generator", "")), "")
        if not metric and ("templates" in content or "template" in content):
            metric = "prob_diff" if "answer_set" in content else (
                "logit_diff" if content.get("distractor") else "logprob")
        elif not metric and "pairs" in content:
            metric = "auto"
        row = {"name": name, "description": str(content.get("description", "")), "metric": metric,
               "source": _relative(path)}
        builtin = next((r for r in rows if r["name"] == name and r["source"].startswith("builtin")), None)
        if builtin is not None:
            builtin["source"] = f"builtin (also {_relative(path)})"
        elif not any(r["name"] == name for r in rows):
            rows.append(row)
    return pd.DataFrame(rows, columns=["name", "description", "metric", "source"])


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
