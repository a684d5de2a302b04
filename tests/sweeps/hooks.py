"""The sweep tests' job hook, given to ``run_sweep(on_job_start=...)`` / ``execute``: runs in the Ray worker as
each execution of a job starts.

It travels to the workers by value (registered with Ray's cloudpickle below), so a worker needs no access to
this module, whatever its working directory or ``sys.path``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

try:
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
except ImportError:  # pragma: no cover - no Ray, no workers
    pass


@dataclass(frozen=True)
class JobHook:
    """``trace``: append one line per execution of a job to ``trace/<job_id>`` (counts recomputation);
    ``crash_once``: the first execution of each job kills its own worker process (``os._exit``), as an OOM kill or
    a lost node would; ``sleep``: seconds to sleep before working (lets a test interrupt a sweep mid-way);
    ``hog_method``: jobs of this method allocate ``hog_mb`` MB (touched: resident, past the memory the job declared)
    and then fail as a job killed for memory does, every attempt: ``hog_as="ray"`` raises Ray's
    ``OutOfMemoryError`` (what the job sees when Ray's memory monitor kills a worker it waits on), ``"python"`` a
    ``MemoryError`` (an allocation that failed)."""

    trace: str | None = None
    fail_method: str | None = None  # jobs of this method raise (the job's own error: recorded, not retried)
    crash_once: str | None = None
    sleep: float | None = None
    hog_method: str | None = None
    hog_mb: int = 0
    hog_as: str = "ray"

    def __call__(self, job) -> None:
        if self.trace:
            Path(self.trace).mkdir(parents=True, exist_ok=True)
            with open(Path(self.trace) / job.job_id, "a") as f:
                f.write(f"{os.getpid()} {datetime.now(timezone.utc).isoformat(timespec='milliseconds')}\n")
        if self.fail_method and job.method == self.fail_method:
            raise RuntimeError(f"planted failure of every {self.fail_method} job")
        if self.crash_once:
            marker = Path(self.crash_once) / job.job_id
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(str(os.getpid()))
                os._exit(1)
        if self.sleep:
            time.sleep(float(self.sleep))
        if self.hog_method and job.method == self.hog_method:
            hog = bytearray(self.hog_mb * 2**20)  # zero-filled: every page touched
            hog[:: 4096] = b"x" * len(hog[:: 4096])
            del hog
            if self.hog_as == "python":
                raise MemoryError(f"cannot allocate {self.hog_mb} MB")
            from ray.exceptions import OutOfMemoryError

            raise OutOfMemoryError(f"Task was killed due to the node running low on memory. Memory on the node "
                                   f"was exceeded by a task that allocated {self.hog_mb} MB past its declared memory.")
