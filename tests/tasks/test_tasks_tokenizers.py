"""The vendored GPT-2 tokenizer and the word-level tokenizer the bundled models use."""

from circuits.tasks import default_gpt2_tokenizer, task_vocabulary, word_level_tokenizer
from circuits.tasks.tokenization import resolve_prepend_bos, single_token_id, split_words, tokenizer_adds_bos


def test_vendored_gpt2(gpt2_tok):
    assert len(gpt2_tok) == 50257 and default_gpt2_tokenizer() is gpt2_tok
    assert gpt2_tok("Hello world")["input_ids"] == [15496, 995]       # GPT-2's documented ids
    assert gpt2_tok(" Hello world")["input_ids"] == [18435, 995]
    assert gpt2_tok.eos_token_id == gpt2_tok.bos_token_id == 50256
    assert not tokenizer_adds_bos(gpt2_tok) and not resolve_prepend_bos(gpt2_tok, None)
    assert resolve_prepend_bos(gpt2_tok, True)


def test_word_level(word_tok):
    assert word_tok.convert_ids_to_tokens([0, 1, 2]) == ["[PAD]", "[UNK]", "[BOS]"]
    assert word_tok.pad_token_id == 0 and word_tok.unk_token_id == 1 and word_tok.bos_token_id == 2
    assert word_tok.tokenize("Then, Mary went to the year 1732.") == \
        ["Then", ",", "Mary", "went", "to", "the", "year", "17", "32", "."]
    ids = word_tok("Mary Zorblax")["input_ids"]
    assert ids[0] == 2 and ids[2] == 1                        # adds BOS; unknown word -> UNK
    assert tokenizer_adds_bos(word_tok) and resolve_prepend_bos(word_tok, None)
    assert single_token_id(word_tok, " Zorblax") is None and single_token_id(word_tok, " Mary") is not None
    assert split_words("it's 1999") == ["it", "'", "s", "19", "99"]
    vocab = task_vocabulary()
    assert len(vocab) == len(set(vocab)) and {"Mary", "store", "ring", "abduction", "00", "99", "lasted"} <= set(vocab)
    assert len(word_tok) == len(vocab) + 3


def test_word_level_roundtrip(tmp_path, word_tok):
    from transformers import AutoTokenizer

    word_tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "Then, Mary and John went to the store. John gave a ring to"
    assert again(text)["input_ids"] == word_tok(text)["input_ids"]


def test_word_level_without_bos():
    tok = word_level_tokenizer(["a", "b"], add_bos=False)
    assert tok("a b")["input_ids"] == [3, 4] and not tokenizer_adds_bos(tok)


class _SentencePieceLike:
    """Enough of a tokenizer to show the dummy-prefix case: ' Mary' alone is two pieces, after text one."""

    unk_token_id, unk_token = 0, "<unk>"
    table = {" Mary": [9, 5], "\n": [9, 7], "\n Mary": [9, 7, 5]}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": self.table[text]}


def test_single_token_after_dummy_prefix():
    assert single_token_id(_SentencePieceLike(), " Mary") == 5
