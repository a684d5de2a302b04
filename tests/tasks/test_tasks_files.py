"""Task files: TOML templates and JSONL/CSV pairs load as tasks; every malformed file names file, line/key, fix."""

import json
import textwrap

import pytest
import torch

from circuits.tasks import TaskError, TaskFileError, TokenizationError, load_task

CAPITALS = """
name = "capitals"
description = "country -> capital"
templates = ["The capital of {COUNTRY} is {CAPITAL}", "{COUNTRY}'s capital city is {CAPITAL}"]
answer = "CAPITAL"
distractor = "corrupted"
corrupt = ["COUNTRY"]

[joint.capitals]
slots = ["COUNTRY", "CAPITAL"]
values = [["France", "Paris"], ["Italy", "Rome"], ["Japan", "Tokyo"], ["Germany", "Berlin"], ["Spain", "Madrid"]]
"""

MINI_IOI = """
name = "mini-ioi"
metric = "logit_diff"
templates = ["Then, {S} and {IO} went to the {PLACE}. {S2} gave a drink to {IO}"]
answer = "IO"
distractor = "S"
corrupt = ["S2"]

[slots]
IO = "names"
S = "names"
S2 = "=S"
PLACE = ["store", "garden", "school"]

[vocab]
names = ["Mary", "John", "Anna", "Paul", "James"]
"""


def write(tmp_path, text, name="task.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def test_readme_example_under_ten_lines(tmp_path, gpt2_tok):
    path = write(tmp_path, """
        templates = ["When {A} met {B} at the {PLACE}, {B2} said hello to {A}"]
        answer = "A"          # the slot every template ends with: logit(A) - logit(B) is read there
        distractor = "B"
        corrupt = ["B2"]      # the corrupted prompt replaces the second mention of B
        [slots]
        A = "ioi_names"       # A and B draw from the same list, so they differ
        B = "ioi_names"
        B2 = "=B"
        PLACE = ["park", "office", "station"]
        """, "greeting.toml")
    task = load_task(path, gpt2_tok, n=20, seed=0)
    assert task.name == "greeting" and task.metric.name == "logit_diff" and len(task) == 20
    rec = task.records[0]
    assert task.to_frame().clean[0] == f"When {rec['A']} met {rec['B']} at the {rec['PLACE']}, " \
                                       f"{rec['B2']} said hello to"


def test_template_task_features(tmp_path, any_tok, word_tok):
    path = write(tmp_path, MINI_IOI)
    if any_tok is word_tok:
        from circuits.tasks import task_vocabulary, word_level_tokenizer
        any_tok = word_level_tokenizer(task_vocabulary() + ["Anna", "Paul"])
    task = load_task(path, any_tok, n=12, seed=0)
    for rec in task.records:
        assert rec["IO"] != rec["S"] and rec["S2"] == rec["S"]
        assert rec["corrupted_slots"].keys() == {"S2"} and rec["corrupted_slots"]["S2"] not in (rec["IO"], rec["S"])
        assert rec["clean"].endswith("gave a drink to") and rec["answer"] == " " + rec["IO"]


def test_joint_slots_and_corrupted_distractor(tmp_path, gpt2_tok):
    task = load_task(write(tmp_path, CAPITALS), gpt2_tok, n=15, seed=0)
    pairs = {"France": "Paris", "Italy": "Rome", "Japan": "Tokyo", "Germany": "Berlin", "Spain": "Madrid"}
    for rec in task.records:
        assert pairs[rec["COUNTRY"]] == rec["CAPITAL"]
        new = rec["corrupted_slots"]["COUNTRY"]
        assert new != rec["COUNTRY"] and rec["distractor"] == " " + pairs[new]
    assert task.clean.shape[1] == 5 and {r["template"] for r in task.records} == {0, 1}


def test_answer_set_template(tmp_path, gpt2_tok):
    path = write(tmp_path, """
        templates = ["In {NAME}'s class, the grades went up from {G} to {G2}"]
        answer = "G2"
        answer_set = ">"
        candidates = { from = 1, to = 9 }
        corrupt = { G = "1" }
        [slots]
        NAME = ["Mary", "John"]
        G = { from = 2, to = 8 }
        G2 = "=G"
        """)
    task = load_task(path, gpt2_tok, n=10, seed=0)
    assert task.metric.name == "prob_diff"
    for i, rec in enumerate(task.records):
        g = int(rec["G"])
        assert int(task.answer_mask[i].sum()) == 9 - g and int(task.distractor_mask[i].sum()) == g


def test_word_level_builds_from_task_files(tmp_path):
    from circuits.tasks import task_vocabulary, word_level_tokenizer

    path = write(tmp_path, CAPITALS)
    tok = word_level_tokenizer(task_vocabulary([path]))
    task = load_task(path, tok, n=5)
    assert (task.clean[:, 0] == tok.bos_token_id).all()
    assert "Paris" in tok.get_vocab() and task_vocabulary()[:5] == task_vocabulary([path])[:5]


# ---- malformed TOML --------------------------------------------------------------------------------------
def _error(tmp_path, tok, text, exc=TaskFileError, **kw):
    path = write(tmp_path, text, "bad.toml")
    with pytest.raises(exc) as err:
        load_task(path, tok, n=5, **kw)
    message = str(err.value)
    assert "bad.toml" in message and "fix:" in message
    return err.value, message


def test_missing_slot(tmp_path, gpt2_tok):
    err, msg = _error(tmp_path, gpt2_tok, MINI_IOI.replace('PLACE = ["store", "garden", "school"]\n', ""))
    assert "{PLACE}" in msg and "not declared" in msg and err.key == "templates[0]" and err.line == 3
    assert "bad.toml:3" in msg


def test_unknown_metric(tmp_path, gpt2_tok):
    err, msg = _error(tmp_path, gpt2_tok, MINI_IOI.replace('"logit_diff"', '"accuracy"'))
    assert "accuracy" in msg and "logit_diff, prob_diff, logprob, kl" in msg and err.line == 2
    assert err.key == "metric"


def test_answer_not_a_slot(tmp_path, gpt2_tok):
    err, msg = _error(tmp_path, gpt2_tok, MINI_IOI.replace('answer = "IO"', 'answer = "ANSWER"'))
    assert "ANSWER" in msg and err.key == "answer" and err.line == 4


def test_answer_not_in_tokenizer_vocabulary(tmp_path, gpt2_tok, word_tok):
    # names the word-level vocabulary lacks: listed, with the file
    err, msg = _error(tmp_path, word_tok, MINI_IOI, exc=TokenizationError)
    assert "Anna" in msg and "slots IO, S" in msg and "not in the tokenizer's vocabulary" in msg
    assert len(err.words) == 1 and "Mary" not in msg
    # multi-token names with GPT-2
    err, msg = _error(tmp_path, gpt2_tok, MINI_IOI.replace('"Anna"', '"Xylophonia"'), exc=TokenizationError)
    assert "Xylophonia" in msg and "drop_invalid_words" in msg


def test_template_must_end_with_answer(tmp_path, gpt2_tok):
    err, msg = _error(tmp_path, gpt2_tok, MINI_IOI.replace("gave a drink to {IO}", "gave {IO} a drink"))
    assert "does not end with the answer slot" in msg and err.key == "templates[0]"


def test_unequal_lengths(tmp_path, gpt2_tok):
    text = MINI_IOI.replace('corrupt = ["S2"]', 'corrupt = { PLACE = "train station" }')
    text += 'multi_token = ["PLACE"]\n'.replace("multi_token", "") if False else ""
    text = text.replace('[slots]', 'multi_token = ["PLACE"]\n\n[slots]')
    err, msg = _error(tmp_path, gpt2_tok, text)
    assert "different lengths" in msg and err.key == "corrupt" and err.line == 6
    # without multi_token the two-token literal is caught before sampling, naming the corruption
    text = MINI_IOI.replace('corrupt = ["S2"]', 'corrupt = { PLACE = "train station" }')
    err, msg = _error(tmp_path, gpt2_tok, text, exc=TokenizationError)
    assert "train station" in msg and "corruptions.default.PLACE" in msg


def test_other_malformed_files(tmp_path, gpt2_tok):
    _, msg = _error(tmp_path, gpt2_tok, MINI_IOI.replace("templates", "templats", 1))
    assert "unknown key 'templats'" in msg and "did you mean 'templates'" in msg
    err, msg = _error(tmp_path, gpt2_tok, MINI_IOI.replace('corrupt = ["S2"]', 'corrupt = ["S3"]'))
    assert "S3" in msg and err.key == "corrupt"
    _, msg = _error(tmp_path, gpt2_tok, MINI_IOI.replace('IO = "names"', 'IO = "nmes"'))
    assert "unknown word list 'nmes'" in msg and "ioi_names" in msg
    err, msg = _error(tmp_path, gpt2_tok, MINI_IOI.replace('corrupt = ["S2"]\n', 'corrupt = ["S2"\n'))
    assert "not valid TOML" in msg and err.line is not None
    _, msg = _error(tmp_path, gpt2_tok, MINI_IOI.replace('distractor = "S"\n', "").replace(
        'metric = "logit_diff"', 'metric = "prob_diff"'))
    assert "no distractor" in msg
    _, msg = _error(tmp_path, gpt2_tok, MINI_IOI.replace('"Paul", "James"', '"Paul", "Mary"'))
    assert "repeated words ['Mary']" in msg
    _, msg = _error(tmp_path, gpt2_tok, MINI_IOI.replace('names = ["Mary", "John", "Anna", "Paul", "James"]',
                                                         'names = ["Mary", "John"]'))
    assert "need 3 distinct values" in msg
    with pytest.raises(TaskError, match="no corruption 'xyz'"):
        load_task(write(tmp_path, MINI_IOI), gpt2_tok, n=2, corruption="xyz")
    with pytest.raises(TaskError, match="unknown option"):
        load_task(write(tmp_path, MINI_IOI), gpt2_tok, n=2, colour="red")


# ---- pairs files -----------------------------------------------------------------------------------------
PAIRS = [
    {"clean": "When Mary and John went to the store, John gave a drink to",
     "corrupted": "When Mary and John went to the store, Paul gave a drink to",
     "answer": " Mary", "distractor": " John"},
    {"clean": "When Anna and Paul went to the park, Paul gave a book to",
     "corrupted": "When Anna and Paul went to the park, Mary gave a book to",
     "answer": " Anna", "distractor": " Paul"},
    {"clean": "The war lasted from the year 1732 to the year 17",
     "corrupted": "The war lasted from the year 1701 to the year 17", "answer": "33", "distractor": "31"},
]


def test_jsonl_and_csv_pairs(tmp_path, gpt2_tok):
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(p) for p in PAIRS) + "\n", encoding="utf-8")
    task = load_task(jsonl, gpt2_tok, n=None)
    assert len(task) == 3 and task.metric.name == "logit_diff" and task.name == "pairs"
    assert int(task.answers[0, 0, 0]) == gpt2_tok(" Mary", add_special_tokens=False)["input_ids"][0]
    assert torch.equal(task.positions[:, 0], task.attention_mask.sum(1) - 1)
    csv_path = tmp_path / "pairs.csv"
    lines = ["clean,corrupted,answer,distractor"] + [
        ",".join(json.dumps(p[k]) for k in ("clean", "corrupted", "answer", "distractor")) for p in PAIRS]
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    task_csv = load_task(csv_path, gpt2_tok, n=None)
    assert torch.equal(task.clean, task_csv.clean) and torch.equal(task.answers, task_csv.answers)
    sub = load_task(jsonl, gpt2_tok, n=2, seed=1)
    assert len(sub) == 2
    # EAP-IG style token ids and answer sets
    ids = tmp_path / "ids.csv"
    mary, john = (gpt2_tok(w, add_special_tokens=False)["input_ids"][0] for w in (" Mary", " John"))
    ids.write_text(f'clean,corrupted,correct_idx,incorrect_idx\n"{PAIRS[0]["clean"]}","{PAIRS[0]["corrupted"]}",'
                   f'{mary},"[{john}, {mary + 1}]"\n', encoding="utf-8")
    t = load_task(ids, gpt2_tok, n=None)
    assert t.answers[0, 0, 0] == mary and t.distractors[0, 0].tolist() == [john, mary + 1]


def test_mib_records(tmp_path, word_tok):
    row = {"prompt": "Then, Mary and John went to the store. John gave a ring to", "choices": ["Mary", "John"],
           "answerKey": 0, "s2_io_flip_counterfactual": {
               "prompt": "Then, Mary and John went to the store. Mary gave a ring to", "choices": ["Mary", "John"],
               "answerKey": 1}}
    path = tmp_path / "mib.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    task = load_task(path, word_tok, n=None)
    assert task.records[0]["answer"] == " Mary" and task.prepend_bos
    ids = [int(task.answers[0, 0, 0]), int(task.distractors[0, 0, 0])]
    assert word_tok.convert_ids_to_tokens(ids) == ["Mary", "John"]


def test_toml_pointing_at_pairs(tmp_path, gpt2_tok):
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(p) for p in PAIRS[:2]), encoding="utf-8")
    path = write(tmp_path, 'name = "my-ioi"\nmetric = "logprob"\npairs = "p.jsonl"\n')
    task = load_task(path, gpt2_tok, n=None)
    assert task.name == "my-ioi" and task.metric.name == "logprob" and len(task) == 2


def _pairs_error(tmp_path, tok, rows, suffix=".jsonl"):
    path = tmp_path / f"bad{suffix}"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(TaskFileError) as err:
        load_task(path, tok, n=None)
    assert f"bad{suffix}:" in str(err.value) and "fix:" in str(err.value)
    return err.value, str(err.value)


def test_malformed_pairs(tmp_path, gpt2_tok):
    good = json.dumps(PAIRS[0])
    bad = dict(PAIRS[1], corrupted="When Anna and Paul went to the park, Christopher Columbus gave a book to")
    err, msg = _pairs_error(tmp_path, gpt2_tok, [good, json.dumps(bad)])
    assert err.line == 2 and "different lengths" in msg and "same number of tokens" in msg
    err, msg = _pairs_error(tmp_path, gpt2_tok, [good, json.dumps(dict(PAIRS[1], answer=" Annabelle-Marie"))])
    assert err.line == 2 and "Annabelle-Marie" in msg and "single" in msg
    row = dict(PAIRS[1])
    del row["answer"]
    err, msg = _pairs_error(tmp_path, gpt2_tok, [good, "", json.dumps(row)])
    assert err.line == 3 and "missing 'answer'" in msg
    err, msg = _pairs_error(tmp_path, gpt2_tok, [good, "{not json"])
    assert err.line == 2 and "not valid JSON" in msg
    err, msg = _pairs_error(tmp_path, gpt2_tok, ["clean,corrupted,answer", f'"{PAIRS[0]["clean"]}","x",Mary'], ".csv")
    assert err.line == 2 and "different lengths" in msg
    path = tmp_path / "p.jsonl"
    path.write_text(good, encoding="utf-8")
    with pytest.raises(TaskFileError, match="unknown metric"):
        load_task(path, gpt2_tok, n=None, metric="accuracy")
