"""The cluster connection, the one place every job meets Ray: connect to ``--address`` /
``RAY_ADDRESS`` (shipping the project's packages to a remote cluster) or start an embedded
single-node Ray bound to loopback. Ray is imported inside the functions, so importing this
module costs nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ClusterConfig:
    """Where a job runs (the ``ray:`` section of every job config)."""

    address: str | None = None  # else RAY_ADDRESS, else a local Ray on 127.0.0.1
    num_cpus: int | None = None  # local Ray only

    def connect(self) -> dict[str, Any]:
        """Connect (see :func:`init_ray`); returns the cluster's resources."""
        return init_ray(self.address, self.num_cpus)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Connect to ``address`` (or ``RAY_ADDRESS``); with neither, start a local Ray that listens
    on 127.0.0.1 only (no dashboard; token auth as Ray's default). Returns the cluster's resources."""
    import ray

    if not ray.is_initialized():
        addr = address or os.environ.get("RAY_ADDRESS")
        if addr:
            kwargs: dict[str, Any] = {"address": addr, "log_to_driver": True}
            # Ray 2.60 marks a submitted job's driver with RAY_JOB_CONFIG_JSON_ENV_VAR (its
            # runtime env) and no RAY_JOB_SUBMISSION_ID.
            in_job = os.environ.get("RAY_JOB_SUBMISSION_ID") or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
            if not in_job:
                # A plain driver on a remote cluster ships our packages; inside a Ray job the
                # job's working_dir already carries them. Paths, not module objects: Ray
                # deep-copies the runtime env when it merges it with a job's.
                packages = project_packages()
                kwargs["runtime_env"] = {"py_modules": packages}
            log.info("connecting to Ray at %s", addr)
            ray.init(**kwargs)
        else:
            with _loopback_only():
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                         dashboard_host="127.0.0.1", log_to_driver=True, configure_logging=False)
    return ray.cluster_resources()


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Keep an embedded single-node Ray off the network while it starts.

    Ray has no public switch for this: its node IP is the host's address, and GCS, raylet,
    workers and the dashboard/job agent listen on all interfaces or on that address. With
    cluster mode off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's laptop setting) the node
    IP is 127.0.0.1 and every server binds to loopback; no other node can join, which an
    embedded cluster does not need. Child processes read the variable at start-up; this
    process imported ray already, so its cached flag is switched for the duration too.
    """
    from ray._private import ray_constants

    key = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_env, saved_flag = os.environ.get(key), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[key] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved_env


def node_resources() -> list[dict[str, float]]:
    """Resources of each alive node of the connected cluster (for per-node pool packing);
    empty when Ray is not connected (the plan then treats the totals as one node)."""
    import ray

    if not ray.is_initialized():
        return []
    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def project_packages() -> list[str]:
    """Directories of the packages a Ray worker needs to run any mien stage (``workflows``,
    ``model``), found without importing them: shipped as ``py_modules`` to remote clusters."""
    out = []
    for name in ("workflows", "model"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"package {name!r} not importable; install mien (pip install -e .) first")
        out.append(str(list(spec.submodule_search_locations)[0]))
    return out
