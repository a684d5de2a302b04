"""Bundled models: the attention-only architecture, planted ground truths, loading, smoke training."""

from __future__ import annotations

import pytest
import torch

import circuits
from circuits.models.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM
from circuits.zoo import planted as PL
from circuits.zoo.common import ZOO_ROOT, read_meta

SHIPPED = [p.name for p in sorted(ZOO_ROOT.iterdir()) if (p / "config.json").is_file()]
PLANTED = [n for n in SHIPPED if n.startswith("planted-")]


def _random_attn_only(seed: int = 0):
    torch.manual_seed(seed)
    hf = AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=30, n_layer=2, n_head=4, d_model=32, n_ctx=20))
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return hf


def test_attn_only_parity_and_graph():
    model = circuits.CircuitModel.from_hf(_random_attn_only())
    assert not model.structure.has_mlp
    assert model.structure.n_edges == 81  # 1 + 4 senders into layer 0/1 q,k,v (3*4*(1+5)) + 9 into logits
    ids = torch.randint(3, 30, (3, 12))
    am = torch.ones_like(ids)
    am[0, 9:] = 0
    got, want = model.logits(ids, am), model.hf(ids, attention_mask=am).logits
    assert torch.allclose(got[am.bool()], want[am.bool()], atol=1e-5)


def test_attn_only_head_dim_independent_of_width(tmp_path):
    """``head_dim`` may differ from d_model / n_head (the zoo model's heads each read the whole stream); configs
    without it (written before it existed) keep d_model / n_head."""
    torch.manual_seed(0)
    hf = AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=30, n_layer=2, n_head=3, d_model=16, head_dim=24, n_ctx=20))
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert hf.blocks[0].attn.q_proj.weight.shape == (72, 16)
    ids = torch.randint(3, 30, (3, 12))
    am = torch.ones_like(ids)
    am[0, 9:] = 0
    model = circuits.CircuitModel.from_hf(hf)
    assert torch.allclose(model.logits(ids, am)[am.bool()], hf(ids, attention_mask=am).logits[am.bool()], atol=1e-5)
    hf.save_pretrained(tmp_path)
    assert torch.allclose(circuits.load_model(str(tmp_path), device="cpu").logits(ids), hf(ids).logits, atol=1e-5)
    legacy = AttnOnlyConfig.from_dict({k: v for k, v in AttnOnlyConfig(n_head=4, d_model=32).to_dict().items()
                                       if k != "head_dim"})
    assert legacy.head_dim == 8


def test_attn_only_save_load_through_auto(tmp_path):
    from transformers import AutoModelForCausalLM

    hf = _random_attn_only()
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 30, (2, 7))
    assert torch.equal(again(ids).logits, hf(ids).logits)
    model = circuits.load_model(str(tmp_path), device="cpu")
    assert torch.allclose(model.logits(ids), hf(ids).logits, atol=1e-5)


def test_shipped_weights_under_budget():
    total = sum((ZOO_ROOT / n / "model.safetensors").stat().st_size for n in SHIPPED)
    assert total <= 20 * 2 ** 20


@pytest.mark.parametrize("name", SHIPPED)
def test_zoo_model_loads_offline_with_card(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = circuits.load_model(f"zoo:{name}", device="cpu")
    assert model.tokenizer is not None
    folder = ZOO_ROOT / name
    assert (folder / "README.md").read_text().startswith(f"# {name}")
    assert read_meta(folder)["params"] == sum(p.numel() for p in model.hf.parameters())
    ids = model.tokenizer("[BOS]", add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert torch.allclose(model.logits(ids), model.hf(ids).logits, atol=1e-4)


@pytest.mark.parametrize("name", PLANTED)
def test_planted_ground_truth_passes_exact_patching(name):
    model = circuits.load_model(f"zoo:{name}", device="cpu")
    truth = circuits.zoo.ground_truth(name, model)
    task = circuits.load_task(circuits.zoo.task_file(name), model, n=8, seed=7)  # a fresh sample
    df = PL.verify_ground_truth(model, task, truth, chunk=128)
    assert df.attrs["all_pass"], df[~df.passes]
    assert set(df[df.in_ground_truth].edge) == set(PL.PLANTED[name][2])
    assert df.attrs["gap"] > 1.0


def test_planted_construction_is_the_shipped_model():
    for name in PLANTED:
        hf, *_ = PL.build_planted(name)
        shipped = circuits.load_model(f"zoo:{name}", device="cpu").hf
        for (k, a), (_, b) in zip(hf.state_dict().items(), shipped.state_dict().items()):
            assert torch.equal(a, b), (name, k)


def test_verify_flags_a_wrong_ground_truth():
    model = circuits.load_model("zoo:planted-induction", device="cpu")
    task = circuits.load_task(circuits.zoo.task_file("planted-induction"), model, n=6, seed=3)
    wrong = circuits.Graph.from_edges(model.structure, PL.INDUCTION_GT[:-1] + ["a0.h1->a1.h1<q>"])
    df = PL.verify_ground_truth(model, task, wrong)
    assert not df.attrs["all_pass"]
    assert set(df[~df.passes].edge) == {"a1.h0->logits", "a0.h1->a1.h1<q>"}


@pytest.mark.parametrize("name", [n for n in ("gpt2-tasks", "attn-only-2l") if n in SHIPPED])
def test_trained_model_reaches_reported_accuracy(name):
    from circuits.zoo import induction, tasks_model

    model = circuits.load_model(f"zoo:{name}", device="cpu")
    meta = read_meta(ZOO_ROOT / name)
    module = tasks_model if name == "gpt2-tasks" else induction
    acc = module.evaluate(model, n=150, seed=2024)  # a fresh seeded sample, smaller than the card's
    for key, reported in meta["accuracy"].items():
        if key in acc and key.endswith("_gap"):  # the model reads the contrast its circuits are found for
            assert acc[key] >= 0.5 * reported > 0, (key, acc[key], reported)
        elif key in acc and not key.endswith("pairwise"):
            assert acc[key] >= reported - 0.05, (key, acc[key], reported)


def test_attn_only_2l_heads_that_matter():
    assert "attn-only-2l" in SHIPPED  # bundled with the package (package-data)
    from circuits.zoo.analysis import induction_report

    model = circuits.load_model("zoo:attn-only-2l", device="cpu")
    report = induction_report(model, n=60, seed=99)
    assert report["best_prev_token_head"].startswith("a0.")
    assert report["best_induction_head"].startswith("a1.")
    assert set(report["destroying_heads"]) == {report["best_prev_token_head"], report["best_induction_head"]}


@pytest.mark.parametrize("name", ["attn-only-2l", "gpt2-tasks"])
def test_training_smoke(name, tmp_path, monkeypatch):
    from circuits.zoo import induction, tasks_model

    module = induction if name == "attn-only-2l" else tasks_model
    if name == "gpt2-tasks":
        monkeypatch.setattr(tasks_model, "training_data", lambda tok, seed, n=0: {
            t: tasks_model.load(t, tok, 40, seed).data for t in tasks_model.TASKS})
    else:
        monkeypatch.setattr(induction, "TRAIN_PERIODS", [3, 4])
        monkeypatch.setattr(induction, "MAX_LEN", 16)
    hf1, tok, info = module.train(steps=3, seed=1, progress=False)
    hf2, _, _ = module.train(steps=3, seed=1, progress=False)
    assert info["steps"] == 3
    for a, b in zip(hf1.parameters(), hf2.parameters()):
        assert torch.equal(a, b)  # seeded: the same weights twice
    hf1.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert circuits.load_model(str(tmp_path), device="cpu").structure.n_layers == hf1.config.num_hidden_layers


@pytest.mark.slow
@pytest.mark.parametrize("name", ["attn-only-2l", "gpt2-tasks"])
def test_full_training_reproduces_card(name, tmp_path):
    from circuits.zoo.registry import make

    meta = make(name, out=tmp_path / name, progress=False)
    shipped = read_meta(ZOO_ROOT / name)
    for key, value in shipped["accuracy"].items():
        assert abs(meta["accuracy"][key] - value) < 0.03


def test_cli_zoo_list(capsys):
    from circuits.cli import main

    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in SHIPPED:
        assert f"zoo:{name}" in out
    assert "MB" in out
