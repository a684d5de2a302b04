"""Errors raised while building tasks.

Every message names where the problem is (file, line or key, or the tokenizer and the offending words) and
says how to fix it, because task files are written by people who never read this package's source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from circuits.errors import CircuitsError


class TaskError(CircuitsError, ValueError):
    """A task cannot be built: bad task file, unknown name or option, or a tokenizer that cannot express it."""


class TaskFileError(TaskError):
    """A task file (TOML, JSONL or CSV) is malformed. ``.path``, ``.line`` and ``.key`` locate the problem."""

    def __init__(self, path: str | Path | None, problem: str, fix: str, *, line: int | None = None,
                 key: str | None = None):
        self.path, self.line, self.key, self.problem, self.fix = path, line, key, problem, fix
        where = str(path) if path is not None else "<task definition>"
        if line is not None:
            where += f":{line}"
        if key is not None:
            where += f" [{key}]"
        super().__init__(f"{where}: {problem}\n  fix: {fix}")


class TokenizationError(TaskError):
    """Words a task needs are not single tokens (or unknown) for the tokenizer. ``.words`` lists them."""

    def __init__(self, problem: str, words: Sequence[str], fix: str, *, path: str | Path | None = None,
                 details: Sequence[str] | None = None):
        self.words = list(dict.fromkeys(words))
        self.path = path
        where = f"{path}: " if path is not None else ""
        shown = "\n    ".join(details) if details else ", ".join(self.words)
        super().__init__(f"{where}{problem}\n  offending ({len(self.words)}):\n    {shown}\n  fix: {fix}")
