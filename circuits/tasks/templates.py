"""Template tasks: sentences with slots, slot vocabularies, a corruption rule, and a readout at the end.

A :class:`TemplateSpec` is what a TOML task file declares, and what the built-in IOI and greater-than tasks are
made of, so the three share one sampler and one set of checks:

- ``templates``: strings with ``{SLOT}`` placeholders (``{{``/``}}`` for literal braces). Every template ends
  with the answer slot; the prompt is everything before it, and the answer is that slot's value together with
  the whitespace before it (" Mary"), so spacing follows the template and never needs spelling out.
- ``slots``: each slot draws from a vocabulary; slots naming the same vocabulary get distinct values (IO != S);
  ``"=S"`` makes a slot a copy of slot S (IOI's second subject mention ``S2``). Joint tables tie slots together
  row by row (a country and its capital).
- ``answer`` (slot read at the end), ``distractor`` (a slot whose clean value is the competitor), or
  ``answer_set`` (">", ">=", "<", "<=": the candidates above / below the clean value are the answers and the
  rest the distractors, e.g. greater-than over the 100 two-digit tokens).
- ``corruptions``: named rules; each maps slots to ``resample`` (a fresh value, distinct from every clean value of
  that vocabulary), ``"=SLOT"`` (another slot's clean value) or a literal. Copies not named follow their source.

Sampling is seeded (``random.Random(seed)`` for clean values, a second stream for corruptions, so changing the
corruption never changes the clean prompts). Pairs that fail a tokenization check in context (a year that
is not [" XX", "YY"], a corruption of different length) are resampled; words that are not single tokens at all
are an error that lists them, before anything is sampled.
"""

from __future__ import annotations

import operator
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from circuits.tasks.build import Span, TextPair, TokenCache, encode_pairs
from circuits.tasks.errors import TaskError, TaskFileError, TokenizationError
from circuits.tasks.metrics import check_metric_name
from circuits.tasks.tokenization import describe_tokens, single_token_id

_SLOT = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
COMPARISONS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


@dataclass
class Slot:
    """A slot: its own ``values`` (a vocabulary, or a joint table's column), or ``copy_of`` another slot."""

    name: str
    values: list[str] | None = None
    group: str = ""            # slots of one group get distinct values (same vocabulary name)
    copy_of: str | None = None
    joint: str | None = None   # name of the joint table this slot is a column of


@dataclass(frozen=True)
class Rule:
    """How the corruption changes a slot: ``resample``, ``copy`` (value = source slot) or ``literal``."""

    kind: str
    value: str | None = None

    @property
    def text(self) -> str:
        """The value of a ``copy`` (source slot) or ``literal`` rule; every such rule has one."""
        if self.value is None:
            raise TypeError(f"a {self.kind!r} rule carries no value")
        return self.value


@dataclass
class TemplateSpec:
    """A template task definition (see the module docstring). ``path``/``lines`` locate keys for errors."""

    name: str
    templates: list[str]
    slots: dict[str, Slot]
    answer: str
    corruptions: dict[str, dict[str, Rule]]
    default_corruption: str
    description: str = ""
    distractor: str | None = None
    answer_set: str | None = None
    candidates: list[str] | None = None
    metric: str | None = None
    joints: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    multi_token: set[str] = field(default_factory=set)
    prepend_bos: bool | None = None
    path: str | None = None
    lines: dict[str, int] = field(default_factory=dict)

    # ---- errors ----------------------------------------------------------------------------------------
    def error(self, key: str, problem: str, fix: str) -> TaskFileError:
        return TaskFileError(self.path or f"task {self.name!r}", problem, fix, key=key,
                             line=self.lines.get(key, self.lines.get(key.split(".")[0].split("[")[0])))

    @property
    def default_metric(self) -> str:
        if self.metric:
            return self.metric
        if self.answer_set:
            return "prob_diff"
        return "logit_diff" if self.distractor else "logprob"

    # ---- checks -----------------------------------------------------------------------------------------
    def validate(self) -> "TemplateSpec":
        """Check the definition itself (no tokenizer needed); raise TaskFileError naming the key and fix."""
        if not self.templates:
            raise self.error("templates", "no templates", 'add templates = ["... {SLOT} ... {ANSWER}"]')
        for name, slot in self.slots.items():
            if not _NAME.match(name):
                raise self.error(f"slots.{name}", f"slot name {name!r} is not an identifier",
                                 "use letters, digits and _ (e.g. IO, S2, PLACE)")
            if slot.copy_of is not None:
                if slot.copy_of not in self.slots:
                    raise self.error(f"slots.{name}", f"slot {name} copies undeclared slot {slot.copy_of!r}",
                                     f"declare {slot.copy_of} under [slots] or fix the name after '='")
                seen, cur = {name}, slot.copy_of
                while (source := self.slots[cur].copy_of) is not None:
                    if cur in seen:
                        raise self.error(f"slots.{name}", f"slot {name} copies itself (cycle through {cur})",
                                         "make one slot of the cycle draw from a vocabulary")
                    seen.add(cur)
                    cur = source
            elif not slot.values:
                raise self.error(f"slots.{name}", f"slot {name} has an empty vocabulary",
                                 f'give it words, e.g. {name} = ["word1", "word2"]')
        if self.answer not in self.slots:
            raise self.error("answer", f"answer slot {self.answer!r} is not declared",
                             f"declare {self.answer} under [slots] or set answer to one of: {', '.join(self.slots)}")
        for i, template in enumerate(self.templates):
            key = f"templates[{i}]"
            try:
                parts = parse_template(template)
            except ValueError as e:
                raise self.error(key, f"template {template!r}: {e}",
                                 "write {SLOT} for slots, {{ and }} for braces") from None
            used = [p[1] for p in parts if isinstance(p, tuple)]
            for name in used:
                if name not in self.slots:
                    raise self.error(key, f"template {template!r} uses slot {{{name}}}, which is not declared",
                                     f'declare it under [slots], e.g. {name} = ["word1", "word2"], or fix the '
                                     f"spelling (declared: {', '.join(self.slots) or 'none'})")
            tail = parts[-1] if parts and not (isinstance(parts[-1], str) and not parts[-1].strip()) else (
                parts[-2] if len(parts) > 1 else None)
            if not (isinstance(tail, tuple) and tail[1] == self.answer):
                raise self.error(key, f"template {template!r} does not end with the answer slot {{{self.answer}}}",
                                 f"end every template with {{{self.answer}}}: the model's prediction there is read")
        if self.distractor is not None and self.distractor != "corrupted" and self.distractor not in self.slots:
            raise self.error("distractor", f"distractor slot {self.distractor!r} is not declared",
                             f"set distractor to a slot name ({', '.join(self.slots)}) or 'corrupted'")
        if self.answer_set is not None:
            if self.answer_set not in COMPARISONS:
                raise self.error("answer_set", f"unknown answer_set {self.answer_set!r}",
                                 f"use one of {', '.join(COMPARISONS)} (answers = candidates that compare true "
                                 f"against the clean value; distractors = the rest)")
            cands = self.candidates or self.values_of(self.answer)
            missing = sorted(set(self.values_of(self.answer)) - set(cands))
            if missing and not _all_numeric(cands + self.values_of(self.answer)):
                raise self.error("candidates", f"answer values {missing[:5]} are not among the candidates",
                                 "add them to candidates, or use numbers so they compare numerically")
        if self.metric is not None:
            try:
                self.metric = check_metric_name(self.metric)
            except TaskError:
                raise self.error("metric", f"unknown metric {self.metric!r}",
                                 "use one of logit_diff, prob_diff, logprob, kl") from None
        if self.default_metric in ("logit_diff", "prob_diff") and not (self.distractor or self.answer_set):
            raise self.error("metric", f"metric {self.default_metric!r} compares the answer with a distractor, "
                             "but no distractor is declared",
                             'add distractor = "SLOT" (or answer_set), or use metric = "logprob" or "kl"')
        for name in self.multi_token:
            if name not in self.slots:
                raise self.error("multi_token", f"multi_token names undeclared slot {name!r}",
                                 f"use declared slots only ({', '.join(self.slots)})")
        if not self.corruptions:
            raise self.error("corrupt", "no corruption declared",
                             'add corrupt = ["SLOT", ...] (slots to resample) or a [corruptions] table')
        if self.default_corruption not in self.corruptions:
            raise self.error("default_corruption", f"unknown corruption {self.default_corruption!r}",
                             f"use one of {', '.join(self.corruptions)}")
        for cname, rules in self.corruptions.items():
            key = "corrupt" if cname == "default" and len(self.corruptions) == 1 else f"corruptions.{cname}"
            if not rules:
                raise self.error(key, f"corruption {cname!r} changes nothing", "name at least one slot to change")
            for sname, rule in rules.items():
                if sname not in self.slots:
                    raise self.error(key, f"corruption {cname!r} names undeclared slot {sname!r}",
                                     f"use declared slots only ({', '.join(self.slots)})")
                if rule.kind == "copy" and rule.value not in self.slots:
                    raise self.error(key, f"corruption {cname!r}: {sname} = '={rule.value}' copies an undeclared "
                                     f"slot", f"use '=SLOT' with one of {', '.join(self.slots)}")
        for joint, rows in self.joints.items():
            resampled = any(self.slots[self.root(s)].joint == joint and r.kind == "resample"
                            for rules in self.corruptions.values() for s, r in rules.items())
            if resampled and len(rows) < 2:
                raise self.error(f"joint.{joint}", f"joint table {joint!r} has {len(rows)} row(s) but the "
                                 "corruption resamples it", "give it at least two rows")
        self._check_group_sizes()
        return self

    def _check_group_sizes(self) -> None:
        for group, members in self.groups().items():
            if group.startswith("joint:"):
                continue
            values = self.slots[members[0]].values or []
            resampled = max((sum(1 for s, r in rules.items() if r.kind == "resample" and self.root(s) in members)
                             for rules in self.corruptions.values()), default=0)
            if len(set(values)) < len(members) + resampled:
                raise self.error(f"slots.{members[0]}", f"slots {', '.join(members)} need {len(members) + resampled} "
                                 f"distinct values but their vocabulary has {len(set(values))}",
                                 "add words to the vocabulary")

    # ---- structure helpers ------------------------------------------------------------------------------
    def root(self, name: str) -> str:
        """The slot a copy ultimately copies (the slot itself if it draws its own value)."""
        while (source := self.slots[name].copy_of) is not None:
            name = source
        return name

    def values_of(self, name: str) -> list[str]:
        return list(self.slots[self.root(name)].values or [])

    def groups(self) -> dict[str, list[str]]:
        """Distinctness groups: non-copy slots keyed by vocabulary (or joint table), in declaration order."""
        out: dict[str, list[str]] = {}
        for name, slot in self.slots.items():
            if slot.copy_of is None:
                key = f"joint:{slot.joint}" if slot.joint else (slot.group or f"slot:{name}")
                out.setdefault(key, []).append(name)
        return out

    # ---- tokenizer checks -------------------------------------------------------------------------------
    def contexts(self) -> dict[str, set[str]]:
        """For every slot, the whitespace strings that precede it somewhere in the templates."""
        out: dict[str, set[str]] = {}
        for template in self.templates:
            text = ""
            for part in parse_template(template):
                if isinstance(part, str):
                    text += part
                else:
                    ws = text[len(text.rstrip()):]
                    out.setdefault(part[1], set()).add(ws)
                    text += "x"
        return out

    def check_tokenizer(self, tok, drop_invalid_words: bool = False) -> dict[str, list[str]]:
        """Every value of a single-token slot (and every answer candidate and literal corruption) must be one
        known token in each whitespace context it appears in. Raises TokenizationError listing the offenders;
        with ``drop_invalid_words`` removes them instead and returns what was dropped, by slot."""
        contexts = self.contexts()
        offenders: dict[str, dict[str, str]] = {}   # slot -> value -> description
        cache: dict[str, int | None] = {}

        def one_token(text: str) -> bool:
            if text not in cache:
                cache[text] = single_token_id(tok, text)
            return cache[text] is not None

        units = [roots for g, roots in self.groups().items() if not g.startswith("joint:")]
        units += [[r] for g, roots in self.groups().items() if g.startswith("joint:") for r in roots]
        for roots in units:  # a vocabulary shared by several slots is checked once, in all their contexts
            members = [m for m in self.slots if self.root(m) in roots and m not in self.multi_token]
            if not members:
                continue
            label = ("slot " if len(members) == 1 else "slots ") + ", ".join(members)
            ws_set = set().union(*(contexts.get(m, set()) for m in members))
            values = dict.fromkeys(v for r in roots for v in self.slots[r].values or [])
            for value in values:
                for ws in sorted(ws_set):
                    if not one_token(ws + value):
                        offenders.setdefault(label, {})[value] = describe_tokens(tok, ws + value)
        for cname, rules in self.corruptions.items():
            for sname, rule in rules.items():
                if rule.kind == "literal" and sname not in self.multi_token:
                    literal = rule.text
                    for ws in sorted(contexts.get(sname, {""})):
                        if not one_token(ws + literal):
                            offenders.setdefault(f"corruptions.{cname}.{sname}", {})[literal] = \
                                describe_tokens(tok, ws + literal)
        if self.answer_set is not None:
            for value in self.candidates or []:
                for ws in sorted(contexts.get(self.answer, {""})):
                    if not one_token(ws + value):
                        offenders.setdefault("candidates", {})[value] = describe_tokens(tok, ws + value)
        if not offenders:
            return {}
        fixable = {k: v for k, v in offenders.items() if k.startswith("slot")}
        if drop_invalid_words and len(fixable) == len(offenders):
            bad_words = {w for bad in fixable.values() for w in bad}
            dropped: dict[str, list[str]] = {}
            for name, slot in self.slots.items():
                hit = sorted(v for v in slot.values or [] if v in bad_words)
                if hit:
                    dropped[name] = hit
                    slot.values = [v for v in slot.values or [] if v not in bad_words]
            for joint, rows in self.joints.items():
                self.joints[joint] = [r for r in rows if not any(v in bad_words for v in r.values())]
            try:
                self._check_group_sizes()
                if any(not rows for rows in self.joints.values()):
                    raise self.error("joint", "no rows left", "add rows whose words are single tokens")
            except TaskFileError as e:
                raise TokenizationError(f"after dropping words that are not single tokens for "
                                        f"{type(tok).__name__}, too few remain: {e.problem}",
                                        sorted(bad_words), e.fix, path=self.path) from None
            return dropped
        words = [w for bad in offenders.values() for w in bad]
        details = [f"{where}: " + ", ".join(bad.values()) for where, bad in offenders.items()]
        raise TokenizationError(
            f"task {self.name!r} cannot be built for {type(tok).__name__}: these words are not single tokens "
            f"(or are unknown) in the context the templates put them in",
            words, details=details, fix=(
            "remove them from the vocabulary (or pass drop_invalid_words=True to skip them), use a tokenizer "
            "that has them, or list the slot in multi_token if the corruption leaves it alone"),
            path=self.path)

    # ---- sampling ---------------------------------------------------------------------------------------
    def _parsed(self) -> list[list[str | tuple[str, str]]]:
        key = tuple(self.templates)
        if getattr(self, "_parsed_key", None) != key:
            self._parsed_cache = [parse_template(t.rstrip()) for t in self.templates]
            self._parsed_key = key
        return self._parsed_cache

    def sample(self, rng: random.Random, crng: random.Random, corruption: str) -> TextPair:
        """One pair: a template, clean slot values, corrupted values, rendered prompts and readout."""
        t_index = rng.randrange(len(self.templates))
        parts = self._parsed()[t_index]
        clean = self._draw(rng)
        corrupted = self._corrupt(clean, crng, self.corruptions[corruption])
        clean_text, clean_spans = render(parts, clean)
        corr_text, corr_spans = render(parts, corrupted)
        final = clean_spans[-1]
        prompt, corr_prompt = clean_text[:final.ws_start], corr_text[:corr_spans[-1].ws_start]
        ws = clean_text[final.ws_start:final.start]
        answer_value = clean[self.answer]
        shown_distractor: str | None
        if self.answer_set is not None:
            cands = self.candidates or self.values_of(self.answer)
            key = _comparison_key(cands + [answer_value])
            op = COMPARISONS[self.answer_set]
            answers = [ws + c for c in cands if op(key(c), key(answer_value))]
            distractors = [ws + c for c in cands if not op(key(c), key(answer_value))]
            shown_answer = f"{self.answer_set} {answer_value!r} ({len(answers)} tokens)"
            shown_distractor = f"the other {len(distractors)} tokens"
        else:
            answers = [ws + answer_value]
            if self.distractor == "corrupted":
                distractors = [ws + corrupted[self.answer]]
            elif self.distractor is not None:
                distractors = [ws + clean[self.distractor]]
            else:
                distractors = []
            shown_answer, shown_distractor = answers[0], (distractors[0] if distractors else None)
        single = [s for s in self.slots if s not in self.multi_token]
        record: dict[str, Any] = {"clean": prompt, "corrupted": corr_prompt, "answer": shown_answer,
                                  "distractor": shown_distractor, "template": t_index}
        for name, value in clean.items():
            record[name if name not in record else f"slot_{name}"] = value
        changed = {k: v for k, v in corrupted.items() if v != clean[k]}
        record["corrupted_slots"] = changed
        return TextPair(
            clean=prompt, corrupted=corr_prompt, answers=answers, distractors=distractors,
            clean_spans=[s for s in clean_spans[:-1] if s.slot in single],
            corrupted_spans=[s for s in corr_spans[:-1] if s.slot in single],
            context_check=ws + answer_value, record=record)

    def _draw(self, rng: random.Random) -> dict[str, str]:
        values: dict[str, str] = {}
        for key, members in self.groups().items():
            if key.startswith("joint:"):
                row = rng.choice(self.joints[key[6:]])
                values.update({m: row[m] for m in members})
            else:
                values.update(zip(members, rng.sample(self.slots[members[0]].values or [], len(members))))
        for name in self.slots:
            if self.slots[name].copy_of is not None:
                values[name] = values[self.root(name)]
        return values

    def _corrupt(self, clean: dict[str, str], rng: random.Random, rules: dict[str, Rule]) -> dict[str, str]:
        out = dict(clean)
        groups = self.groups()
        group_of = {m: k for k, ms in groups.items() for m in ms}
        used: dict[str, set[str]] = {k: {clean[m] for m in ms} for k, ms in groups.items()}
        for name, rule in rules.items():
            if rule.kind == "copy":
                out[name] = clean[rule.text]
            elif rule.kind == "literal":
                out[name] = rule.text
            else:
                root = self.root(name)
                group = group_of[root]
                if group.startswith("joint:"):
                    rows = [r for r in self.joints[group[6:]] if r[root] != clean[root]]
                    row = rng.choice(rows)
                    for m in groups[group]:
                        out[m] = row[m]
                    out[name] = row[root]
                else:
                    choices = [v for v in self.slots[root].values or [] if v not in used[group]]
                    out[name] = rng.choice(choices)
                    used[group].add(out[name])

        def resolve(name: str) -> str:  # copies not named by the rule follow their (possibly corrupted) source
            slot = self.slots[name]
            return out[name] if name in rules or slot.copy_of is None else resolve(slot.copy_of)

        for name in self.slots:
            out[name] = resolve(name)
        return out

    # ---- building ---------------------------------------------------------------------------------------
    def build(self, tok, n: int, seed: int, *, corruption: str | None = None, prepend_bos: bool = False,
              invalid: str = "resample", drop_invalid_words: bool = False):
        """Sample ``n`` valid pairs; returns (encoded pairs, text pairs, info dict)."""
        corruption = self._corruption_name(corruption)
        dropped = self.check_tokenizer(tok, drop_invalid_words=drop_invalid_words)
        if invalid not in ("resample", "error"):
            raise TaskError(f"invalid={invalid!r}; fix: use 'resample' or 'error'")
        rng, crng = random.Random(seed), random.Random(f"{seed}/corruption")
        pairs = [self.sample(rng, crng, corruption) for _ in range(n)]
        cache = TokenCache(tok)
        encoded, problems = encode_pairs(pairs, tok, prepend_bos, cache)
        reasons: Counter = Counter()
        examples: dict[str, str] = {}
        draws, limit = n, 50 * n + 1000
        while problems:
            for p in problems.values():
                reasons[(p.kind, p.slot)] += 1
                examples.setdefault(f"{p.kind}:{p.slot}", p.message)
            all_failed = draws == n >= 10 and len(problems) == n
            if invalid == "error" or all_failed or draws >= limit:
                raise self._invalid_error(reasons, examples, tok, draws, corruption)
            todo = sorted(problems)
            redo = [self.sample(rng, crng, corruption) for _ in todo]
            draws += len(redo)
            new_enc, new_problems = encode_pairs(redo, tok, prepend_bos, cache)
            problems = {}
            for j, i in enumerate(todo):
                pairs[i], encoded[i] = redo[j], new_enc[j]
                if j in new_problems:
                    problems[i] = new_problems[j]
        info = {"corruption": corruption, "resampled": draws - n, "dropped_words": dropped}
        return encoded, pairs, info

    def _corruption_name(self, corruption: str | None) -> str:
        if corruption is None:
            return self.default_corruption
        if corruption not in self.corruptions:
            raise TaskError(f"task {self.name!r} has no corruption {corruption!r}; fix: use one of "
                            f"{', '.join(self.corruptions)}")
        return corruption

    def _invalid_error(self, reasons: Counter, examples: dict[str, str], tok, draws: int,
                       corruption: str) -> TaskError:
        (kind, slot), count = reasons.most_common(1)[0]
        example = examples[f"{kind}:{slot}"]
        fixes = {
            "length": "make every corruption keep the token length: corrupt only single-token slots, with "
                      "single-token values (remove the slot from multi_token)",
            "slot": f"use words that stay one token in context for slot {slot} (or list it in multi_token)",
            "context": "make the answer a separate token after the prompt (e.g. put a space before the answer slot)",
            "answer": "use answers and distractors that are single tokens",
        }
        corrupt_key = "corrupt" if corruption == "default" else f"corruptions.{corruption}"
        key = {"length": corrupt_key, "slot": f"slots.{slot}", "context": "answer", "answer": "answer"}[kind]
        msg = f"{count} of {draws} sampled pairs are unusable for {type(tok).__name__}; e.g. {example}"
        return self.error(key, msg, fixes[kind])


# ---- template text -------------------------------------------------------------------------------------
def parse_template(template: str) -> list[str | tuple[str, str]]:
    """'Then, {S} and {IO}' -> ['Then, ', ('slot', 'S'), ' and ', ('slot', 'IO')]; '{{' is a literal brace."""
    parts: list[str | tuple[str, str]] = []
    text, pos = "", 0
    for m in _SLOT.finditer(template):
        text += template[pos:m.start()]
        pos = m.end()
        tokn = m.group(0)
        if tokn == "{{":
            text += "{"
        elif tokn == "}}":
            text += "}"
        elif m.group(1) is None:
            raise ValueError(f"unmatched {tokn!r} at character {m.start()}")
        else:
            name = m.group(1).strip()
            if not _NAME.match(name):
                raise ValueError(f"{{{m.group(1)}}} is not a slot name")
            if text:
                parts.append(text)
            text = ""
            parts.append(("slot", name))
    text += template[pos:]
    if text:
        parts.append(text)
    return parts


def render(parts: list[str | tuple[str, str]], values: dict[str, str]) -> tuple[str, list[Span]]:
    """Fill slots; returns the text and one Span per slot occurrence (with the whitespace before it)."""
    text, spans = "", []
    for part in parts:
        if isinstance(part, str):
            text += part
        else:
            name = part[1]
            ws_start = len(text.rstrip())
            start = len(text)
            text += values[name]
            spans.append(Span(name, ws_start, start, len(text)))
    return text, spans


def _all_numeric(values: list[str]) -> bool:
    return all(re.fullmatch(r"-?\d+(\.\d+)?", v.strip()) for v in values)


def _comparison_key(values: list[str]):
    """Numbers compare numerically; anything else by its position in the candidate list."""
    if _all_numeric(values):
        return lambda v: float(v)
    order = {v: i for i, v in enumerate(dict.fromkeys(values))}
    return lambda v: order[v]

