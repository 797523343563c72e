"""Fixtures shared by the workflow tests that run real Ray jobs (train, retrain)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for the module; MLFLOW_TRACKING_URI is cleared so each test's own sqlite
    store is used, and restored afterwards."""
    import ray

    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    if started:
        ray.shutdown()
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved
