"""Turn text pairs into token tensors, checking what the published setups require.

Every text task (templates, IOI, greater-than, pairs files) goes through :func:`encode_pairs`, so the checks
are the same everywhere: clean and corrupted prompts tokenize to the same length; slots declared single-token
are exactly one token in context; answers and distractors are single tokens; and the clean answer appended
to the prompt tokenizes as the prompt plus that one token (no merge across the boundary, so the read position
really predicts it). BOS is prepended here, when asked, and positions are shifted with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from circuits.tasks.tokenization import batch_encode, bos_id, describe_tokens, single_token_id


@dataclass(frozen=True)
class Span:
    """A slot occurrence in a prompt: characters [start, end) hold the value, [ws_start, start) whitespace."""

    slot: str
    ws_start: int
    start: int
    end: int


@dataclass(frozen=True)
class TextPair:
    """One contrastive pair before tokenization. The prompts end right before the answer.

    ``answers`` / ``distractors``: continuation texts (e.g. " Mary", "32") or token ids. ``context_check``:
    a continuation whose tokenization after the clean prompt must be exactly one extra token.
    ``clean_spans`` / ``corrupted_spans``: single-token slot occurrences to verify. ``key``: where in the task
    definition this pair comes from (a file line), for error messages.
    """

    clean: str
    corrupted: str
    answers: list[Any]
    distractors: list[Any] = field(default_factory=list)
    clean_spans: list[Span] = field(default_factory=list)
    corrupted_spans: list[Span] = field(default_factory=list)
    context_check: str | None = None
    record: dict = field(default_factory=dict)
    line: int | None = None


@dataclass(frozen=True)
class Problem:
    """Why a pair cannot be used: ``kind`` in {length, slot, context, answer}; ``slot`` when one is to blame."""

    kind: str
    message: str
    slot: str | None = None


@dataclass(frozen=True)
class Encoded:
    clean: list[int]
    corrupted: list[int]
    readouts: list[tuple[int, list[int], list[int]]]


def _span_ok(offsets: Sequence[tuple[int, int]], span: Span) -> bool:
    """Exactly one token overlaps the value, and it covers the value plus at most its leading whitespace."""
    hits = [(s, e) for s, e in offsets if s < span.end and e > span.start and e > s]
    if len(hits) != 1:
        return False
    s, e = hits[0]
    return span.ws_start <= s <= span.start and e == span.end


class TokenCache:
    """Continuation text -> single token id (None if not one known token), computed once per text."""

    def __init__(self, tok):
        self.tok = tok
        self._ids: dict[str, int | None] = {}

    def id(self, text: Any) -> int | None:
        if isinstance(text, int):
            return text if 0 <= text < len(self.tok) else None
        if text not in self._ids:
            self._ids[text] = single_token_id(self.tok, text)
        return self._ids[text]

    def describe(self, text: Any) -> str:
        if isinstance(text, int):
            return f"token id {text} (outside the vocabulary of {len(self.tok)})"
        return describe_tokens(self.tok, text)


def encode_pairs(pairs: Sequence[TextPair], tok, prepend_bos: bool,
                 cache: TokenCache | None = None) -> tuple[list[Encoded | None], dict[int, Problem]]:
    """Tokenize pairs; returns one ``Encoded`` per pair (None where it failed) and the problems by index."""
    cache = cache or TokenCache(tok)
    clean_ids, clean_off = batch_encode(tok, [p.clean for p in pairs])
    corr_ids, corr_off = batch_encode(tok, [p.corrupted for p in pairs])
    checks = [i for i, p in enumerate(pairs) if p.context_check is not None]
    ctx_ids, _ = batch_encode(tok, [pairs[i].clean + (pairs[i].context_check or "") for i in checks])
    ctx = dict(zip(checks, ctx_ids))
    prefix = [bos_id(tok)] if prepend_bos else []
    out: list[Encoded | None] = []
    problems: dict[int, Problem] = {}
    for i, p in enumerate(pairs):
        problem = None
        if len(clean_ids[i]) != len(corr_ids[i]):
            problem = Problem("length", f"clean and corrupted prompts tokenize to different lengths "
                                        f"({len(clean_ids[i])} vs {len(corr_ids[i])} tokens): {p.clean!r} / "
                                        f"{p.corrupted!r}")
        if problem is None:
            for spans, offsets, text in ((p.clean_spans, clean_off[i], p.clean),
                                         (p.corrupted_spans, corr_off[i], p.corrupted)):
                bad = next((s for s in spans if not _span_ok(offsets, s)), None)
                if bad is not None:
                    problem = Problem("slot", f"slot {{{bad.slot}}} = {text[bad.start:bad.end]!r} is not a single "
                                              f"token in context: {text!r}", slot=bad.slot)
                    break
        answer_ids = [cache.id(a) for a in p.answers]
        distractor_ids = [cache.id(d) for d in p.distractors]
        if problem is None:
            missing = [t for t, k in zip(list(p.answers) + list(p.distractors), answer_ids + distractor_ids)
                       if k is None]
            if missing:
                problem = Problem("answer", "answer/distractor is not a single known token: "
                                  + "; ".join(cache.describe(t) for t in missing))
            elif not p.answers:
                problem = Problem("answer", "no answer given")
        if problem is None and i in ctx:
            want = clean_ids[i] + [cache.id(p.context_check)]
            if ctx[i] != want:
                problem = Problem("context", f"the answer {p.context_check!r} merges with the prompt "
                                             f"{p.clean!r} (tokenized together it is not prompt + one token)")
        if problem is not None:
            problems[i] = problem
            out.append(None)
            continue
        pos = len(prefix) + len(clean_ids[i]) - 1
        # No problem, so every answer and distractor is a known token (no None left).
        answer_known = [a for a in answer_ids if a is not None]
        distractor_known = [d for d in distractor_ids if d is not None]
        out.append(Encoded(prefix + clean_ids[i], prefix + corr_ids[i], [(pos, answer_known, distractor_known)]))
    return out, problems
