"""The embedded Ray is quiet unless mien logs at debug level (``mien -v``): no token-auth notice
(token auth stays on: tests/reliability/test_exposure.py) and no native start-up notices of the
face libraries among the worker output forwarded to the driver; anything else a worker prints
still reaches the terminal."""

from __future__ import annotations

import logging
import time

import pytest

from tests.conftest import environ

# What MediaPipe prints in every worker that loads it (absl, before InitGoogle), and a line of ours.
NOTICE = "W0000 00:00:1796531190.374613    4073 face_landmarker_graph.cc:181] Sets FaceBlendshapesGraph"
PROBLEM = "a worker's own message that must reach the terminal"


def _worker_prints(lines: list[str]) -> str | None:
    import os
    import sys

    for line in lines:
        print(line, file=sys.stderr, flush=True)
    return os.environ.get("OPENCV_LOG_LEVEL")


@pytest.mark.parametrize("verbose", [False, True], ids=["default", "mien -v"])
def test_local_ray_holds_back_start_up_notices_unless_verbose(verbose, capfd):
    import ray

    from workflows.core.cluster import init_ray

    assert not ray.is_initialized()
    workflows_log = logging.getLogger("workflows")
    level = workflows_log.level
    if verbose:
        workflows_log.setLevel(logging.DEBUG)
    seen = ""
    try:
        with environ(RAY_AUTH_MODE=None, OPENCV_LOG_LEVEL=None):  # Ray's default: token auth, with its notice
            init_ray(None, num_cpus=1)
            try:
                opencv_level = ray.get(ray.remote(_worker_prints).remote([NOTICE, PROBLEM]))
                deadline = time.monotonic() + 60  # forwarded output arrives asynchronously
                while PROBLEM not in seen and time.monotonic() < deadline:
                    seen += capfd.readouterr().err
                    time.sleep(0.1)
            finally:
                ray.shutdown()
    finally:
        workflows_log.setLevel(level)
    seen += capfd.readouterr().err
    assert PROBLEM in seen
    assert (NOTICE in seen) is verbose
    assert ("Token authentication is enabled" in seen) is verbose
    assert opencv_level == (None if verbose else "ERROR")
