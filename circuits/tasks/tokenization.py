"""Tokenizers the tasks are built for, and the small amount of tokenizer policy the tasks need.

Two tokenizers matter: GPT-2's byte-level BPE (vendored in ``circuits/assets/gpt2-tokenizer`` so tests run
offline) and the word-level tokenizers of the bundled models, built with :func:`word_level_tokenizer` from
:func:`circuits.tasks.task_vocabulary`. Task code never calls a tokenizer with special tokens on: BOS is an
explicit decision (:func:`resolve_prepend_bos`), so positions are computed once and stay right either way.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any, Iterable, Sequence

from circuits.tasks.errors import TaskError

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "gpt2-tokenizer"

# The word-level tokenizer's special tokens (ids 0, 1, 2 in this order).
PAD, UNK, BOS = "[PAD]", "[UNK]", "[BOS]"


@functools.lru_cache(maxsize=1)
def default_gpt2_tokenizer():
    """GPT-2's tokenizer from the vendored vocabulary files (no network).

    Cached: the same object is returned on every call, so do not mutate it (e.g. set a pad token) in place.
    transformers >= 5 renamed the constructor's ``vocab_file``/``merges_file`` to ``vocab``/``merges`` and
    silently ignores the old names, so pick the keywords from the signature and check the size.
    """
    # transformers >= 5 exports this name lazily (an alias of GPT2Tokenizer), out of its type stubs' sight.
    from transformers import GPT2TokenizerFast  # type: ignore[attr-defined, unused-ignore]

    vocab, merges = str(ASSETS / "encoder.json"), str(ASSETS / "vocab.bpe")
    params = inspect.signature(GPT2TokenizerFast.__init__).parameters
    if "vocab" in params and "vocab_file" not in params:  # transformers >= 5
        tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    else:
        tok = GPT2TokenizerFast(vocab_file=vocab, merges_file=merges)
    if len(tok) != 50257:
        raise TaskError(f"the vendored GPT-2 tokenizer loaded {len(tok)} tokens instead of 50,257 "
                        f"(from {ASSETS}); fix: reinstall circuits or check the transformers version")
    return tok


def _word_pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    # Whitespace, then every punctuation character on its own, then digit runs cut into pairs so that
    # " 1732" -> "17", "32" (the greater-than task reads the century and the two-digit year separately).
    return pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Punctuation("isolated"),
        pre_tokenizers.Split(Regex(r"\d\d"), "isolated"),
    ])


def split_words(text: str) -> list[str]:
    """Split text the way :func:`word_level_tokenizer` does (words, single punctuation marks, digit pairs)."""
    return [piece for piece, _ in _word_pre_tokenizer().pre_tokenize_str(text)]


def word_level_tokenizer(words: Iterable[str], *, unk_token: str = UNK, pad_token: str = PAD,
                         bos_token: str = BOS, add_bos: bool = True, model_max_length: int = 1024):
    """A word-level ``PreTrainedTokenizerFast`` over ``words`` (the bundled models' tokenizer).

    Splits on whitespace, isolates punctuation, and cuts digit runs into two-digit tokens (" 1732" ->
    ["17", "32"]). Ids: pad 0, unk 1, bos 2, then the words in first-seen order (each word is itself split,
    so "Then," adds "Then" and ","). It prepends BOS by default (``add_bos``), which the tasks follow.
    Case-sensitive; anything else maps to ``unk_token``.
    """
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {pad_token: 0, unk_token: 1, bos_token: 2}
    for word in words:
        for piece in split_words(word):
            vocab.setdefault(piece, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token=unk_token))
    tk.pre_tokenizer = _word_pre_tokenizer()
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A $B", special_tokens=[(bos_token, vocab[bos_token])])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token=unk_token, pad_token=pad_token,
                                  bos_token=bos_token, model_max_length=model_max_length)
    return tok


def get_tokenizer(model_or_tokenizer: Any):
    """The tokenizer behind ``model_or_tokenizer``: a HF tokenizer, anything with ``.tokenizer`` (e.g.
    ``CircuitModel``), or the strings ``"gpt2"`` (vendored GPT-2) / ``"word-level"`` (the built-in tasks'
    vocabulary)."""
    if isinstance(model_or_tokenizer, str):
        key = model_or_tokenizer.lower()
        if key in ("gpt2", "gpt-2"):
            return default_gpt2_tokenizer()
        if key in ("word-level", "word_level", "wordlevel"):
            from circuits.tasks.vocabulary import task_vocabulary
            return word_level_tokenizer(task_vocabulary())
        raise TaskError(f"unknown tokenizer name {model_or_tokenizer!r}; fix: pass a tokenizer, a model with "
                        f"a .tokenizer, 'gpt2' or 'word-level'")
    tok = getattr(model_or_tokenizer, "tokenizer", None)
    if tok is not None and callable(tok):
        return tok
    if callable(model_or_tokenizer) and hasattr(model_or_tokenizer, "convert_ids_to_tokens"):
        return model_or_tokenizer
    raise TaskError(f"cannot find a tokenizer in {type(model_or_tokenizer).__name__}; fix: pass a Hugging Face "
                    f"tokenizer or an object with a .tokenizer attribute (e.g. circuits.CircuitModel)")


def tokenizer_adds_bos(tok) -> bool:
    """Whether the tokenizer itself prepends its BOS token (Llama-style) when called with special tokens."""
    bos = getattr(tok, "bos_token_id", None)
    if bos is None:
        return False
    with_special = tok("a", add_special_tokens=True)["input_ids"]
    without = tok("a", add_special_tokens=False)["input_ids"]
    return len(with_special) > len(without) and with_special[0] == bos


def resolve_prepend_bos(tok, prepend_bos: bool | None, model: Any = None) -> bool:
    """Explicit value wins; then a model's own ``prepend_bos`` preference; then the tokenizer's behaviour."""
    if prepend_bos is not None:
        return bool(prepend_bos)
    pref = getattr(model, "prepend_bos", None) if model is not None else None
    if isinstance(pref, bool):
        return pref
    return tokenizer_adds_bos(tok)


def bos_id(tok) -> int:
    """The id prepended when ``prepend_bos`` is on: BOS, else EOS (GPT-2's <|endoftext|> plays both roles)."""
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tok, attr, None)
        if value is not None:
            return int(value)
    raise TaskError(f"prepend_bos=True but {type(tok).__name__} has neither a BOS nor an EOS token; "
                    f"fix: pass prepend_bos=False")


def pad_id(tok) -> int:
    """Right-padding id: the pad token, else EOS, else 0 (padding is masked, so the value only must be valid)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tok, attr, None)
        if value is not None:
            return int(value)
    return 0


def unk_id(tok) -> int | None:
    return getattr(tok, "unk_token_id", None)


def single_token_id(tok, text: str) -> int | None:
    """The id of ``text`` when it is exactly one known token (not UNK) for ``tok``, else None."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 and text[:1].isspace():
        # SentencePiece-style tokenizers (Metaspace with a dummy prefix) turn a leading space at the start of
        # the text into an extra piece; after other text the same word is one token. Measure it there.
        base = tok("\n", add_special_tokens=False)["input_ids"]
        full = tok("\n" + text, add_special_tokens=False)["input_ids"]
        if full[:len(base)] == base:
            ids = full[len(base):]
    if len(ids) != 1:
        return None
    unk = unk_id(tok)
    # GPT-2 uses <|endoftext|> as its "unk"; only treat UNK as a failure when the text is not that token.
    if unk is not None and ids[0] == unk and text.strip() != getattr(tok, "unk_token", None):
        return None
    return int(ids[0])


def describe_tokens(tok, text: str) -> str:
    """Readable tokenization for error messages: ' Kristen' -> [' K', 'risten'], or 'not in vocabulary'."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    unk, unk_token = unk_id(tok), getattr(tok, "unk_token", None)
    if unk is not None and unk in ids and (unk_token is None or unk_token not in text):
        return f"{text!r} (not in the tokenizer's vocabulary)"
    pieces = [tok.decode([i]) for i in ids]
    return f"{text!r} -> {pieces}"


def special_ids(tok) -> set[int]:
    return {int(i) for i in getattr(tok, "all_special_ids", []) or []}


def vocab_ids(tok) -> list[int]:
    """All ids of the tokenizer's vocabulary except special tokens, sorted (induction samples from these)."""
    specials = special_ids(tok)
    return sorted({int(i) for i in tok.get_vocab().values()} - specials)


def batch_encode(tok, texts: Sequence[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """Token ids and character offsets of each text, no special tokens."""
    if not texts:
        return [], []
    enc = tok(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    return [list(x) for x in enc["input_ids"]], [[tuple(o) for o in x] for x in enc["offset_mapping"]]
