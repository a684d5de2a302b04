"""Checkpoints for long discovery runs: interrupt, run the same call again, get the same result.

A checkpoint is one ``torch.save`` file written atomically (temporary file, then rename), tagged with a
fingerprint of the run (method, parameters, model, task, ablation); resuming a different run from it is
refused rather than silently mixing results.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch

from circuits.errors import CircuitsError


class CheckpointMismatchError(CircuitsError, ValueError):
    """The checkpoint file belongs to another run."""


def fingerprint(**spec) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Checkpoint:
    """``state = ckpt.load()`` (None if fresh), ``ckpt.maybe_save(state)`` every ``every`` seconds."""

    def __init__(self, path: str | os.PathLike | None, key: str, every: float = 30.0):
        self.path = Path(path) if path is not None else None
        self.key = key
        self.every = every
        self._last = time.monotonic()

    def load(self) -> dict | None:
        if self.path is None or not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("key") != self.key:
            raise CheckpointMismatchError(
                f"checkpoint {self.path} was written by a different run (method, parameters, model or data differ); "
                "delete it or pass another checkpoint path")
        return state

    def save(self, state: dict) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        torch.save({**state, "key": self.key}, tmp)
        os.replace(tmp, self.path)
        self._last = time.monotonic()

    def maybe_save(self, state: dict) -> None:
        if self.path is not None and time.monotonic() - self._last >= self.every:
            self.save(state)

    def done(self) -> None:
        """The run finished: its result is returned, the checkpoint is no longer needed."""
        if self.path is not None and self.path.exists():
            self.path.unlink()
