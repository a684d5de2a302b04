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
    a lost node would; ``sleep``: seconds to sleep before working (lets a test interrupt a sweep mid-way)."""

    trace: str | None = None
    crash_once: str | None = None
    sleep: float | None = None

    def __call__(self, job) -> None:
        if self.trace:
            Path(self.trace).mkdir(parents=True, exist_ok=True)
            with open(Path(self.trace) / job.job_id, "a") as f:
                f.write(f"{os.getpid()} {datetime.now(timezone.utc).isoformat(timespec='milliseconds')}\n")
        if self.crash_once:
            marker = Path(self.crash_once) / job.job_id
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(str(os.getpid()))
                os._exit(1)
        if self.sleep:
            time.sleep(float(self.sleep))
