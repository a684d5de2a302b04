"""One grammar of model specs: circuits.load_model parses every spec, and sweeps validate with the same parser."""

from __future__ import annotations

import pytest
import torch

import circuits
from circuits.models.loading import ModelNotFoundError, ModelSpecError, parse_model_spec
from circuits.sweeps import SweepError, load_sweep


@pytest.mark.parametrize("spec, family, n_kv", [("tiny-random", "gpt2", 4), ("tiny-random:llama", "llama", 2),
                                                ("tiny-random:gpt_neox", "gpt_neox", 4)])
def test_load_model_tiny_random(spec, family, n_kv):
    model = circuits.load_model(spec)
    assert model.name == f"tiny-random:{family}" and model.spec.family == family
    s = model.structure
    assert (s.n_layers, s.n_heads, s.d_model) == (2, 4, 32)
    assert getattr(model.hf.config, "num_key_value_heads", 4) == n_kv  # grouped-query attention for llama
    assert model.dtype == torch.float32
    task = circuits.load_task("ioi", model, n=4)  # the tasks' word vocabulary: the built-in tasks tokenize
    assert model.logits(task.clean).shape[:2] == task.clean.shape


def test_parse_model_spec(tmp_path):
    assert parse_model_spec("tiny-random") == ("tiny-random", "gpt2")
    assert parse_model_spec("tiny-random:qwen2") == ("tiny-random", "qwen2")
    assert parse_model_spec("random:gpt2-small") == ("random", "gpt2-small")
    assert parse_model_spec("zoo:planted-ioi") == ("zoo", "planted-ioi")
    assert parse_model_spec("gpt2") == ("hub", "gpt2")
    with pytest.raises(ModelSpecError, match="unknown family 'opt'"):
        parse_model_spec("tiny-random:opt")
    with pytest.raises(ModelSpecError, match="unknown random preset 'gpt9'"):
        parse_model_spec("random:gpt9")
    with pytest.raises(ModelNotFoundError, match="circuits zoo list"):
        parse_model_spec("zoo:no-such")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        parse_model_spec(str(tmp_path / "missing"))
    with pytest.raises(ModelNotFoundError, match="config.json"):
        parse_model_spec(tmp_path)


def test_sweeps_validate_with_the_same_parser():
    base = {"name": "t", "tasks": ["ioi"], "methods": ["eap"], "n": 8}
    assert [j.model for j in load_sweep({**base, "models": ["tiny-random:llama"]}).expand()] == ["tiny-random:llama"]
    with pytest.raises(SweepError, match=r"key 'models\[0\]': unknown family 'opt'; fix: use tiny-random\["):
        load_sweep({**base, "models": ["tiny-random:opt"]})
