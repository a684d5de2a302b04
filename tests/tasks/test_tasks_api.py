"""The Task API others build on: splits, batches, frames, metric binding, listing and name resolution."""

import types

import pandas as pd
import pytest
import torch

import circuits
from circuits.tasks import Task, TaskBatch, TaskError, list_tasks, load_task


def test_model_with_tokenizer_attribute(gpt2_tok):
    model = types.SimpleNamespace(tokenizer=gpt2_tok, name="gpt2")
    a = load_task("ioi", model, n=8, seed=0)
    b = load_task("ioi", gpt2_tok, n=8, seed=0)
    assert torch.equal(a.clean, b.clean) and a.tokenizer is gpt2_tok
    model.prepend_bos = True  # a model's own BOS preference is followed when the caller says nothing
    assert load_task("ioi", model, n=4).prepend_bos
    assert load_task("ioi", "gpt2", n=4).clean.shape[0] == 4


def test_split_is_seeded_and_disjoint(gpt2_tok):
    task = load_task("ioi", gpt2_tok, n=50, seed=3)
    train, val = task.train, task.validation
    assert len(train) == len(val) == 25 and isinstance(train, Task)
    rows = lambda t: {tuple(r) for r in t.clean.tolist()}  # noqa: E731
    assert rows(train) | rows(val) == rows(task) and not rows(train) & rows(val)
    again = load_task("ioi", gpt2_tok, n=50, seed=3)
    assert torch.equal(again.train.clean, train.clean)
    t2, v2 = task.split(0.8, seed=11)
    assert (len(t2), len(v2)) == (40, 10)
    assert len(load_task("ioi", gpt2_tok, n=10, split=0.7).train) == 7
    assert train.records[0] in task.records
    # the bound metric of a sub-task scores that sub-task's logits
    logits = torch.randn(len(val), val.clean.shape[1], len(gpt2_tok))
    assert val.metric(logits).shape == (len(val),)


def test_batches(any_tok):
    task = load_task("induction", any_tok, n=10, seed=0, seq_len=20, min_period=3, max_period=8)
    batches = list(task.batches(4))
    assert [len(b) for b in batches] == [4, 4, 2] and all(isinstance(b, TaskBatch) for b in batches)
    assert torch.equal(torch.cat([b.clean for b in batches]), task.clean)
    assert torch.equal(torch.cat([b.answers for b in batches]), task.answers)
    shuffled = list(task.batches(4, shuffle=True, seed=1))
    rows = sorted(map(tuple, torch.cat([b.clean for b in shuffled]).tolist()))
    assert rows == sorted(map(tuple, task.clean.tolist()))
    b = batches[0].to("cpu")
    assert b.clean.device.type == "cpu" and b.read_mask.shape == b.clean.shape
    assert b.read_mask.sum() == b.position_mask.sum()
    logits = torch.randn(len(b), b.clean.shape[1], len(any_tok))
    full = task.metric(torch.cat([logits, torch.randn(6, b.clean.shape[1], len(any_tok))]))
    assert torch.allclose(task.metric(logits, b), full[:4])  # the same metric per batch and for the task


def test_with_metric_and_kl(gpt2_tok):
    task = load_task("ioi", gpt2_tok, n=4)
    kl = task.with_metric("kl")
    assert kl.metric.name == "kl" and not kl.metric.higher_is_better and task.metric.name == "logit_diff"
    logits = torch.randn(4, task.clean.shape[1], len(gpt2_tok))
    assert torch.allclose(kl.metric(logits, full_logits=logits), torch.zeros(4), atol=1e-6)
    with pytest.raises(TaskError, match="full_logits"):
        kl.metric(logits)
    assert load_task("ioi", gpt2_tok, n=4, metric="logprob").metric.name == "logprob"


def test_to_frame(any_tok):
    frame = load_task("ioi", any_tok, n=5).to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 5
    assert list(frame.columns[:5]) == ["clean", "corrupted", "answer", "distractor", "positions"]
    assert {"IO", "S", "S2", "PLACE", "OBJECT", "template"} <= set(frame.columns)
    frame = load_task("induction", any_tok, n=3).to_frame()
    assert {"period", "clean", "answer"} <= set(frame.columns)


def test_list_tasks():
    frame = list_tasks()
    assert list(frame.columns) == ["name", "description", "metric", "source"]
    rows = frame.set_index("name")
    assert rows.loc["ioi", "metric"] == "logit_diff" and rows.loc["greater-than", "metric"] == "prob_diff"
    assert rows.loc["induction", "metric"] == "logprob"
    assert "tasks/ioi.toml" in rows.loc["ioi", "source"]


def test_name_resolution_errors(gpt2_tok, tmp_path):
    with pytest.raises(TaskError, match="unknown task 'iio'.*ioi"):
        load_task("iio", gpt2_tok)
    with pytest.raises(TaskError, match="not found"):
        load_task(tmp_path / "nope.toml", gpt2_tok)
    with pytest.raises(TaskError, match="unknown option"):
        load_task("ioi", gpt2_tok, n=2, periods=3)
    with pytest.raises(TaskError, match="'abc' \\(ACDC\\), 's2' \\(EAP-IG\\) or 'swap' \\(MIB\\)"):
        load_task("ioi", gpt2_tok, n=2, corruption="xyz")
    with pytest.raises(TaskError, match="cannot find a tokenizer"):
        load_task("ioi", object())
    assert load_task("greater_than", gpt2_tok, n=2).name == "greater-than"  # aliases
    assert isinstance(circuits.tasks.TaskError("x"), ValueError)


def test_task_files_by_name(gpt2_tok, tmp_path, monkeypatch):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "hello.toml").write_text(
        'name = "say-hello"\ntemplates = ["When {A} met {B}, {B2} said hi to {A}"]\nanswer = "A"\ndistractor = "B"\n'
        'corrupt = ["B2"]\n[slots]\nA = "ioi_names"\nB = "ioi_names"\nB2 = "=B"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert load_task("hello", gpt2_tok, n=3).name == "say-hello"
    assert load_task("say-hello", gpt2_tok, n=3).name == "say-hello"
    assert "say-hello" in set(list_tasks().name)
