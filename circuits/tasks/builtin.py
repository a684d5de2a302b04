"""The built-in tasks: IOI and greater-than (template specs), induction (a token-level generator).

IOI and greater-than are ordinary :class:`TemplateSpec` objects made from the published lists in
:mod:`circuits.tasks.data`; ``tasks/ioi.toml`` and ``tasks/greater-than.toml`` declare the same specs as files
and build the same tensors for a seed (tested). Induction works on token ids, not text, so it is Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from circuits.tasks import data
from circuits.tasks.errors import TaskError
from circuits.tasks.templates import Rule, Slot, TemplateSpec
from circuits.tasks.tokenization import batch_encode, bos_id, vocab_ids

IOI_CORRUPTION_ALIASES = {
    "abc": "abc", "acdc": "abc", "rand": "abc",
    "s2": "s2", "s2_replaced": "s2", "s2-replaced": "s2", "eap-ig": "s2", "eap_ig": "s2",
    "swap": "swap", "io_s_swap": "swap", "io-s-swap": "swap", "s2_io_flip": "swap", "mib": "swap",
}


def ioi_spec() -> TemplateSpec:
    """Wang et al.'s IOI: 30 templates (15 BABA + 15 ABBA), 99 names, 8 places, 8 objects.

    Metric: logit(IO) - logit(S) at the final position. Corruptions (``corruption=``):

    - ``abc`` (default; ACDC, Wang et al.'s ABC distribution): IO, S and the second S mention all become
      three fresh names, distinct from each other and from the clean ones.
    - ``s2`` (EAP-IG): only the second S mention is replaced by a fresh name.
    - ``swap`` (MIB's IO/S flip): the second S mention becomes IO, so the corrupted prompt's answer is S.
    """
    names, places, objects = list(data.IOI_NAMES), list(data.IOI_PLACES), list(data.IOI_OBJECTS)
    slots = {
        "IO": Slot("IO", names, group="ioi_names"),
        "S": Slot("S", list(names), group="ioi_names"),
        "S2": Slot("S2", copy_of="S"),
        "PLACE": Slot("PLACE", places, group="ioi_places"),
        "OBJECT": Slot("OBJECT", objects, group="ioi_objects"),
    }
    resample = Rule("resample")
    corruptions = {
        "abc": {"IO": resample, "S": resample, "S2": resample},
        "s2": {"S2": resample},
        "swap": {"S2": Rule("copy", "IO")},
    }
    return TemplateSpec(
        name="ioi", templates=list(data.IOI_TEMPLATES), slots=slots, answer="IO", distractor="S",
        corruptions=corruptions, default_corruption="abc", metric="logit_diff",
        description="Indirect object identification (Wang et al. 2022): logit(IO) - logit(S) at the end",
    ).validate()


def greater_than_spec(centuries: Sequence[int | str] | None = None) -> TemplateSpec:
    """Hanna et al.'s greater-than: "The {noun} lasted from the year XXYY to the year XX", corrupted to XX01.

    YY is drawn from 02..98; a year is used only when " XXYY" tokenizes as [" XX", "YY"] (other draws are
    resampled, as the authors filter years). Metric: p(YY' > YY) - p(YY' <= YY) over the tokens "00".."99".
    ``centuries`` defaults to ACDC's 11..17 (Hanna et al. also use 10 and 18, where fewer years tokenize
    as required for GPT-2, and " 1001" does not split at all).
    """
    cents = [f"{int(c):02d}" for c in centuries] if centuries is not None else list(data.GREATER_THAN_CENTURIES)
    slots = {
        "NOUN": Slot("NOUN", list(data.GREATER_THAN_NOUNS), group="greater_than_nouns"),
        "XX": Slot("XX", cents, group="greater_than_centuries"),
        "YY": Slot("YY", list(data.GREATER_THAN_YY), group="greater_than_yy"),
    }
    return TemplateSpec(
        name="greater-than", templates=[data.GREATER_THAN_TEMPLATE], slots=slots, answer="YY", answer_set=">",
        candidates=list(data.TWO_DIGITS), corruptions={"01": {"YY": Rule("literal", "01")}},
        default_corruption="01", metric="prob_diff",
        description="Greater-than (Hanna et al. 2023): p(YY' > YY) - p(YY' <= YY) after 'to the year XX'",
    ).validate()


# ---- induction -----------------------------------------------------------------------------------------
INDUCTION_CORRUPTIONS = ("copy", "match")


def induction_pairs(tok, n: int, seed: int, *, prepend_bos: bool, seq_len: int = 40, min_period: int = 5,
                    max_period: int = 15, corpus: Any = None, token_ids: Sequence[int] | None = None,
                    corruption: str = "copy", replaced: int | None = None):
    """Repeated sequences ``prefix + A + A`` (clean), all length ``seq_len``, and a corrupted partner.

    The period P = len(A) varies per example in [min_period, max_period], so no fixed look-back distance solves
    it; the prefix fills the rest. Random tokens (default) are drawn without repetition from the tokenizer's
    vocabulary (``token_ids`` restricts them); with ``corpus`` (a text file, a string or a list of strings) the
    prefix and A are a contiguous window of natural text.

    ``corruption`` picks the counterfactual, hence which part of the mechanism the clean/corrupted difference
    runs through:

    * ``"copy"`` (default): ``prefix + B + A``, the whole first copy resampled (B: random tokens, or another
      window of the corpus). Read at every position of the second copy: at A[k] the answer is A[k + 1]
      (k = 0..P-2), the distractor B[k + 1], what the corrupted first occurrence would have induced. Every
      edge of the induction chain carries the difference (the induction head's values as well as its keys).
    * ``"match"``: ``prefix + A' + A``, where A' is the first copy with the one token A[j] replaced by a token
      absent from the sequence (j random in 0..P-2). Read once, at the second copy's A[j]: answer A[j + 1],
      distractor the replacing token. The attended token A[j + 1] is unchanged, only what precedes it differs,
      so the difference runs through the match (previous-token head -> induction head keys), not the values:
      the counterfactual that isolates K-composition. ``replaced`` fixes j (the same for every example; with
      ``min_period == max_period`` every pair is then read at one position: what position-aware circuits need
      to show the effect in one place).

    Returns (clean ids, corrupted ids, readouts, records).
    """
    if corruption not in INDUCTION_CORRUPTIONS:
        raise TaskError(f"task 'induction' has no corruption {corruption!r}; fix: use 'copy' (the first copy "
                        f"resampled) or 'match' (one token before an answer replaced: isolates the key match)")
    if not 1 <= min_period <= max_period or 2 * max_period > seq_len:
        raise TaskError(f"induction needs 1 <= min_period <= max_period and 2 * max_period <= seq_len; got "
                        f"min_period={min_period}, max_period={max_period}, seq_len={seq_len}")
    if min_period < 2:
        raise TaskError("induction needs min_period >= 2 (a period of 1 has nothing to read); fix: raise min_period")
    if replaced is not None and (corruption != "match" or not 0 <= int(replaced) <= min_period - 2):
        raise TaskError(f"induction replaced={replaced!r}: the index of the replaced token needs "
                        f"corruption='match' and 0 <= replaced <= min_period - 2 = {min_period - 2}; fix: drop it or "
                        "give an index inside the shortest period")
    g = torch.Generator().manual_seed(int(seed))
    periods = torch.randint(min_period, max_period + 1, (n,), generator=g).tolist()
    if corpus is not None:
        stream = _corpus_ids(tok, corpus)
        if len(stream) < seq_len + max_period + 1:
            raise TaskError(f"the induction corpus has {len(stream)} tokens; it needs at least "
                            f"{seq_len + max_period + 1}; fix: give a longer text")
    else:
        pool = torch.as_tensor(list(token_ids) if token_ids is not None else vocab_ids(tok), dtype=torch.long)
        if len(pool) < seq_len:
            raise TaskError(f"induction draws {seq_len} distinct tokens per example but the tokenizer offers "
                            f"{len(pool)}; fix: lower seq_len or give a larger vocabulary")
    prefix = [bos_id(tok)] if prepend_bos else []
    clean, corrupted, readouts, records = [], [], [], []
    for i in range(n):
        P = periods[i]
        s = seq_len - 2 * P  # start of the first copy
        if corpus is not None:
            start = int(torch.randint(0, len(stream) - (seq_len - P) + 1, (1,), generator=g))
            window = stream[start:start + seq_len - P]
            head, A = window[:s], window[s:]
            while True:
                b0 = int(torch.randint(0, len(stream) - P + 1, (1,), generator=g))
                B = stream[b0:b0 + P]
                if B != A:
                    break
        else:
            draw = pool[torch.randperm(len(pool), generator=g)[:seq_len]].tolist()  # distinct tokens
            head, A, B = draw[:s], draw[s:s + P], draw[s + P:s + 2 * P]
        clean_ids = prefix + head + A + A
        first = len(prefix) + s + P  # position of the second copy's first token
        record = {"period": P, "first_copy_start": len(prefix) + s}
        if corruption == "copy":
            corr_ids = prefix + head + B + A
            reads = [(first + k, [A[k + 1]], [B[k + 1]]) for k in range(P - 1)]
            record |= {"answer": tok.decode(A[1:]), "distractor": tok.decode(B[1:])}
        else:
            j = int(torch.randint(0, P - 1, (1,), generator=g))
            j = j if replaced is None else int(replaced)  # drawn either way: the rest of the pairs do not change
            seen = set(head) | set(A)
            x = next((t for t in B if t not in seen), None)  # a token absent from the clean sequence
            if x is None:  # a corpus window made only of tokens already in the sequence
                spare = sorted(set(stream) - seen)
                if not spare:
                    raise TaskError("the induction corpus has no token outside one example's sequence, so "
                                    "corruption='match' cannot replace one; fix: give a more varied text")
                x = spare[int(torch.randint(0, len(spare), (1,), generator=g))]
            corr_ids = prefix + head + A[:j] + [x] + A[j + 1:] + A
            reads = [(first + j, [A[j + 1]], [x])]
            record |= {"answer": tok.decode([A[j + 1]]), "distractor": tok.decode([x]), "replaced": j}
        clean.append(clean_ids)
        corrupted.append(corr_ids)
        readouts.append(reads)
        records.append({"clean": tok.decode(clean_ids), "corrupted": tok.decode(corr_ids), **record})
    return clean, corrupted, readouts, records


def _corpus_ids(tok, corpus: Any) -> list[int]:
    if isinstance(corpus, Path) or (isinstance(corpus, str) and "\n" not in corpus and len(corpus) < 4096
                                    and Path(corpus).is_file()):
        corpus = Path(corpus).read_text(encoding="utf-8")
    texts = [corpus] if isinstance(corpus, str) else list(corpus)
    ids, _ = batch_encode(tok, texts)
    sep = [tok.eos_token_id] if getattr(tok, "eos_token_id", None) is not None else []
    out: list[int] = []
    for chunk in ids:
        out += chunk + sep
    return out
