"""`load_model`: one door for hub ids, local Hugging Face folders, bundled models and loaded models.

Everything goes through ``transformers`` (``AutoModelForCausalLM`` / ``AutoTokenizer``), bundled models
included, so a model behaves here exactly as it does in the rest of the Hugging Face ecosystem. The
architecture is checked from the config *before* any weights are read, so an unsupported model fails at once.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast
from urllib.parse import urlparse

import torch
from torch import nn

import circuits.models.attn_only  # noqa: F401  (registers model_type "circuits_attn_only" with the Auto classes)
from circuits.errors import CircuitsError
from circuits.models.architectures import READERS, UnsupportedArchitectureError
from circuits.models.circuit_model import CircuitModel
from circuits.models.options import resolve_device, resolve_dtype

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"


class ModelNotFoundError(CircuitsError, OSError):
    """The model is neither local, bundled, cached, nor reachable."""

    problem: str  # set by _spec_error
    fix: str


def zoo_models() -> list[str]:
    """Names of the bundled models (``zoo:NAME``)."""
    if not ZOO_DIR.is_dir():
        return []
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").is_file())


def load_model(spec, *, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
               tokenizer=None, grouped_kv: bool | None = None) -> CircuitModel:
    """Load a causal LM for circuit discovery.

    ``spec`` is a hub id (``"gpt2"``, ``"EleutherAI/pythia-70m"``), a local Hugging Face folder, a bundled
    model (``"zoo:NAME"``, see ``circuits zoo list``), a random-weight model of a real shape
    (``"random:gpt2-small"``, ``"random:qwen2.5-0.5b"``, ...), a tiny random model on the tasks' word vocabulary
    (``"tiny-random"``, ``"tiny-random:llama"``: for tests and dry runs), or an already-loaded ``transformers``
    model (see :func:`parse_model_spec` for the grammar).
    ``device`` defaults to CUDA when available, else CPU; ``dtype`` to the checkpoint's own.
    ``grouped_kv``: k and v receivers per key/value group instead of MIB's per query head (grouped-query models;
    Llama-3.1-8B: 805,681 edges instead of 1,592,881; see :class:`~circuits.graph.structure.GraphStructure`);
    None: per head, or a given :class:`CircuitModel`'s own setting.

    >>> load_model("zoo:no-such-model")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ModelNotFoundError: no bundled model 'no-such-model'; use one of zoo:...
    """
    model = _load(spec, device, dtype, tokenizer)
    return model if grouped_kv is None else model.with_grouped_kv(grouped_kv)


def _load(spec, device, dtype, tokenizer) -> CircuitModel:
    if isinstance(spec, CircuitModel):
        return spec
    dtype = resolve_dtype(dtype)
    if device is not None:
        device = resolve_device(device)
    if isinstance(spec, nn.Module):
        # an already-loaded transformers model (the architecture is checked by CircuitModel itself)
        model = CircuitModel.from_hf(cast("PreTrainedModel", spec), tokenizer)
        return model.to(device) if device is not None else model
    if not isinstance(spec, (str, os.PathLike)):
        raise ModelSpecError(f"load_model takes a hub id, a folder, 'zoo:NAME' or a transformers model, "
                             f"not {type(spec).__name__} {spec!r}")
    kind, name = parse_model_spec(spec)
    if kind in ("random", "tiny-random"):  # random weights of a real shape, or a tiny one: no download at all
        from circuits.models.random import random_model, tiny_random_model

        weights = dtype or torch.float32
        model = (random_model(name, dtype=weights, tokenizer=tokenizer) if kind == "random"
                 else tiny_random_model(name, dtype=weights))
        return model.to(device) if device is not None else model
    if kind == "zoo":
        return _load_pretrained(str(ZOO_DIR / name), f"zoo:{name}", device, dtype, tokenizer, local=True)
    if kind == "local":
        return _load_pretrained(name, Path(name).name, device, dtype, tokenizer, local=True)
    return _load_pretrained(name, name, device, dtype, tokenizer, local=False)


def parse_model_spec(spec: str | os.PathLike) -> tuple[str, str]:
    """What a model spec names, checked without loading anything: ``(kind, name)``, one of ``("zoo", NAME)``,
    ``("random", PRESET_OR_FAMILY)``, ``("tiny-random", FAMILY)``, ``("local", FOLDER)`` or ``("hub", ID)``.

    This is the one grammar of model specs (:func:`load_model` dispatches on it; sweeps validate with it). A
    missing bundled model or local folder raises :class:`ModelNotFoundError`, an unknown random preset or family
    :class:`ModelSpecError`; both carry ``problem`` and ``fix``. Whether a hub id exists is not checked here.
    """
    from circuits.models.random import FAMILIES, PRESETS, TINY_RANDOM

    spec = str(spec)
    if spec.startswith("random:"):
        name = spec[len("random:"):]
        if name not in PRESETS and name not in FAMILIES:
            raise _spec_error(ModelSpecError, f"unknown random preset {name!r}",
                              f"use one of {', '.join(PRESETS)} (or a family: {', '.join(FAMILIES)})")
        return "random", name
    if spec == TINY_RANDOM or spec.startswith(TINY_RANDOM + ":"):
        family = spec.split(":", 1)[1] if ":" in spec else "gpt2"
        if family not in FAMILIES:
            raise _spec_error(ModelSpecError, f"unknown family {family!r}", f"use {TINY_RANDOM}[:{'|'.join(FAMILIES)}]")
        return "tiny-random", family
    if spec.startswith("zoo:"):
        name = spec[4:]
        if not (ZOO_DIR / name / "config.json").is_file():
            raise _spec_error(ModelNotFoundError, f"no bundled model {name!r}",
                              f"use one of {', '.join('zoo:' + m for m in zoo_models()) or '(none built yet)'} "
                              "(`circuits zoo list` shows them)")
        return "zoo", name
    local = Path(spec).expanduser()
    if local.exists() or spec.startswith((".", "/", "~")):
        if not local.is_dir():
            raise _spec_error(ModelNotFoundError, f"local model folder {spec!r} does not exist", "check the path")
        if not (local / "config.json").is_file():
            raise _spec_error(ModelNotFoundError, f"{local} has no config.json",
                              "point load_model at a Hugging Face model folder (the one save_pretrained wrote)")
        return "local", str(local)
    return "hub", spec


class ModelSpecError(CircuitsError, ValueError):
    """A model spec that names no model: an unknown ``random:`` preset or ``tiny-random`` family."""

    problem: str  # set by _spec_error
    fix: str


_SpecErr = TypeVar("_SpecErr", ModelNotFoundError, ModelSpecError)


def _spec_error(cls: type[_SpecErr], problem: str, fix: str) -> _SpecErr:
    err = cls(f"{problem}; {fix}")
    err.problem, err.fix = problem, fix
    return err


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be used right now (None if it can): checked in seconds, not retried for minutes."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no"):
        return "HF_HUB_OFFLINE is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as err:
        return f"the hub ({host}) could not be reached: {err}"
    return None


def _load_pretrained(where: str, name: str, device, dtype, tokenizer, local: bool) -> CircuitModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        # The cache first: a cached model loads with no network, and a missing one is known at once.
        config = AutoConfig.from_pretrained(where, local_files_only=True)
        cached = True
    except (OSError, ValueError) as err:
        if local:
            raise ModelNotFoundError(f"cannot read the config of {where}: {err}") from err
        cached, config, reason = False, None, _hub_unreachable()
        if reason is None:
            try:
                config = AutoConfig.from_pretrained(where)
            except (OSError, ValueError) as hub_err:
                reason = f"the hub answered: {hub_err}"
        if config is None:
            raise ModelNotFoundError(
                f"model {where!r} is neither a local folder nor in the Hugging Face cache, and {reason}. "
                f"Download it where there is network (`huggingface-cli download {where}`, then copy the cache "
                "~/.cache/huggingface), or save it with save_pretrained and pass that folder; bundled models "
                f"need no download: {', '.join('zoo:' + z for z in zoo_models()) or 'see `circuits zoo list`'}"
            ) from err
    if config.model_type not in READERS:
        raise UnsupportedArchitectureError(
            f"{where}: model type {config.model_type!r} is not supported; supported: {', '.join(sorted(READERS))}")
    hf = AutoModelForCausalLM.from_pretrained(where, dtype=dtype or "auto", attn_implementation="eager",
                                              local_files_only=cached)
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=cached)
        except (OSError, ValueError, TypeError):
            tokenizer = None  # weights without a tokenizer still have a graph; tasks will ask for one
    hf = hf.to(resolve_device(device))  # type: ignore[arg-type]  # (transformers types .to for dtypes only)
    return CircuitModel.from_hf(hf, tokenizer, name=name)
