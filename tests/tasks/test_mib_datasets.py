"""MIB's datasets from local files laid out as its hub repositories are (parquet shards under data/, a config folder,
or one JSON file per split), with MIB's record fields, counterfactuals, answers and split names."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from circuits.tasks import TaskError, TaskFileError, load_task
from circuits.tasks.mib import is_mib_dataset, mib_pairs, read_records, split_files

NAMES = [("Mary", "John", "Anna"), ("Paul", "Lisa", "Tom"), ("Sarah", "David", "Kate"), ("James", "Emma", "Mark")]


def _ioi_record(io: str, s: str, c: str) -> dict:
    """An IOI record as mib-bench/ioi has it: prompt, metadata, choices/answerKey, and counterfactual records."""
    def text(a: str, b: str, giver: str) -> str:
        return f"When {a} and {b} went to the store, {giver} gave a drink to"

    return {"prompt": text(io, s, s), "choices": {"label": [io, s]}, "answerKey": 0,
            "metadata": {"indirect_object": io, "subject": s, "random_c": c},
            "s2_io_flip_counterfactual": {"prompt": text(io, s, io), "choices": {"label": [io, s]}, "answerKey": 1},
            "abc_counterfactual": {"prompt": text(c, s, io), "choices": {"label": [c, s]}, "answerKey": 0}}


def _mcqa_record(obj: str, colour: str, options: list[str], key: int, cf_key: int) -> dict:
    """A copycolors_mcqa record: the answer is a choice label; the symbol counterfactual moves the right answer."""
    labels = ["A", "B", "C", "D"]

    def text(opts: list[str]) -> str:
        lines = "\n".join(f"{lab}. {o}" for lab, o in zip(labels, opts))
        return f"The {obj} is {colour}. What color is the {obj}?\n{lines}\nAnswer:"

    cf_options = list(options)
    cf_options[key], cf_options[cf_key] = cf_options[cf_key], cf_options[key]
    return {"prompt": text(options), "choices": {"label": labels, "text": options}, "answerKey": key,
            "symbol_counterfactual": {"prompt": text(cf_options), "choices": {"label": labels, "text": cf_options},
                                      "answerKey": cf_key}}


def _write_parquet(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)


@pytest.fixture()
def ioi_dir(tmp_path) -> Path:
    root = tmp_path / "ioi"
    records = [_ioi_record(*n) for n in NAMES]
    _write_parquet(root / "data" / "train-00000-of-00001.parquet", records[:3])
    _write_parquet(root / "data" / "validation-00000-of-00001.parquet", records[3:])
    _write_parquet(root / "data" / "test-00000-of-00001.parquet", records[1:2])
    return root


def test_ioi_parquet_as_on_the_hub(ioi_dir, gpt2_tok):
    assert is_mib_dataset(ioi_dir)
    assert [p.name for p in split_files(ioi_dir, "validation")] == ["validation-00000-of-00001.parquet"]
    task = load_task(ioi_dir, gpt2_tok, n=None)
    assert len(task) == 3 and task.metric.name == "logit_diff" and task.source == str(ioi_dir)
    ids = lambda w: gpt2_tok(w, add_special_tokens=False)["input_ids"]  # noqa: E731
    # MIB's IOI reading: answer = the indirect object, distractor = the subject, each after a space
    assert task.answers[:, 0, 0].tolist() == [ids(" " + io)[0] for io, _, _ in NAMES[:3]]
    assert task.distractors[:, 0, 0].tolist() == [ids(" " + s)[0] for _, s, _ in NAMES[:3]]
    # the default counterfactual is MIB's: s2_io_flip, the second subject replaced by the indirect object
    row = task.records[0]
    assert row["counterfactual"] == "s2_io_flip_counterfactual"
    assert row["corrupted"] == "When Mary and John went to the store, Mary gave a drink to"
    n_tok = len(ids(row["clean"]))
    assert task.clean[0, :n_tok].tolist() == ids(row["clean"])
    assert task.corrupted[0, :n_tok].tolist() == ids(row["corrupted"])
    abc = load_task(ioi_dir, gpt2_tok, n=None, counterfactual="abc_counterfactual")
    assert abc.records[0]["corrupted"].startswith("When Anna and John") and torch.equal(abc.answers, task.answers)
    val = load_task(ioi_dir, gpt2_tok, n=None, mib_split="validation")
    assert len(val) == 1 and val.records[0]["answer"] == " James"
    assert load_task(ioi_dir, gpt2_tok, n=1, mib_split="test").records[0]["answer"] == " Paul"


def test_mcqa_with_a_config_folder(tmp_path, gpt2_tok):
    root = tmp_path / "copycolors_mcqa"
    records = [_mcqa_record("banana", "yellow", ["red", "yellow", "blue", "green"], key=1, cf_key=3),
               _mcqa_record("sky", "blue", ["blue", "white", "black", "pink"], key=0, cf_key=2)]
    _write_parquet(root / "4_answer_choices" / "train-00000-of-00001.parquet", records)
    _write_parquet(root / "2_answer_choices" / "train-00000-of-00001.parquet", records[:1])
    task = load_task(root, gpt2_tok, n=None, config="4_answer_choices")
    ids = lambda w: gpt2_tok(w, add_special_tokens=False)["input_ids"]  # noqa: E731
    # the answer is the label, as MIB tokenizes it; the distractor is the counterfactual's answer label
    assert task.answers[:, 0, 0].tolist() == [ids("B")[0], ids("A")[0]]
    assert task.distractors[:, 0, 0].tolist() == [ids("D")[0], ids("C")[0]]
    assert task.distractors.shape[-1] == 1
    assert "D. yellow" in task.records[0]["corrupted"]
    assert len(load_task(root, gpt2_tok, n=None, config="2_answer_choices")) == 1


def test_json_per_split_and_arithmetic(tmp_path, gpt2_tok):
    root = tmp_path / "arithmetic_addition"
    root.mkdir()
    rows = [{"prompt": f"{a}+{b}=", "label": a + b, "operator": "+",
             "random_counterfactual": {"prompt": f"{c}+{b}=", "label": c + b}} for a, b, c in
            ((12, 34, 21), (20, 25, 31), (41, 17, 13))]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "dev.json").write_text(json.dumps(rows[:1]))  # a JSON array; "dev" is read as validation
    task = load_task(root, gpt2_tok, n=None)
    ids = lambda w: gpt2_tok(w, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert task.answers[:, 0, 0].tolist() == [ids("46")[0], ids("45")[0], ids("58")[0]]
    assert task.distractors[:, 0, 0].tolist() == [ids("55")[0], ids("56")[0], ids("30")[0]]
    assert len(read_records(root, "validation")) == 1
    # a record without its counterfactual (MIB's arithmetic data has some) is left out, as MIB does
    nulled = rows + [{"prompt": "30+30=", "label": 60, "operator": "+", "random_counterfactual": None}]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in nulled) + "\n")
    with pytest.warns(UserWarning, match="left out 1 of 4 train records whose random_counterfactual is null"):
        assert len(load_task(root, gpt2_tok, n=None)) == 3
    # the same records as parquet load the same task
    _write_parquet(tmp_path / "as_parquet" / "data" / "train-00000-of-00001.parquet", rows)
    again = load_task(tmp_path / "as_parquet", gpt2_tok, n=None)
    assert torch.equal(again.clean, task.clean) and torch.equal(again.answers, task.answers)


def test_records_the_tokenizer_cannot_use_are_dropped_as_mib_does(ioi_dir, gpt2_tok):
    bad = _ioi_record("Mary", "John", "Anna")
    bad["s2_io_flip_counterfactual"]["prompt"] = ("When Mary and John went to the store, Christopher Columbus gave a "
                                                  "drink to")
    good = _ioi_record("Paul", "Lisa", "Tom")
    root = ioi_dir.parent / "mixed"
    _write_parquet(root / "data" / "train-00000-of-00001.parquet", [bad, good])
    with pytest.warns(UserWarning, match=r"left out 1 of 2 records .* line 1: clean and corrupted prompts tokenize"):
        task = load_task(root, gpt2_tok, n=None)
    assert len(task) == 1 and task.records[0]["answer"] == " Paul"
    with pytest.raises(TaskFileError, match=r"different lengths.*\n  fix: make the clean and corrupted"):
        load_task(root, gpt2_tok, n=None, invalid="error")


def test_clear_errors(ioi_dir, tmp_path, gpt2_tok):
    with pytest.raises(TaskFileError, match=r"no config folder '4_answer_choices' \(folders: data\)"):
        split_files(ioi_dir, "validation", config="4_answer_choices")
    (ioi_dir / "data" / "test-00000-of-00001.parquet").unlink()
    with pytest.raises(TaskFileError, match=r"no 'test' split \(found: data/train-00000-of-00001.parquet, "
                                            r"data/validation-00000-of-00001.parquet\)\n  fix: name the files"):
        split_files(ioi_dir, "test")
    with pytest.raises(TaskFileError, match="ioi: unknown MIB split 'eval'\n  fix: use one of train, validation, test"):
        mib_pairs(ioi_dir, "eval")
    with pytest.raises(TaskFileError, match=r"no 'nope_counterfactual' in this record \(has \['s2_io_flip"):
        load_task(ioi_dir, gpt2_tok, n=None, counterfactual="nope_counterfactual")
    with pytest.raises(TaskError, match="unknown option"):
        load_task(ioi_dir, gpt2_tok, n=None, corruption="abc")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskError, match="holds no MIB dataset split"):
        load_task(tmp_path / "empty", gpt2_tok, n=None)
    no_key = _mcqa_record("sky", "blue", ["blue", "white", "black", "pink"], key=0, cf_key=2)
    no_key["answerKey"] = "Z"
    (tmp_path / "badkey").mkdir()
    (tmp_path / "badkey" / "train.jsonl").write_text(json.dumps(no_key) + "\n")
    with pytest.raises(TaskFileError, match=r"train.jsonl:1 \[answerKey\]: answerKey 'Z' is neither an index"):
        load_task(tmp_path / "badkey", gpt2_tok, n=None)
