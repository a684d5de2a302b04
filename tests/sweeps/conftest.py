"""One real local Ray cluster shared by the sweep tests (started once: ~10 s on a busy machine).

It is a :class:`ray.cluster_utils.Cluster`: a head node with 2 CPUs that this process joins, to which a test
may add nodes (and remove them: a machine lost mid-run) through ``ray_nodes``.
"""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture(scope="session")
def ray_nodes():
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from circuits.sweeps import ray_session
    from circuits.sweeps.memory import RAY_SYSTEM_CONFIG
    from circuits.sweeps.runner import QUIET_ENV

    for key, value in {**QUIET_ENV, "RAY_AUTH_MODE": "disabled"}.items():
        os.environ.setdefault(key, value)
    temp = f"/tmp/circuits-ray-test-{os.getpid()}"  # short: Ray's socket paths must stay under ~107 characters
    # Cluster.add_node records the head's address in Ray's default temp folder (/tmp/ray) whatever temp_dir says,
    # and does not create that folder: on a machine where Ray never ran, the fixture failed with FileNotFoundError
    from ray._private.utils import get_ray_address_file

    os.makedirs(os.path.dirname(get_ray_address_file(None)), exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False,
                                                            "temp_dir": temp, "_system_config": RAY_SYSTEM_CONFIG})
    try:
        with ray_session(address=cluster.address):
            yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(ray_nodes):
    import ray

    yield ray
