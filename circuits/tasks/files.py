"""Task files: TOML template tasks, and JSONL/CSV files of explicit pairs (as MIB and EAP-IG distribute data).

TOML (every key is optional except templates, slots, answer and a corruption)::

    name = "capitals"
    metric = "logit_diff"                       # logit_diff | prob_diff | logprob | kl
    templates = ["The capital of {COUNTRY} is {CAPITAL}"]   # each ends with the answer slot
    answer = "CAPITAL"                          # the slot read at the end
    distractor = "corrupted"                    # a slot name, or "corrupted" (the corrupted prompt's answer)
    corrupt = ["COUNTRY"]                       # slots to resample; or {SLOT = "=OTHER"} / {SLOT = "literal"}
    [joint.capitals]                            # slots tied row by row
    slots = ["COUNTRY", "CAPITAL"]
    values = [["France", "Paris"], ["Italy", "Rome"], ["Japan", "Tokyo"]]

Slots: ``X = ["a", "b"]`` (own words), ``X = "names"`` (a list under ``[vocab]``, or a built-in list such as
``ioi_names``; slots naming the same list get distinct values), ``X = "=Y"`` (copy of slot Y),
``X = {from = 2, to = 98, digits = 2}`` (numbers "02".."98"). Named alternatives go under ``[corruptions]``
(``default_corruption`` picks one); ``answer_set = ">"`` with ``candidates`` reads probability mass over a set;
``multi_token = ["NOUN"]`` lets slots the corruption leaves alone span several tokens.
``pairs = "file.jsonl"`` instead of templates loads explicit pairs with this file's name and metric;
``generator = "induction"`` with an ``[options]`` table configures a built-in generator.

Pairs files: one pair per JSONL line or CSV row, with ``clean``, ``corrupted``, ``answer`` and optionally
``distractor`` (lists for answer sets). The answer is the exact text that follows the prompt, so it carries its
leading space (" Mary"). Token ids work too (EAP-IG's ``correct_idx`` / ``incorrect_idx``), and MIB's records
(``prompt``, ``choices``, ``answerKey``, ``*_counterfactual``) load as they are.
"""

from __future__ import annotations

import csv
import difflib
import json
import random
import re
import warnings
from pathlib import Path
from typing import Any

from circuits.tasks import data
from circuits.tasks.build import TextPair, TokenCache, encode_pairs
from circuits.tasks.errors import TaskError, TaskFileError
from circuits.tasks.metrics import check_metric_name
from circuits.tasks.templates import Rule, Slot, TemplateSpec

TOP_KEYS = {
    "name": "the task's name", "description": "one line shown by `circuits tasks`", "metric": "the metric",
    "templates": "template strings", "template": "one template string", "answer": "the slot read at the end",
    "distractor": "slot whose clean value competes with the answer", "answer_set": "> >= < <=",
    "candidates": "answer-set candidates", "corrupt": "the corruption", "corruptions": "named corruptions",
    "default_corruption": "which named corruption is the default", "multi_token": "slots that may span tokens",
    "prepend_bos": "true/false", "slots": "slot vocabularies", "vocab": "named word lists",
    "joint": "slots tied row by row", "pairs": "a JSONL/CSV pairs file", "generator": "a built-in generator",
    "options": "options for the generator", "source": "where the task comes from", "citation": "a reference",
    "notes": "free text", "split": "train fraction",
}
PAIR_FIELDS = {
    "clean": ("clean", "clean_prompt", "prompt", "text", "input"),
    "corrupted": ("corrupted", "corrupt", "corrupted_prompt", "counterfactual", "patch", "corrupted_text"),
    "answer": ("answer", "answers", "correct", "target", "label", "correct_idx", "answer_idx", "answer_id"),
    "distractor": ("distractor", "distractors", "incorrect", "wrong", "foil", "incorrect_idx",
                   "distractor_idx", "distractor_id"),
}


# ---- TOML --------------------------------------------------------------------------------------------------
def read_toml(path: Path) -> tuple[dict, dict[str, int]]:
    """Parse a TOML file; returns (content, line number of each key as 'table.key')."""
    import tomllib

    text = path.read_text(encoding="utf-8")
    try:
        content = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise TaskFileError(path, f"not valid TOML: {e}", "check quotes, brackets and commas on that line "
                            "(strings need double quotes; lists are [\"a\", \"b\"])",
                            line=int(m.group(1)) if m else None) from None
    return content, _key_lines(text)


def _key_lines(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    table = ""
    in_templates = None
    t_index = 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?", stripped)
        if header:
            table = header.group(1).strip().replace('"', "")
            lines.setdefault(table, number)
            in_templates = None
            continue
        m = re.match(r'^\s*"?([A-Za-z0-9_\-]+)"?\s*=', line)
        if m:
            key = f"{table}.{m.group(1)}" if table else m.group(1)
            lines.setdefault(key, number)
            in_templates = key if key in ("templates", "template") else None
            t_index = 0
            rest = line[m.end():]
        elif in_templates:
            rest = line
        else:
            continue
        if in_templates:
            for _ in re.finditer(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'', rest):
                lines.setdefault(f"templates[{t_index}]", number)
                t_index += 1
            if "]" in re.sub(r'"(?:[^"\\]|\\.)*"', "", rest):
                in_templates = None
    return lines


def _fail(path, key, lines, problem, fix):
    line = lines.get(key) or lines.get(key.split(".")[0])
    return TaskFileError(path, problem, fix, key=key, line=line)


def _strings(value: Any, path, key, lines) -> list[str]:
    if isinstance(value, dict) and "from" in value and "to" in value:
        try:
            lo, hi, digits = int(value["from"]), int(value["to"]), int(value.get("digits", 0))
        except (TypeError, ValueError):
            raise _fail(path, key, lines, f"bad number range {value!r}",
                        "write {from = 2, to = 98, digits = 2} with whole numbers") from None
        if hi < lo:
            raise _fail(path, key, lines, f"empty range {lo}..{hi}", "make `to` at least `from`")
        return [str(i).zfill(digits) for i in range(lo, hi + 1)]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, key, lines, f"expected a list of strings, got {value!r}",
                    'write a list of quoted words, e.g. ["store", "garden"] (numbers in quotes: "01")')
    if len(set(value)) != len(value):
        dup = sorted({v for v in value if value.count(v) > 1})
        raise _fail(path, key, lines, f"repeated words {dup}", "list each word once")
    return list(value)


def spec_from_toml(content: dict, path: Path, lines: dict[str, int]) -> TemplateSpec:
    """Build (and validate) a TemplateSpec from parsed TOML content."""
    for key in content:
        if key not in TOP_KEYS:
            close = difflib.get_close_matches(key, TOP_KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise _fail(path, key, lines, f"unknown key {key!r}",
                        f"{hint}allowed keys: {', '.join(sorted(TOP_KEYS))}")
    name = str(content.get("name", path.stem))
    if "templates" in content and "template" in content:
        raise _fail(path, "template", lines, "both template and templates are given", "keep one of them")
    templates = content.get("templates", content.get("template"))
    if templates is None:
        raise _fail(path, "templates", lines, "no templates",
                    'add templates = ["... {SLOT} ... {ANSWER}"] (or pairs = "file.jsonl" for explicit pairs)')
    if isinstance(templates, str):
        templates = [templates]
    if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
        raise _fail(path, "templates", lines, "templates must be a list of strings", 'write templates = ["..."]')
    for key in ("answer",):
        if key not in content:
            raise _fail(path, key, lines, f"missing {key!r}",
                        'add answer = "SLOT": the slot every template ends with, whose value is the answer')
    vocab_table = content.get("vocab", {})
    if not isinstance(vocab_table, dict):
        raise _fail(path, "vocab", lines, "vocab must be a table", 'write [vocab] then names = ["...", ...]')
    vocabs = {k: _strings(v, path, f"vocab.{k}", lines) for k, v in vocab_table.items()}

    slots: dict[str, Slot] = {}
    slot_table = content.get("slots", {})
    if not isinstance(slot_table, dict):
        raise _fail(path, "slots", lines, "slots must be a table", "write [slots] then one line per slot")
    for sname, value in slot_table.items():
        key = f"slots.{sname}"
        if isinstance(value, str) and value.startswith("="):
            slots[sname] = Slot(sname, copy_of=value[1:].strip())
        elif isinstance(value, str):
            if value in vocabs:
                slots[sname] = Slot(sname, list(vocabs[value]), group=f"vocab:{value}")
            elif value in data.BUILTIN_VOCABULARIES:
                slots[sname] = Slot(sname, list(data.BUILTIN_VOCABULARIES[value]), group=f"vocab:{value}")
            else:
                known = sorted(vocabs) + sorted(data.BUILTIN_VOCABULARIES)
                raise _fail(path, key, lines, f"slot {sname} names an unknown word list {value!r}",
                            f"define it under [vocab] or use one of: {', '.join(known)}; a list of words "
                            f'also works, e.g. {sname} = ["a", "b"]; "=OTHER" copies slot OTHER')
        else:
            slots[sname] = Slot(sname, _strings(value, path, key, lines), group=f"slot:{sname}")

    joints: dict[str, list[dict[str, str]]] = {}
    for jname, table in (content.get("joint") or {}).items():
        key = f"joint.{jname}"
        if not isinstance(table, dict) or "slots" not in table or "values" not in table:
            raise _fail(path, key, lines, f"joint table {jname!r} needs `slots` and `values`",
                        'write slots = ["A", "B"] and values = [["a1", "b1"], ["a2", "b2"]]')
        jslots, rows = table["slots"], table["values"]
        for s in jslots:
            if s in slots:
                raise _fail(path, key, lines, f"slot {s} is declared both in [slots] and in joint.{jname}",
                            "declare it in one place only")
        bad = [r for r in rows if not isinstance(r, list) or len(r) != len(jslots)
               or not all(isinstance(v, str) for v in r)]
        if bad:
            raise _fail(path, key, lines, f"joint.{jname}: row {bad[0]!r} does not give one string per slot "
                        f"{jslots}", f"give every row {len(jslots)} quoted values")
        joints[jname] = [dict(zip(jslots, r)) for r in rows]
        for i, s in enumerate(jslots):
            slots[s] = Slot(s, list(dict.fromkeys(r[i] for r in rows)), joint=jname)

    corruptions: dict[str, dict[str, Rule]] = {}
    if "corrupt" in content:
        corruptions["default"] = _rules(content["corrupt"], path, "corrupt", lines)
    for cname, value in (content.get("corruptions") or {}).items():
        corruptions[cname] = _rules(value, path, f"corruptions.{cname}", lines)
    default = content.get("default_corruption", "default" if "corrupt" in content else next(iter(corruptions), ""))

    candidates = content.get("candidates")
    if isinstance(candidates, str):
        if candidates in vocabs:
            candidates = vocabs[candidates]
        elif candidates in data.BUILTIN_VOCABULARIES:
            candidates = list(data.BUILTIN_VOCABULARIES[candidates])
        else:
            raise _fail(path, "candidates", lines, f"unknown word list {candidates!r}",
                        f"define it under [vocab] or use one of {', '.join(sorted(data.BUILTIN_VOCABULARIES))}")
    elif candidates is not None:
        candidates = _strings(candidates, path, "candidates", lines)

    metric = content.get("metric")
    if metric is not None:
        try:
            metric = check_metric_name(metric)
        except TaskError:
            raise _fail(path, "metric", lines, f"unknown metric {metric!r}",
                        "use one of logit_diff, prob_diff, logprob, kl") from None
    prepend_bos = content.get("prepend_bos")
    if prepend_bos is not None and not isinstance(prepend_bos, bool):
        raise _fail(path, "prepend_bos", lines, f"prepend_bos must be true or false, got {prepend_bos!r}",
                    "write prepend_bos = true (or false), or leave it out to follow the tokenizer")
    multi = content.get("multi_token", [])
    if not isinstance(multi, list):
        raise _fail(path, "multi_token", lines, "multi_token must be a list of slot names", 'write ["NOUN"]')
    spec = TemplateSpec(
        name=name, templates=list(templates), slots=slots, answer=str(content["answer"]),
        corruptions=corruptions, default_corruption=str(default), description=str(content.get("description", "")),
        distractor=content.get("distractor"), answer_set=content.get("answer_set"), candidates=candidates,
        metric=metric, joints=joints, multi_token=set(multi), prepend_bos=prepend_bos, path=str(path), lines=lines)
    return spec.validate()


def _rules(value: Any, path, key, lines) -> dict[str, Rule]:
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise _fail(path, key, lines, f"{key} must list slot names", 'write ["IO", "S"]')
        return {v: Rule("resample") for v in value}
    if isinstance(value, dict):
        rules = {}
        for slot, v in value.items():
            if not isinstance(v, str):
                raise _fail(path, key, lines, f"{key}.{slot} = {v!r} is not a string",
                            f'quote it ({slot} = "{v}"), write "resample", or "=OTHER" to copy slot OTHER')
            if v == "resample":
                rules[slot] = Rule("resample")
            elif v.startswith("="):
                rules[slot] = Rule("copy", v[1:].strip())
            else:
                rules[slot] = Rule("literal", v)
        return rules
    raise _fail(path, key, lines, f"{key} must be a list of slots to resample or a table",
                f'write {key.split(".")[-1]} = ["SLOT"] or {{ SLOT = "=OTHER" }}')


# ---- pairs files ---------------------------------------------------------------------------------------------
def read_pair_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) for each JSONL line / CSV row; errors name the line."""
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict]] = []
    if suffix in (".jsonl", ".json", ".ndjson"):
        text = path.read_text(encoding="utf-8")
        if suffix == ".json" and text.lstrip().startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as e:
                raise TaskFileError(path, f"not valid JSON: {e.msg}", "fix the JSON syntax", line=e.lineno) from None
            return [(i + 1, r) for i, r in enumerate(items)]
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskFileError(path, f"not valid JSON: {e.msg}",
                                    'write one JSON object per line, e.g. {"clean": "...", "corrupted": "...", '
                                    '"answer": " Mary", "distractor": " John"}', line=number) from None
            if not isinstance(row, dict):
                raise TaskFileError(path, "each line must be a JSON object", 'write {"clean": ..., ...}', line=number)
            rows.append((number, row))
    elif suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            if not reader.fieldnames:
                raise TaskFileError(path, "no header row", "start with a header: clean,corrupted,answer,distractor",
                                    line=1)
            for row in reader:
                rows.append((reader.line_num, {k: v for k, v in row.items() if k is not None}))
    else:
        raise TaskFileError(path, f"unknown pairs file type {suffix!r}", "use .jsonl or .csv")
    if not rows:
        raise TaskFileError(path, "the file holds no pairs", "add one pair per line")
    return rows


def _field(row: dict, name: str) -> tuple[str | None, Any]:
    lower = {str(k).strip().lower(): k for k in row}
    for alias in PAIR_FIELDS[name]:
        if alias in lower and row[lower[alias]] not in (None, ""):
            return alias, row[lower[alias]]
    return None, None


def _tokens(value: Any, is_id: bool) -> list[Any]:
    """Normalize an answer cell: a string, an id, or a list of either (JSON text in CSV cells)."""
    if isinstance(value, str) and value.strip().startswith("[") and value.strip().endswith("]"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    items = value if isinstance(value, list) else [value]
    out: list[Any] = []
    for item in items:
        if is_id or isinstance(item, int):
            out.append(int(item))
        else:
            out.append(str(item))
    return out


def pair_from_row(row: dict, path: Path, line: int, counterfactual: str | None = None) -> TextPair:
    """One TextPair from a flat row (clean/corrupted/answer/distractor) or an MIB record."""
    mib = ("choices" in row and ("answerKey" in row or "answer_key" in row)) or any(
        str(k).endswith("_counterfactual") for k in row)
    if mib and "prompt" in row:
        return _mib_pair(row, path, line, counterfactual)
    _, clean = _field(row, "clean")
    _, corrupted = _field(row, "corrupted")
    akey, answer = _field(row, "answer")
    dkey, distractor = _field(row, "distractor")
    for label, value, example in (("clean", clean, "the prompt, ending right before the answer"),
                                  ("corrupted", corrupted, "the corrupted prompt, same token length as clean"),
                                  ("answer", answer, 'the text that follows the prompt, e.g. " Mary"')):
        if value is None:
            raise TaskFileError(path, f"missing {label!r} ({' / '.join(PAIR_FIELDS[label])})",
                                f"give every pair a {label!r} field: {example}", line=line, key=label)
    answers = _tokens(answer, akey is not None and akey.endswith(("_idx", "_id")))
    distractors = [] if distractor is None else _tokens(distractor, dkey is not None and dkey.endswith(("_idx", "_id")))
    record = {"clean": str(clean), "corrupted": str(corrupted),
              "answer": answers[0] if len(answers) == 1 else answers,
              "distractor": (distractors[0] if len(distractors) == 1 else distractors) if distractors else None,
              "line": line}
    return TextPair(clean=str(clean), corrupted=str(corrupted), answers=answers, distractors=distractors,
                    context_check=answers[0] if len(answers) == 1 and isinstance(answers[0], str) else None,
                    record=record, line=line)


def _mib_pair(row: dict, path: Path, line: int, counterfactual: str | None) -> TextPair:
    from circuits.tasks.mib import mib_pair

    return mib_pair(row, counterfactual, path=path, line=line)


def load_pairs(path: Path, tok, *, prepend_bos: bool, n: int | None, seed: int,
               counterfactual: str | None = None) -> tuple[list, list[TextPair]]:
    """Read, validate (every row) and subsample a pairs file; returns (encoded, pairs)."""
    rows = read_pair_rows(path)
    pairs = [pair_from_row(row, path, line, counterfactual) for line, row in rows]
    return encode_and_sample(pairs, tok, prepend_bos=prepend_bos, n=n, seed=seed, source=path)


_FIXES = {"length": "make the clean and corrupted prompts the same number of tokens (swap words for words of equal "
                    "token length)",
          "answer": "use answers/distractors that are one token, with the leading space they have after the prompt "
                    '(" Mary"), or give token ids in answer_idx / distractor_idx',
          "context": "end the prompt where the answer token starts (usually: no trailing space, and the answer "
                     "begins with a space)",
          "slot": "check the prompt"}


def encode_and_sample(pairs: list[TextPair], tok, *, prepend_bos: bool, n: int | None, seed: int,
                      source: Path, invalid: str = "error") -> tuple[list, list[TextPair]]:
    """Tokenize every pair, then keep a seeded sample of ``n`` (all when None), in file order.

    ``invalid``: "error" raises on the first pair that cannot be used (naming its line and the fix); "drop" leaves
    such pairs out with one warning that counts them (MIB's loader filters its datasets the same way)."""
    encoded, problems = encode_pairs(pairs, tok, prepend_bos, TokenCache(tok))
    if problems and (invalid == "error" or len(problems) == len(pairs)):
        i, problem = min(problems.items())
        more = f" ({len(problems)} bad pairs in all)" if len(problems) > 1 else ""
        raise TaskFileError(source, problem.message + more, _FIXES[problem.kind], line=pairs[i].line)
    if problems:
        i, problem = min(problems.items())
        warnings.warn(f"{source}: left out {len(problems)} of {len(pairs)} records this tokenizer cannot use, as "
                      f"MIB's loader filters them (first, line {pairs[i].line}: {problem.message})", stacklevel=3)
    order = [i for i in range(len(pairs)) if i not in problems]
    if n is not None and n < len(order):
        order = sorted(random.Random(seed).sample(order, n))
    elif n is not None and n > len(order):
        warnings.warn(f"{source}: asked for n={n} pairs but there are {len(order)}; using all of them",
                      stacklevel=3)
    return [encoded[i] for i in order], [pairs[i] for i in order]
