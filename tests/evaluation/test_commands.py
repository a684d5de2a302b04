"""``circuits evaluate`` end to end on a tiny local model, and ``circuits reproduce`` without weights."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest
import torch

from circuits.cli import build_parser, main
from circuits.models.random import random_model
from circuits.tasks import word_level_tokenizer

NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = word_level_tokenizer(NAMES + "Then and went to the store . gave a drink".split())
    model = random_model("gpt2", n_layers=2, n_heads=4, d_model=32, vocab_size=len(tok), tokenizer=tok)
    model.hf.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    pairs = []
    for a, b, c, d in itertools.islice(itertools.permutations(NAMES, 4), 12):
        pairs.append({"clean": f"Then {a} and {b} went to the store . {a} gave a drink to",
                      "corrupted": f"Then {c} and {d} went to the store . {c} gave a drink to",
                      "answer": f" {b}", "distractor": f" {a}"})
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    scored = model.graph
    scored.set_scores(torch.randn(scored.structure.n_senders, scored.structure.n_receivers,
                                  generator=torch.Generator().manual_seed(0)))
    scored.save(root / "scored.json")
    return root


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_evaluate_one_circuit(files, capsys):
    code, out, err = run(capsys, "evaluate", "--model", files / "model", "--task", files / "pairs.jsonl", "--graph",
                         files / "scored.json", "--k", 40, "--n", 12, "--save", files / "result.json",
                         "--save-circuit", files / "circuit.json")
    assert code == 0, err
    assert "faithfulness" in out and "empty circuit" in out and f"wrote     {files / 'result.json'}" in out
    saved = json.loads((files / "result.json").read_text())
    assert saved["result"]["n_examples"] == 6 and saved["result"]["ablation"] == "corrupted"
    assert (files / "circuit.json").exists()


def test_evaluate_curve(files, capsys):
    code, out, err = run(capsys, "evaluate", "--model", files / "model", "--task", files / "pairs.jsonl", "--graph",
                         files / "scored.json", "--curve", "--absolute", "--n", 12)
    assert code == 0, err
    assert "CPR" in out and "CMD" in out and "0.0010" in out  # the table of MIB's fractions
    assert "wrote" not in out  # nothing saved, nothing claimed


def test_evaluate_refuses_a_graph_of_another_model(files, capsys, tmp_path):
    import circuits

    circuits.Graph.full(circuits.GraphStructure(n_layers=3, n_heads=4)).save(tmp_path / "other.json")
    code, out, err = run(capsys, "evaluate", "--model", files / "model", "--task", files / "pairs.jsonl",
                         "--graph", tmp_path / "other.json", "--n", 12)
    assert code == 2 and "made for a model with 3 layers" in err


@pytest.mark.parametrize("command", ["evaluate", "reproduce"])
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    assert "examples:" in capsys.readouterr().out


def test_reproduce_without_weights_fails_at_once_saying_how_to_get_them(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hub")}
    proc = subprocess.run([sys.executable, "-m", "circuits.cli", "reproduce", "ioi", "--model", "gpt2"],
                          capture_output=True, text=True, env=env, timeout=600)  # a backstop, not a speed check
    assert proc.returncode == 2
    assert "trained weights of GPT-2 small" in proc.stderr and "huggingface-cli download gpt2" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_reproduce_with_a_stand_in_discovery(monkeypatch, capsys, tmp_path):
    """The whole `circuits reproduce` path on a GPT-2-small-shaped random model (slow: ~25 s of CPU)."""
    import circuits.discovery

    def fake_discover(model, task, method="eap-ig", *, ablation="corrupted", **params):
        g = model.graph
        g.set_scores(torch.randn(g.structure.n_senders, g.structure.n_receivers,
                                 generator=torch.Generator().manual_seed(0)))
        return g

    monkeypatch.setattr(circuits.discovery, "discover", fake_discover)
    code, out, err = run(capsys, "reproduce", "ioi", "--model", "random:gpt2-small", "--n", 8, "--save",
                         tmp_path / "r.json")
    assert code == 0, err
    assert "published (ioi)" in out and "AUROC" in out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["published"]["n_edges"] == 963 and saved["discovered"]["n_edges"] >= 963
