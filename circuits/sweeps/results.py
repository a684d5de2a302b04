"""Sweep results on disk, written so that nothing finished is ever lost or duplicated.

``results/<sweep>/``
    ``rows/<job_id>.json``   one file per job, the source of truth: written (temp file + ``os.replace``) the moment
                             the job's result reaches the driver. One file per ``job_id``, so a job rerun replaces
                             its row and can never appear twice.
    ``results.parquet``      the sweep's rows (pandas), rebuilt atomically from ``rows/`` as jobs finish and at the end
    ``results.csv``          the same table as CSV
    ``sweep.json``           the validated sweep and its job list (what ``--dry-run`` prints)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``: readers see the old
    file or the new one, never a partial write (also when the process is killed mid-write)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class ResultStore:
    """The rows of one sweep (``results/<sweep>/``)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.rows_dir = self.dir / "rows"

    @property
    def parquet(self) -> Path:
        return self.dir / "results.parquet"

    @property
    def csv(self) -> Path:
        return self.dir / "results.csv"

    def write_row(self, row: dict) -> Path:
        return atomic_write(self.rows_dir / f"{row['job_id']}.json",
                            json.dumps({k: _clean(v) for k, v in row.items()}, indent=1, sort_keys=True))

    def rows(self) -> list[dict]:
        out: list[dict] = []
        if not self.rows_dir.is_dir():
            return out
        for path in sorted(self.rows_dir.glob("*.json")):
            try:
                row = json.loads(path.read_text())
            except (json.JSONDecodeError, OSError):  # cannot happen with atomic writes; never fatal
                continue
            if isinstance(row, dict) and row.get("job_id") == path.stem:  # one row per job: its own file only
                out.append(row)
        return out

    def status(self) -> dict[str, str]:
        """``{job_id: status}`` of the rows on disk."""
        return {r["job_id"]: r.get("status", "") for r in self.rows()}

    def frame(self, order: Iterable[str] | None = None):
        """The rows as a DataFrame; with ``order`` (job ids) only those jobs, in that order."""
        import pandas as pd

        rows = self.rows()
        if order is not None:
            order = list(order)
            keep = set(order)
            rows = [r for r in rows if r.get("job_id") in keep]
        frame = pd.DataFrame(rows)
        if order is not None and len(frame):
            rank = {j: i for i, j in enumerate(order)}
            frame = frame.assign(_o=frame["job_id"].map(rank).fillna(len(rank))).sort_values(
                ["_o", "job_id"], kind="stable").drop(columns="_o").reset_index(drop=True)
        return frame

    def rebuild(self, order: Iterable[str] | None = None):
        """Rewrite ``results.parquet`` and ``results.csv`` from ``rows/`` (atomically); return the frame.

        With ``order`` (the sweep's job ids) the tables hold exactly the sweep's current jobs: rows of jobs that
        are no longer in the sweep (a changed ``n``, a dropped method) stay in ``rows/``, unused, so changing the
        sweep back finds them finished."""
        import io

        frame = self.frame(order)
        if frame.empty:
            return frame
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        atomic_write(self.parquet, buf.getvalue())
        atomic_write(self.csv, frame.to_csv(index=False))
        return frame
