"""Shared pieces of the zoo: seeding, losses, accuracy, held-out splits, writing a model folder."""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from circuits.tasks import Metric
from circuits.tasks.metrics import read_positions

if TYPE_CHECKING:  # pragma: no cover
    from circuits.models.circuit_model import CircuitModel

ZOO_ROOT = Path(__file__).resolve().parent
META_FILE = "zoo.json"  # metadata next to each bundled model (read by `circuits zoo list`)


def seed_everything(seed: int) -> None:
    """Seed Python and torch and ask torch for deterministic kernels (CPU training is then reproducible)."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def readout_loss(logits: Tensor, batch) -> Tensor:
    """Cross-entropy of the answer (set) at every read position: ``-logprob`` metric, averaged."""
    return -Metric("logprob")(logits, batch).mean()


@torch.no_grad()
def top1_accuracy(logits: Tensor, batch) -> Tensor:
    """``[n]``: per example, the fraction of read positions whose arg-max token is an answer (for IOI: the IO
    name; greater-than: a year above YY; induction: the token after the first occurrence)."""
    read = read_positions(logits, batch.positions.to(logits.device))  # [n, R, V]
    top = read.argmax(-1)  # [n, R]
    hit = ((batch.answers.to(top.device) == top.unsqueeze(-1)) & batch.answer_mask.to(top.device)).any(-1)
    mask = batch.position_mask.to(top.device).float()
    return (hit.float() * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def stable_hash(*parts) -> int:
    """A hash that does not change between Python runs (``hash()`` of strings does)."""
    return zlib.crc32("/".join(str(p) for p in parts).encode())


def held_out(*parts, fraction_denominator: int = 5) -> bool:
    """Whether a combination (e.g. template index and IO name) belongs to the held-out split (1 in 5)."""
    return stable_hash(*parts) % fraction_denominator == 0


def batched_logits(model: CircuitModel | nn.Module, ids: Tensor, attention_mask: Tensor | None = None,
                   batch_size: int = 256) -> Tensor:
    """Hugging Face logits of ``model`` (a CircuitModel or a transformers model) in batches, no grad."""
    hf: Any = getattr(model, "hf", model)  # anything with .hf (a CircuitModel, a test's stand-in) or the model
    out = []
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            am = attention_mask[i:i + batch_size] if attention_mask is not None else None
            out.append(hf(ids[i:i + batch_size], attention_mask=am).logits)
    return torch.cat(out)


def n_params(hf: nn.Module) -> int:
    return sum(p.numel() for p in hf.parameters())


def save_model_folder(hf, tokenizer, out: Path, meta: dict, card: str) -> Path:
    """``save_pretrained`` (config.json, model.safetensors), the tokenizer, the card and the metadata."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    size = (out / "model.safetensors").stat().st_size
    meta = {**meta, "params": n_params(hf), "weights_mb": round(size / 2 ** 20, 3)}
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (out / "README.md").write_text(card)
    return out


def read_meta(folder: Path) -> dict:
    path = Path(folder) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
