"""IOI, greater-than and induction on the real GPT-2 tokenizer and on the bundled models' word-level tokenizer."""

import pytest
import torch

import circuits
from circuits.tasks import TaskError, TokenizationError, data, load_task, task_vocabulary, word_level_tokenizer

FIELDS = ("clean", "corrupted", "attention_mask", "positions", "position_mask", "answers", "answer_mask",
          "distractors", "distractor_mask")


def _same(a, b):
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


def _real(task, i):
    real = task.attention_mask[i].bool()
    return task.clean[i][real].tolist(), task.corrupted[i][real].tolist()


# ---- published word lists with the real GPT-2 vocabulary -------------------------------------------------
@pytest.mark.parametrize("words", [data.IOI_NAMES, data.IOI_PLACES, data.IOI_OBJECTS, data.GREATER_THAN_NOUNS])
def test_every_published_word_is_one_gpt2_token(gpt2_tok, words):
    multi = [w for w in words if len(gpt2_tok(" " + w, add_special_tokens=False)["input_ids"]) != 1]
    assert multi == []


def test_published_list_sizes():
    assert len(data.IOI_BABA_TEMPLATES) == 15 and len(data.IOI_TEMPLATES) == 30
    assert len(data.IOI_NAMES) == len(set(data.IOI_NAMES)) == 99
    assert len(data.IOI_PLACES) == 8 and len(data.IOI_OBJECTS) == 8
    assert len(data.GREATER_THAN_NOUNS) == 120
    # ABBA: the first clause names IO first; BABA: S first
    assert data.IOI_BABA_TEMPLATES[0].startswith("Then, {S} and {IO}")
    assert data.IOI_ABBA_TEMPLATES[0].startswith("Then, {IO} and {S}")
    assert all(t.endswith("{IO}") and "{S2}" in t for t in data.IOI_TEMPLATES)


# ---- IOI -----------------------------------------------------------------------------------------------
def test_ioi_shapes_lengths_and_readout(any_tok):
    task = load_task("ioi", any_tok, n=40, seed=0)
    assert task.clean.shape == task.corrupted.shape == task.attention_mask.shape
    assert task.clean.dtype == torch.long and len(task) == 40
    assert task.positions.shape == (40, 1) and task.answers.shape == (40, 1, 1)
    lengths = task.attention_mask.sum(1)
    assert torch.equal(task.positions[:, 0], lengths - 1)  # read at the last real token
    # padding is on the right, same in both runs
    for i in range(len(task)):
        L = int(lengths[i])
        assert task.attention_mask[i, :L].all() and not task.attention_mask[i, L:].any()
        assert torch.equal(task.clean[i, L:], task.corrupted[i, L:])
    # the answer is the token that follows the prompt: re-tokenize prompt + answer and compare
    frame = task.to_frame()
    for i in range(5):
        full = any_tok(frame.clean[i] + frame.answer[i], add_special_tokens=False)["input_ids"]
        clean, _ = _real(task, i)
        start = 1 if task.prepend_bos else 0
        assert full == clean[start:] + [int(task.answers[i, 0, 0])]
        assert int(task.distractors[i, 0, 0]) == any_tok(frame.distractor[i], add_special_tokens=False)["input_ids"][0]
        assert frame.answer[i] == " " + frame.IO[i] and frame.distractor[i] == " " + frame.S[i]


def test_ioi_corruptions(gpt2_tok):
    tok = gpt2_tok
    base = load_task("ioi", tok, n=30, seed=1, corruption="abc")
    s2 = load_task("ioi", tok, n=30, seed=1, corruption="s2")
    swap = load_task("ioi", tok, n=30, seed=1, corruption="mib")  # alias of swap
    assert torch.equal(base.clean, s2.clean) and torch.equal(base.clean, swap.clean)  # clean is independent
    name_id = lambda name: tok(" " + name, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    for i in range(30):
        rec = base.records[i]
        io, s = name_id(rec["IO"]), name_id(rec["S"])
        clean, abc = _real(base, i)
        diff = [j for j, (a, b) in enumerate(zip(clean, abc)) if a != b]
        assert len(diff) == 3  # IO, S1 and S2 positions, all replaced
        new = {abc[j] for j in diff}
        assert len(new) == 3 and not new & {io, s}
        _, c_s2 = _real(s2, i)
        diff = [j for j, (a, b) in enumerate(zip(clean, c_s2)) if a != b]
        assert len(diff) == 1 and clean[diff[0]] == s and c_s2[diff[0]] not in (io, s)
        assert diff[0] == max(j for j, t in enumerate(clean) if t == s)  # the second S mention
        _, c_sw = _real(swap, i)
        diff = [j for j, (a, b) in enumerate(zip(clean, c_sw)) if a != b]
        assert len(diff) == 1 and clean[diff[0]] == s and c_sw[diff[0]] == io
        assert clean.count(io) == 1 and clean.count(s) == 2 and c_sw.count(io) == 2
    assert {r["template"] for r in base.records} > set(range(15)) & {r["template"] for r in base.records}
    assert any(r["template"] < 15 for r in base.records) and any(r["template"] >= 15 for r in base.records)


def test_ioi_is_deterministic_and_seeded(any_tok):
    a, b = load_task("ioi", any_tok, n=20, seed=5), load_task("ioi", any_tok, n=20, seed=5)
    c = load_task("ioi", any_tok, n=20, seed=6)
    assert _same(a, b) and not torch.equal(a.clean[:, :10], c.clean[:, :10])


def test_bos_handling(gpt2_tok, word_tok):
    plain = load_task("ioi", gpt2_tok, n=10, seed=2)
    bos = load_task("ioi", gpt2_tok, n=10, seed=2, prepend_bos=True)
    assert not plain.prepend_bos and bos.prepend_bos  # GPT-2's tokenizer adds no BOS by default
    assert (bos.clean[:, 0] == gpt2_tok.bos_token_id).all() and (bos.corrupted[:, 0] == gpt2_tok.bos_token_id).all()
    assert torch.equal(bos.positions, plain.positions + 1) and torch.equal(bos.answers, plain.answers)
    assert torch.equal(bos.clean[:, 1:], plain.clean)
    w = load_task("ioi", word_tok, n=10, seed=2)  # the word-level tokenizer adds BOS itself: followed
    assert w.prepend_bos and (w.clean[:, 0] == word_tok.bos_token_id).all()
    w0 = load_task("ioi", word_tok, n=10, seed=2, prepend_bos=False)
    assert torch.equal(w0.positions, w.positions - 1)


def test_toml_files_match_builtins(any_tok):
    for name, path, kw in (("ioi", "tasks/ioi.toml", {"corruption": "s2"}), ("ioi", "tasks/ioi.toml", {}),
                           ("greater-than", "tasks/greater-than.toml", {}),
                           ("induction", "tasks/induction.toml", {})):
        a = load_task(name, any_tok, n=25, seed=4, **kw)
        b = load_task(path, any_tok, n=25, seed=4, **kw)
        assert _same(a, b), path
        assert a.metric.name == b.metric.name


def test_missing_names_error_lists_them():
    vocab = [w for w in task_vocabulary() if w not in ("Kristen", "Jose", "Katie")]
    tok = word_level_tokenizer(vocab)
    with pytest.raises(TokenizationError) as err:
        load_task("ioi", tok, n=5)
    for word in ("Kristen", "Jose", "Katie"):
        assert word in str(err.value)
    assert set(err.value.words) and "not in the tokenizer's vocabulary" in str(err.value)
    task = load_task("ioi", tok, n=20, drop_invalid_words=True)  # the documented way out
    assert task.options["dropped_words"]["IO"] == ["Jose", "Katie", "Kristen"]
    assert not {"Kristen", "Jose", "Katie"} & {r["IO"] for r in task.records}


# ---- greater-than ----------------------------------------------------------------------------------------
def test_greater_than_years_split_as_required(gpt2_tok):
    task = load_task("greater-than", gpt2_tok, n=60, seed=0)
    frame = task.to_frame()
    two = [gpt2_tok(f"{i:02d}", add_special_tokens=False)["input_ids"] for i in range(100)]
    assert all(len(t) == 1 for t in two)
    two = [t[0] for t in two]
    for i in range(len(task)):
        xx, yy = frame.XX[i], frame.YY[i]
        assert 11 <= int(xx) <= 17 and 2 <= int(yy) <= 98
        year = gpt2_tok(f" {xx}{yy}", add_special_tokens=False)["input_ids"]
        assert gpt2_tok.convert_ids_to_tokens(year) == [f"\u0120{xx}", yy]  # [" XX", "YY"]
        clean, corrupted = _real(task, i)
        assert clean[-1] == year[0]                         # the prompt ends with " XX"
        pos = clean.index(year[1])
        assert clean[pos - 1] == year[0] and corrupted[pos] == two[1]  # corrupted to XX01
        assert [j for j, (a, b) in enumerate(zip(clean, corrupted)) if a != b] == [pos]
        answers = task.answers[i, 0][task.answer_mask[i, 0]].tolist()
        distractors = task.distractors[i, 0][task.distractor_mask[i, 0]].tolist()
        assert answers == two[int(yy) + 1:] and distractors == two[:int(yy) + 1]
    assert task.metric.name == "prob_diff"


def test_greater_than_word_level(word_tok):
    task = load_task("greater-than", word_tok, n=20, seed=0)
    frame = task.to_frame()
    for i in range(len(task)):
        clean, _ = _real(task, i)
        tokens = word_tok.convert_ids_to_tokens(clean)
        assert tokens[0] == "[BOS]" and tokens[-1] == frame.XX[i]
        assert tokens[-6:-4] == [frame.XX[i], frame.YY[i]]   # "1732" -> "17", "32"
    assert word_tok.tokenize("1732") == ["17", "32"]


def test_greater_than_centuries_option(gpt2_tok):
    task = load_task("greater-than", gpt2_tok, n=30, seed=0, centuries=[12, 13])
    assert set(task.to_frame().XX) <= {"12", "13"}


# ---- induction -------------------------------------------------------------------------------------------
def test_induction_structure(any_tok):
    task = load_task("induction", any_tok, n=30, seed=0, seq_len=30, min_period=4, max_period=12)
    bos = 1 if task.prepend_bos else 0
    assert task.clean.shape == (30, 30 + bos) and task.attention_mask.all()
    periods = [r["period"] for r in task.records]
    assert len(set(periods)) > 3 and min(periods) >= 4 and max(periods) <= 12
    for i, P in enumerate(periods):
        clean, corr = task.clean[i], task.corrupted[i]
        s = task.records[i]["first_copy_start"]
        assert torch.equal(clean[s:s + P], clean[s + P:s + 2 * P])              # A A
        assert torch.equal(corr[s + P:], clean[s + P:]) and torch.equal(corr[:s], clean[:s])
        assert not (corr[s:s + P] == clean[s:s + P]).any()                     # first copy resampled
        n_read = int(task.position_mask[i].sum())
        assert n_read == P - 1
        pos = task.positions[i, :n_read]
        assert torch.equal(pos, torch.arange(s + P, s + 2 * P - 1))            # second copy
        assert torch.equal(task.answers[i, :n_read, 0], clean[pos + 1])        # next token
        assert torch.equal(task.distractors[i, :n_read, 0], corr[pos - P + 1])  # what B would induce
    specials = set(any_tok.all_special_ids)
    assert not specials & set(task.clean[:, bos:].flatten().tolist())


def test_induction_match_corruption(any_tok):
    """corruption='match': one first-copy token before an answer replaced by a token absent from the sequence;
    the single read is the second copy's occurrence of it (its next token, unchanged, is the answer)."""
    task = load_task("induction", any_tok, n=30, seed=0, seq_len=30, min_period=4, max_period=12,
                     corruption="match")
    for i, rec in enumerate(task.records):
        s, P, j = rec["first_copy_start"], rec["period"], rec["replaced"]
        clean, corr = task.clean[i], task.corrupted[i]
        assert 0 <= j <= P - 2
        differ = (clean != corr).nonzero().flatten().tolist()
        assert differ == [s + j]                                               # one token replaced
        assert int(corr[s + j]) not in set(clean.tolist())                     # by one the sequence lacks
        assert int(task.position_mask[i].sum()) == 1
        pos = int(task.positions[i, 0])
        assert pos == s + P + j and int(task.answers[i, 0, 0]) == int(clean[s + j + 1])
        assert int(task.distractors[i, 0, 0]) == int(corr[s + j])
    with pytest.raises(TaskError, match="no corruption 'shuffle'.*'copy'.*'match'"):
        load_task("induction", any_tok, n=3, corruption="shuffle")


def test_induction_natural_text(gpt2_tok):
    corpus = " ".join(f"The {n} of the {p} was known to every {o}." for n, p, o in
                      zip(data.GREATER_THAN_NOUNS, data.IOI_PLACES * 15, data.IOI_OBJECTS * 15))
    task = load_task("induction", gpt2_tok, n=10, seed=0, corpus=corpus)
    for i, rec in enumerate(task.records):
        s, P = rec["first_copy_start"], rec["period"]
        assert torch.equal(task.clean[i, s:s + P], task.clean[i, s + P:s + 2 * P])


def test_metric_on_a_perfect_model(any_tok):
    """A fake model that puts all mass on the right answers scores well; the corrupted-style one poorly."""
    for name in ("ioi", "greater-than", "induction"):
        task = load_task(name, any_tok, n=8, seed=0)
        V = len(any_tok)
        good = torch.zeros(len(task), task.clean.shape[1], V)
        bad = torch.zeros_like(good)
        batch = task.as_batch()
        idx = torch.arange(len(task))[:, None, None].expand_as(batch.answers)
        pos = batch.positions[:, :, None].expand_as(batch.answers)
        good[idx[batch.answer_mask], pos[batch.answer_mask], batch.answers[batch.answer_mask]] = 10.0
        idx = torch.arange(len(task))[:, None, None].expand_as(batch.distractors)
        pos = batch.positions[:, :, None].expand_as(batch.distractors)
        bad[idx[batch.distractor_mask], pos[batch.distractor_mask], batch.distractors[batch.distractor_mask]] = 10.0
        assert (task.metric(good) > task.metric(bad)).all(), name
        if name == "ioi":
            assert torch.allclose(task.metric(good), torch.full((8,), 10.0))


def test_circuits_namespace_exports():
    assert circuits.load_task is load_task and circuits.Task is circuits.tasks.Task
