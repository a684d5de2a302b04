"""Sweep files: a TOML description of tasks x models x methods x parameters x seeds, validated before any job
starts, expanded into :class:`JobSpec` s identified by a hash of everything that determines their result.

A sweep file (``discovery/quick.toml`` is a complete example)::

    name = "quick"                              # graphs/quick/, results/quick/
    models = ["zoo:planted-ioi", "zoo:planted-induction"]   # or tables: {model = "gpt2", tasks = ["ioi"]}
    tasks = ["shipped"]                         # built-in names, tasks/*.toml, paths; "shipped" = the zoo
                                                # model's own task.toml
    methods = ["eap", "eap-ig", "acdc"]         # circuits.discovery.METHODS
    ablations = ["corrupted"]                   # corrupted, mean, zero
    seeds = [0, 1]                              # task seed (and the method's own seed, when it has one)
    n = 64                                      # pairs per task (half discover, half evaluate)
    batch_size = 16
    split = "train"                             # discovery split; evaluation uses [evaluation].split

    [params.eap-ig]                             # per-method parameters; a list is a grid axis
    steps = [5, 10]

    [evaluation]
    split = "validation"
    batch_size = 32
    fractions = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]   # MIB's
    minimal_target = 0.9                        # faithfulness the minimal circuit must reach (0: skip)
    selection = "top_k"                         # how curves and minimal circuits cut the scores: top_k, greedy,
                                                # "sign_consistent[:0.9]" (bootstrapped, resamples = 20), "ratio[:0.5]"
    actors = 0                                  # > 0: the job's curve points run on that many Ray actors (model
                                                # replicas, [resources] each): for models too slow for one worker

    [resources]                                 # per job
    cpus = 1
    gpus = "auto"                               # one per job where GPUs exist, else 0; 0.25: four jobs share one
    memory = "auto"                             # GB each job declares to Ray (scheduling); "auto": estimated; 0: none
    max_retries = 2                             # when a worker dies or runs out of memory (then with fewer jobs at
                                                # once); a job that raises is recorded, not retried

    [output]
    graphs = "graphs"                           # -> graphs/<name>/<job_id>.json
    results = "results"                         # -> results/<name>/results.parquet, .csv, rows/

Every key can be overridden with ``overrides={"n": 16, "params.eap-ig.steps": [3]}`` (``circuits run --set``).
Errors name the file, the key and the fix (:class:`SweepError`), and are raised by :func:`load_sweep`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from circuits.errors import CircuitsError

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SHIPPED = "shipped"  # task name meaning "the zoo model's own task.toml"

TOP_KEYS = ("name", "description", "models", "tasks", "methods", "ablations", "seeds", "n", "batch_size", "split",
            "params", "evaluation", "resources", "output", "device", "dtype")
EVAL_KEYS = ("split", "batch_size", "fractions", "minimal_target", "actors", "selection", "resamples")
RESOURCE_KEYS = ("cpus", "gpus", "memory", "max_retries")
OUTPUT_KEYS = ("graphs", "results")
MODEL_KEYS = ("model", "tasks", "device", "dtype")
DEFAULTS: dict[str, Any] = {
    "description": "", "ablations": ["corrupted"], "seeds": [0], "n": 64, "batch_size": 16, "split": "train",
    "params": {}, "device": None, "dtype": None,
    "evaluation": {"split": "validation", "batch_size": 32, "fractions": list(MIB_FRACTIONS), "minimal_target": 0.9,
                   "actors": 0, "selection": "top_k", "resamples": 20},
    "resources": {"cpus": 1, "gpus": "auto", "memory": "auto", "max_retries": 2},
    "output": {"graphs": "graphs", "results": "results"},
}


class SweepError(CircuitsError, ValueError):
    """A sweep file that cannot run: the message names the file, the key and the fix."""


@dataclass(frozen=True)
class JobSpec:
    """One discovery + evaluation job. ``job_id`` hashes every field that determines the result
    (not the sweep's name, resources, evaluation actors or output folders: moving, renaming or re-resourcing a
    sweep keeps its finished jobs)."""

    model: str
    task: str
    method: str
    params: tuple  # sorted ((name, value), ...)
    ablation: str
    seed: int
    n: int
    batch_size: int
    split: str
    evaluation: tuple  # sorted ((key, value), ...)
    device: str | None = None
    dtype: str | None = None

    @property
    def params_dict(self) -> dict:
        return dict(self.params)

    @property
    def evaluation_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.evaluation}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params"] = self.params_dict
        d["evaluation"] = self.evaluation_dict
        return d

    @property
    def job_id(self) -> str:
        identity = self.to_dict()
        identity["evaluation"].pop("actors", None)  # how the work is spread does not change the result
        for key, default in (("selection", "top_k"), ("resamples", 20)):  # keys added later: old ids stay valid
            if identity["evaluation"].get(key) == default:
                identity["evaluation"].pop(key)
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def describe(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.params) or "-"
        return f"{self.model} {self.task} {self.method}[{params}] {self.ablation} seed={self.seed}"


@dataclass
class SweepSpec:
    """A validated sweep (see the module docstring). ``expand()`` -> the jobs, in a stable order."""

    name: str
    models: list[dict]  # {"model", "tasks", "device", "dtype"}
    tasks: list[str]
    methods: list[str]
    ablations: list[str]
    seeds: list[int]
    n: int
    batch_size: int
    split: str
    params: dict[str, dict[str, list]]
    evaluation: dict
    resources: dict
    output: dict
    description: str = ""
    device: str | None = None
    dtype: str | None = None
    source: str = "<dict>"
    skipped: list[str] = field(default_factory=list)  # combinations left out, and why

    @property
    def graphs_dir(self) -> Path:
        return Path(self.output["graphs"]) / self.name

    @property
    def results_dir(self) -> Path:
        return Path(self.output["results"]) / self.name

    def expand(self) -> list[JobSpec]:
        from circuits.discovery import METHODS

        jobs, self.skipped = [], []
        ev = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in self.evaluation.items()))
        for entry in self.models:
            for task in entry["tasks"]:
                for method in self.methods:
                    grid = self.params.get(method, {})
                    names = sorted(grid)
                    for values in itertools.product(*(grid[k] for k in names)):
                        params = dict(zip(names, values))
                        for ablation in self.ablations:
                            if ablation not in METHODS[method].ablations:
                                self.skipped.append(f"{method} with ablation {ablation}: {METHODS[method].why_not}")
                                continue
                            for seed in self.seeds:
                                p = dict(params)
                                if "seed" in METHODS[method].params and "seed" not in p:
                                    p["seed"] = seed  # the sweep's seed drives the method's randomness too
                                jobs.append(JobSpec(
                                    model=entry["model"], task=task, method=method,
                                    params=tuple(sorted((k, _freeze(v)) for k, v in p.items())), ablation=ablation,
                                    seed=int(seed), n=self.n, batch_size=self.batch_size, split=self.split,
                                    evaluation=ev, device=entry.get("device") or self.device,
                                    dtype=entry.get("dtype") or self.dtype))
        ids = [j.job_id for j in jobs]
        if len(set(ids)) != len(ids):  # the same job listed twice (e.g. a model named twice): run it once
            seen, unique = set(), []
            for j in jobs:
                if j.job_id not in seen:
                    seen.add(j.job_id)
                    unique.append(j)
            self.skipped.append(f"{len(jobs) - len(unique)} duplicate job(s)")
            jobs = unique
        return jobs


def _freeze(v: Any) -> Any:
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


# ---- loading and validation -------------------------------------------------------------------------------------
def parse_value(raw: str) -> Any:
    """A ``--set`` value as TOML (``16``, ``0.5``, ``[1, 2]``, ``true``, ``"x"``); a bare word is a string,
    a comma-separated list of bare words a list (``methods=eap,random``)."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if "," in raw and not raw.strip().startswith("["):
            return [parse_value(x.strip()) for x in raw.split(",") if x.strip()]
        return raw


def apply_overrides(config: dict, overrides: dict[str, Any] | list[str] | None) -> dict:
    """``{"n": 16, "params.eap-ig.steps": [3], "resources.gpus": 0.5}`` (or ``["n=16", ...]``) onto a config."""
    config = json.loads(json.dumps(config))  # deep copy
    if not overrides:
        return config
    if isinstance(overrides, (list, tuple)):
        parsed = {}
        for item in overrides:
            if "=" not in item:
                raise SweepError(f"--set {item!r}: expected KEY=VALUE; fix: e.g. --set n=16 or "
                                 "--set params.eap-ig.steps=[3,5]")
            key, raw = item.split("=", 1)
            parsed[key.strip()] = parse_value(raw.strip())
        overrides = parsed
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] not in TOP_KEYS:
            raise SweepError(f"--set {key}: unknown key {parts[0]!r}; fix: use one of {', '.join(TOP_KEYS)}")
        node = config
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise SweepError(f"--set {key}: {part!r} is not a table")
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return config


def load_sweep(path_or_config: str | Path | dict, overrides: dict | list[str] | None = None,
               check_models: bool = True) -> SweepSpec:
    """Read, override and validate a sweep (a TOML path or a dict); raise :class:`SweepError` on the first
    problem, naming the file, the key and the fix."""
    if isinstance(path_or_config, dict):
        source, config = "<dict>", path_or_config
    else:
        source = str(path_or_config)
        path = Path(path_or_config)
        if not path.is_file():
            alt = Path("discovery") / path
            alt = alt if alt.is_file() else alt.with_suffix(".toml")
            if not alt.is_file():
                found = sorted(p.name for p in Path("discovery").glob("*.toml")) if Path("discovery").is_dir() else []
                raise SweepError(f"{source}: no such sweep file; fix: give a path to a .toml file"
                                 + (f" (discovery/ has {', '.join(found)})" if found else ""))
            path, source = alt, str(alt)
        try:
            config = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise SweepError(f"{source}: not valid TOML: {err}; fix: check the syntax at that line") from None
        config.setdefault("name", path.stem)
    config = apply_overrides(config, overrides)
    return _validate(config, source, check_models)


def sweepable_methods() -> list[str]:
    """The methods a sweep runs: every registered one but the neuron-level ones (evaluated at level 'neuron',
    which the sweep's jobs do not do yet)."""
    from circuits.discovery import METHODS

    return [name for name, m in METHODS.items() if m.level != "neuron"]


def _err(source: str, key: str, problem: str, fix: str) -> SweepError:
    return SweepError(f"{source}: key {key!r}: {problem}; fix: {fix}")


def _as_list(config: dict, key: str, source: str, kind: type | tuple = str, nonempty: bool = True) -> list:
    value = config[key]
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or (nonempty and not value):
        raise _err(source, key, f"expected a non-empty list, got {value!r}", f'e.g. {key} = ["..."]')
    for i, v in enumerate(value):
        if not isinstance(v, kind) or isinstance(v, bool):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise _err(source, f"{key}[{i}]", f"expected a {names}, got {v!r}", f"write it as a {names}")
    return value


def _merge(defaults: dict, given: Any, key: str, allowed: tuple, source: str) -> dict:
    if not isinstance(given, dict):
        raise _err(source, key, f"expected a table, got {given!r}",
                   f"write it as [{key}] with keys {', '.join(allowed)}")
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise _err(source, f"{key}.{unknown[0]}", "unknown key", f"use one of {', '.join(allowed)}")
    return {**defaults, **given}


def _task_names() -> set[str]:
    from circuits.tasks import BUILTINS, task_files

    return set(BUILTINS) | {p.stem for p in task_files()}


def _check_model(model: str, key: str, source: str) -> None:
    from circuits.models.loading import parse_model_spec

    try:
        kind, _ = parse_model_spec(model)  # the grammar of circuits.load_model
    except (ValueError, OSError) as err:
        raise _err(source, key, getattr(err, "problem", str(err)),
                   getattr(err, "fix", "check the model spec")) from None
    if kind == "hub" and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        # a hub id, offline: it must be in the local cache, or every job would fail the same way
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
        except Exception:  # noqa: BLE001 - an invalid repo id: the job reports it
            cached = None
        if not isinstance(cached, str):
            raise _err(source, key, f"hub model {model!r} is not in the local cache and HF_HUB_OFFLINE is set",
                       "download it once with network "
                       f"(python -c \"import circuits; circuits.load_model('{model}')\"), "
                       "or use a zoo:NAME / random:PRESET model")
    # a hub id otherwise: resolved (cache first) by the job itself


def _check_model_option(value: Any, key: str, source: str) -> None:
    """A sweep's ``device`` / ``dtype`` (top level or per model): a dtype must exist; a device must be a device
    name (whether the workers have it is theirs to say: they may have GPUs this driver lacks)."""
    from circuits.models.options import ModelOptionError, parse_device, resolve_dtype

    if value is None:
        return
    try:
        if not isinstance(value, str):
            raise ModelOptionError(f"expected a name, got {value!r}")
        if key.endswith("device"):
            parse_device(value, key)
        else:
            resolve_dtype(value, key)
    except ModelOptionError as err:
        raise _err(source, key, str(err), 'e.g. device = "cpu", dtype = "float32" (or leave them out)') from None


def _validate(config: dict, source: str, check_models: bool) -> SweepSpec:
    from circuits.discovery import METHODS, DiscoveryError
    from circuits.interventions.ablation import ABLATIONS, AblationError, check_ablation

    unknown = sorted(set(config) - set(TOP_KEYS))
    if unknown:
        raise _err(source, unknown[0], "unknown key", f"use one of {', '.join(TOP_KEYS)}")
    for key in ("models", "methods"):
        if key not in config:
            example = "zoo:planted-ioi" if key == "models" else "eap"
            raise _err(source, key, "missing", f'add e.g. {key} = ["{example}"]')
    cfg = {**DEFAULTS, **config}
    for option in ("device", "dtype"):
        _check_model_option(cfg[option], option, source)
    name = cfg.get("name") or "sweep"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise _err(source, "name", f"{name!r} is not a folder name", "use letters, digits, '-', '_', '.'")

    tasks = _as_list(cfg, "tasks", source) if "tasks" in cfg else []
    known_tasks = _task_names()

    def check_task(task: str, key: str, model: str) -> None:
        if task == SHIPPED:
            if not model.startswith("zoo:"):
                raise _err(source, key, f"{SHIPPED!r} means a zoo model's own task, but {model!r} is not a zoo model",
                           f"name a task for it ({', '.join(sorted(known_tasks))}) in a models table: "
                           f'{{model = "{model}", tasks = ["ioi"]}}')
            from circuits.models.loading import ZOO_DIR
            if check_models and not (ZOO_DIR / model[4:] / "task.toml").is_file():
                raise _err(source, key, f"{model} ships no task.toml",
                           f"name a task for it ({', '.join(sorted(known_tasks))})")
        elif task.lower() not in known_tasks and not Path(task).is_file():
            raise _err(source, key, f"unknown task {task!r}",
                       f"use one of {', '.join(sorted(known_tasks))}, {SHIPPED!r} (a zoo model's own), "
                       "or a task file path")

    models = []
    for i, entry in enumerate(_as_list(cfg, "models", source, (str, dict))):
        key = f"models[{i}]"
        if isinstance(entry, str):
            entry = {"model": entry}
        unknown = sorted(set(entry) - set(MODEL_KEYS))
        if unknown or "model" not in entry:
            raise _err(source, key, f"unknown key {unknown[0]!r}" if unknown else "a models table needs 'model'",
                       "use {model = \"...\", tasks = [...], device = ..., dtype = ...}")
        entry_tasks = entry.get("tasks", tasks)
        if isinstance(entry_tasks, str):
            entry_tasks = [entry_tasks]
        if not entry_tasks:
            raise _err(source, "tasks", f"no task for {entry['model']}",
                       'add tasks = ["ioi"] (or "shipped" for zoo models)')
        if check_models:
            _check_model(entry["model"], f"{key}", source)
        for j, t in enumerate(entry_tasks):
            check_task(t, f"{key}.tasks[{j}]" if "tasks" in entry else f"tasks[{j}]", entry["model"])
        for option in ("device", "dtype"):
            _check_model_option(entry.get(option), f"{key}.{option}", source)
        models.append({"model": entry["model"], "tasks": list(entry_tasks), "device": entry.get("device"),
                       "dtype": entry.get("dtype")})

    methods = _as_list(cfg, "methods", source)
    if methods == ["all"]:
        methods = sweepable_methods()
    for i, m in enumerate(methods):
        if m not in METHODS:
            raise _err(source, f"methods[{i}]", f"unknown method {m!r}",
                       f"use one of {', '.join(METHODS)} (or [\"all\"])")
        if m not in sweepable_methods():
            raise _err(source, f"methods[{i}]", f"{m!r} is a neuron-level method, which sweeps do not run yet "
                       "(their evaluation cuts edges or nodes)",
                       "run it with `circuits discover --method ...` or circuits.discover, and evaluate with "
                       "level='neuron'")
    ablations = _as_list(cfg, "ablations", source)
    for i, a in enumerate(ablations):
        try:
            ablations[i] = check_ablation(a)  # the one rule discover and evaluate apply (MIB's "patching" too)
        except AblationError:
            raise _err(source, f"ablations[{i}]", f"unknown ablation {a!r}",
                       f"use one of {', '.join(ABLATIONS)}") from None
    seeds = _as_list(cfg, "seeds", source, int)
    for key, low in (("n", 2), ("batch_size", 1)):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < low:
            raise _err(source, key, f"expected an integer >= {low}, got {cfg[key]!r}", f"e.g. {key} = {DEFAULTS[key]}")
    if cfg["split"] not in ("train", "validation", "all"):
        raise _err(source, "split", f"unknown split {cfg['split']!r}", "use train, validation or all")

    params: dict[str, dict[str, list]] = {}
    if not isinstance(cfg["params"], dict):
        raise _err(source, "params", "expected tables [params.METHOD]", "write [params.eap-ig] then steps = [5, 10]")
    for method, table in cfg["params"].items():
        if method not in METHODS:
            raise _err(source, f"params.{method}", f"unknown method {method!r}", f"use one of {', '.join(METHODS)}")
        if not isinstance(table, dict):
            raise _err(source, f"params.{method}", "expected a table", f"write [params.{method}] then NAME = [values]")
        allowed = METHODS[method].params
        grid = {}
        for pname, values in table.items():
            if pname not in allowed:
                known = ", ".join(f"{k} (default {v!r})" for k, v in allowed.items()) or "none"
                raise _err(source, f"params.{method}.{pname}", f"{method} has no parameter {pname!r}",
                           f"use one of: {known}")
            values = values if isinstance(values, list) else [values]
            if not values:
                raise _err(source, f"params.{method}.{pname}", "empty list", "give at least one value")
            declared = METHODS[method].parameters[pname]
            for v in values:
                try:
                    declared.check(v, "")  # the values stay as written (they are part of each job's id)
                except DiscoveryError as err:
                    raise _err(source, f"params.{method}.{pname}", str(err),
                               f"e.g. {pname} = [{declared.default!r}]") from None
            grid[pname] = values
        if method in methods:  # a table for a method left out (e.g. by --set methods=...) is checked, then unused
            params[method] = grid

    evaluation = _merge(DEFAULTS["evaluation"], cfg["evaluation"], "evaluation", EVAL_KEYS, source)
    if evaluation["split"] not in ("train", "validation", "all"):
        raise _err(source, "evaluation.split", f"unknown split {evaluation['split']!r}", "use validation, train or all")
    fr = evaluation["fractions"]
    if not isinstance(fr, list) or len(fr) < 2 or any(not isinstance(x, (int, float)) or not 0 <= x <= 1 for x in fr) \
            or any(b <= a for a, b in zip(fr, fr[1:])):
        raise _err(source, "evaluation.fractions", f"{fr!r} is not an increasing list of fractions in [0, 1]",
                   f"e.g. fractions = {list(MIB_FRACTIONS)} (MIB's)")
    evaluation["fractions"] = [float(x) for x in fr]
    t = evaluation["minimal_target"]
    if not isinstance(t, (int, float)) or not 0 <= t <= 1:
        raise _err(source, "evaluation.minimal_target", f"expected a number in [0, 1], got {t!r}",
                   "e.g. minimal_target = 0.9 (0 skips the minimal circuit)")
    if not isinstance(evaluation["actors"], int) or isinstance(evaluation["actors"], bool) or evaluation["actors"] < 0:
        raise _err(source, "evaluation.actors", f"expected an integer >= 0, got {evaluation['actors']!r}",
                   "actors = 0 (the job evaluates alone) or e.g. 4 (one model replica per GPU)")
    from circuits.graph.selection import parse_selection

    try:
        parse_selection(evaluation["selection"])
    except ValueError as err:
        raise _err(source, "evaluation.selection", str(err),
                   "e.g. selection = \"top_k\" or \"sign_consistent:0.9\"") from None
    if not isinstance(evaluation["resamples"], int) or isinstance(evaluation["resamples"], bool) \
            or evaluation["resamples"] < 1:
        raise _err(source, "evaluation.resamples", f"expected a positive integer, got {evaluation['resamples']!r}",
                   "resamples = 20 (bootstrap resamples of sign-consistent selection)")
    if not isinstance(evaluation["batch_size"], int) or evaluation["batch_size"] < 1:
        raise _err(source, "evaluation.batch_size", f"expected a positive integer, got {evaluation['batch_size']!r}",
                   "e.g. batch_size = 32")

    resources = _merge(DEFAULTS["resources"], cfg["resources"], "resources", RESOURCE_KEYS, source)
    for key in ("cpus", "gpus"):
        v = resources[key]
        if key == "gpus" and v == "auto":
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or (v > 1 and v != int(v)):
            raise _err(source, f"resources.{key}", f"expected a number >= 0 (fractions only below 1), got {v!r}",
                       f"e.g. {key} = 1, or {key} = 0.25 to share one {key[:-1].upper()} between four jobs")
    if resources["cpus"] == 0 and resources["gpus"] in (0, "auto"):
        raise _err(source, "resources", "a job needs CPUs or GPUs", "set cpus = 1 (or gpus = ...)")
    memory = resources["memory"]
    if memory != "auto" and (not isinstance(memory, (int, float)) or isinstance(memory, bool) or not memory >= 0):
        raise _err(source, "resources.memory", f"expected GB >= 0 or \"auto\", got {memory!r}",
                   'e.g. memory = 4 (GB each job declares to Ray), "auto" (estimated from the model) or 0 (none)')
    if not isinstance(resources["max_retries"], int) or resources["max_retries"] < 0:
        raise _err(source, "resources.max_retries", f"expected an integer >= 0, got {resources['max_retries']!r}",
                   "e.g. max_retries = 2")
    output = _merge(DEFAULTS["output"], cfg["output"], "output", OUTPUT_KEYS, source)
    for key in OUTPUT_KEYS:
        if not isinstance(output[key], str) or not output[key]:
            raise _err(source, f"output.{key}", f"expected a folder path, got {output[key]!r}", f'e.g. {key} = "{key}"')

    spec = SweepSpec(name=name, models=models, tasks=tasks, methods=methods, ablations=ablations, seeds=seeds,
                     n=cfg["n"], batch_size=cfg["batch_size"], split=cfg["split"], params=params, evaluation=evaluation,
                     resources=resources, output=output, description=str(cfg["description"]), device=cfg["device"],
                     dtype=cfg["dtype"], source=source)
    if not spec.expand():
        raise _err(source, "ablations", "every combination is ruled out: " + "; ".join(spec.skipped),
                   "choose ablations the methods accept")
    return spec
