"""One real local Ray cluster (2 CPUs) shared by the sweep tests (started once: ~10 s on a busy machine)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    pytest.importorskip("ray")
    from circuits.sweeps import ray_session

    with ray_session(num_cpus=2) as ray:
        yield ray
