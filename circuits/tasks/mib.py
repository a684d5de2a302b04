"""MIB's datasets (the ``mib-bench`` repositories on the Hugging Face hub), read from local files laid out as there.

    task = circuits.load_task("data/mib/ioi", model, mib_split="validation")          # a downloaded dataset folder
    task = load_mib("data/mib/copycolors_mcqa", model, split="test", config="4_answer_choices")

A dataset folder holds one file (or several shards) per split, under MIB's split names ``train``, ``validation``
and ``test``, in any of the hub's layouts: ``{split}.jsonl`` / ``.json`` / ``.parquet`` at the top,
``data/{split}-00000-of-00001.parquet`` (the hub's parquet export), or ``{config}/{split}-*.parquet`` for datasets
with configurations (MCQA's ``4_answer_choices``).

A record is MIB's: ``prompt``; ``choices`` (``{"label": [...], "text": [...]}``, or a list of texts) with
``answerKey`` (an index into the labels, or a label); and counterfactual records ``*_counterfactual`` holding the
same fields for the corrupted prompt. Arithmetic records carry ``label`` instead of choices; IOI records carry
``metadata`` with ``indirect_object`` and ``subject``. Answers follow MIB's circuit track: IOI's answer is the
indirect object and the distractor the subject (each after a space); a multiple-choice answer is the correct
choice's label and the distractor the counterfactual's answer (its label, as MIB tokenizes it: no space added);
arithmetic's the result and the counterfactual's result. Records whose clean and counterfactual prompts differ in
token length, or whose answers are not single tokens, are dropped with a warning, as MIB's loader filters them.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from circuits.tasks.build import TextPair
from circuits.tasks.errors import TaskFileError

__all__ = ["MIB_SPLITS", "DEFAULT_COUNTERFACTUALS", "split_files", "read_records", "mib_pair", "mib_pairs",
           "is_mib_dataset"]

MIB_SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"dev": "validation", "val": "validation", "valid": "validation"}
# The counterfactual MIB's circuit track uses for each task when none is named (its dataset code's defaults).
DEFAULT_COUNTERFACTUALS = {"ioi": "s2_io_flip_counterfactual", "mcqa": "symbol_counterfactual",
                           "arc": "symbol_counterfactual", "arithmetic": "random_counterfactual"}
_SUFFIXES = (".parquet", ".jsonl", ".json", ".ndjson")


def _split_name(split: str, root: Path) -> str:
    s = _SPLIT_ALIASES.get(split.lower(), split.lower())
    if s not in MIB_SPLITS:
        raise TaskFileError(root, f"unknown MIB split {split!r}", f"use one of {', '.join(MIB_SPLITS)}")
    return s


def _files_in(folder: Path, split: str) -> list[Path]:
    names = {split} | {k for k, v in _SPLIT_ALIASES.items() if v == split}
    out = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if p.is_file() and p.suffix.lower() in _SUFFIXES:
            stem = p.name[: -len(p.suffix)]
            if stem in names or any(stem.startswith(f"{n}-") for n in names):  # train, train-00000-of-00002
                out.append(p)
    return out


def split_files(root: str | os.PathLike, split: str = "train", config: str | None = None) -> list[Path]:
    """The files holding ``split`` of the dataset folder ``root`` (shards in order); raises naming what exists."""
    root = Path(root)
    split = _split_name(split, root)
    if not root.is_dir():
        raise TaskFileError(root, "not a folder", "give the folder of a downloaded MIB dataset (e.g. mib-bench/ioi)")
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if config and not (root / config).is_dir():
        raise TaskFileError(root, f"no config folder {config!r} (folders: {', '.join(p.name for p in subfolders)})",
                            "pass config= one of those, or leave it out for data/ or top-level files")
    folders = [root / config] if config else [root, root / "data", *subfolders]
    for folder in folders:
        found = _files_in(folder, split)
        if found:
            return found
    present = sorted({p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in _SUFFIXES})
    where = f" in config {config!r}" if config else ""
    raise TaskFileError(root, f"no {split!r} split{where} (found: {', '.join(present[:8]) or 'no data files'})",
                        f"name the files {split}.jsonl / {split}.parquet or data/{split}-00000-of-00001.parquet, as "
                        f"MIB's hub datasets do, or pass one of the splits present")


def read_records(root: str | os.PathLike, split: str = "train",
                 config: str | None = None) -> list[tuple[Path, int, dict]]:
    """Every record of ``split``: (file, row number from 1, record) in file order."""
    out: list[tuple[Path, int, dict]] = []
    for path in split_files(root, split, config):
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
            out += [(path, i + 1, r) for i, r in enumerate(rows)]
            continue
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as e:
                raise TaskFileError(path, f"not valid JSON: {e.msg}", "fix the JSON syntax", line=e.lineno) from None
            out += [(path, i + 1, r) for i, r in enumerate(items)]
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    out.append((path, number, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise TaskFileError(path, f"not valid JSON: {e.msg}", "write one JSON record per line",
                                        line=number) from None
    for path, number, record in out:
        if not isinstance(record, dict) or "prompt" not in record:
            raise TaskFileError(path, "an MIB record is an object with a 'prompt'", "check the file's format",
                                line=number)
    return out


def is_mib_dataset(root: str | os.PathLike) -> bool:
    """Whether ``root`` is a folder holding an MIB split file in one of the hub layouts."""
    root = Path(root)
    if not root.is_dir():
        return False
    folders = [root, root / "data", *(p for p in root.iterdir() if p.is_dir())]
    return any(_files_in(f, s) for f in folders for s in MIB_SPLITS)


def _default_counterfactual(record: dict, path: Path, line: int) -> str:
    keys = [k for k in record if k.endswith("_counterfactual") and record[k] is not None]
    if len(keys) == 1:
        return keys[0]
    for default in DEFAULT_COUNTERFACTUALS.values():
        if default in keys:
            return default
    raise TaskFileError(path, f"MIB record with counterfactuals {keys or 'none'}",
                        "choose one with counterfactual='NAME_counterfactual'", line=line)


def _choice(record: dict, path: Path, line: int) -> tuple[str, list[str], bool]:
    """(answer, the other choices, whether these are labels MIB tokenizes as they are)."""
    choices, key = record.get("choices"), record.get("answerKey", record.get("answer_key"))
    if isinstance(choices, dict):
        labels = [str(x) for x in choices.get("label") or []]
        raw = True
    elif isinstance(choices, list):
        labels = [str(x) for x in choices]
        raw = False
    else:
        raise TaskFileError(path, "'choices' must be {'label': [...], 'text': [...]} or a list", "check the record",
                            line=line, key="choices")
    if isinstance(key, str) and key in labels:
        index = labels.index(key)
    else:
        try:
            index = int(key)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise TaskFileError(path, f"answerKey {key!r} is neither an index nor one of the labels {labels}",
                                "give the index of the correct choice", line=line, key="answerKey") from None
    if not 0 <= index < len(labels):
        raise TaskFileError(path, f"answerKey {index} is outside the {len(labels)} choices", "check the record",
                            line=line, key="answerKey")
    return labels[index], [c for i, c in enumerate(labels) if i != index], raw


def mib_pair(record: dict, counterfactual: str | None = None, *, path: str | os.PathLike = "<record>",
             line: int = 0) -> TextPair:
    """One MIB record -> a contrastive pair (clean = its prompt, corrupted = the counterfactual's)."""
    path = Path(path)
    name = counterfactual or _default_counterfactual(record, path, line)
    cf = record.get(name)
    if cf is None:
        keys = [k for k in record if k.endswith("_counterfactual")]
        raise TaskFileError(path, f"no {name!r} in this record (has {keys})", "pass one of those as counterfactual=",
                            line=line)
    corrupted = cf.get("prompt") if isinstance(cf, dict) else cf
    if not isinstance(corrupted, str):
        raise TaskFileError(path, f"{name} has no prompt", "give the counterfactual a 'prompt'", line=line)
    prompt = str(record["prompt"])

    def spaced(word: str) -> str:  # names and texts follow the prompt after a space
        return word if word[:1].isspace() or prompt[-1:].isspace() else " " + word

    md = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    if md and "indirect_object" in md and "subject" in md:  # IOI, as MIB reads it
        answers, distractors, raw = [spaced(str(md["indirect_object"]))], [spaced(str(md["subject"]))], False
    elif "choices" in record:
        answer, others, raw = _choice(record, path, line)
        distractors = others
        if isinstance(cf, dict) and "choices" in cf:
            cf_answer, _, _ = _choice(cf, path, line)
            if cf_answer != answer:
                distractors = [cf_answer]  # MIB's: the counterfactual's answer
        answers = [answer if raw else spaced(answer)]
        distractors = [d if raw else spaced(d) for d in distractors]
    elif "label" in record:  # arithmetic
        answers, raw = [str(record["label"])], True
        distractors = [str(cf["label"])] if isinstance(cf, dict) and cf.get("label") is not None else []
    else:
        raise TaskFileError(path, "an MIB record needs choices with answerKey, a label, or IOI metadata",
                            "check the dataset's format", line=line)
    recorded = {"clean": prompt, "corrupted": corrupted, "answer": answers[0],
                "distractor": distractors[0] if len(distractors) == 1 else distractors, "counterfactual": name,
                "line": line, "file": path.name}
    return TextPair(clean=prompt, corrupted=corrupted, answers=answers, distractors=distractors,
                    context_check=None if raw else answers[0], record=recorded, line=line)


def mib_pairs(root: str | os.PathLike, split: str = "train", *, counterfactual: str | None = None,
              config: str | None = None) -> list[TextPair]:
    """Every record of ``split`` as a pair (see :func:`mib_pair`). Records whose counterfactual is null (some of
    MIB's arithmetic records have none) are left out with a warning, as MIB's loader filters them."""
    records = read_records(root, split, config)
    if counterfactual is None:  # one name for the whole split: the only counterfactual, or MIB's default
        names = sorted({k for _, _, r in records for k in r if k.endswith("_counterfactual")})
        defaults = [d for d in DEFAULT_COUNTERFACTUALS.values() if d in names]
        counterfactual = names[0] if len(names) == 1 else defaults[0] if defaults else None
    if counterfactual is not None:
        empty = [line for _, line, r in records if counterfactual in r and r[counterfactual] is None]
        if empty:
            warnings.warn(f"{root}: left out {len(empty)} of {len(records)} {split} records whose {counterfactual} "
                          f"is null (first: row {empty[0]}), as MIB's loader filters them", stacklevel=3)
            records = [(p, line, r) for p, line, r in records if r.get(counterfactual, False) is not None]
    return [mib_pair(record, counterfactual, path=path, line=line) for path, line, record in records]
