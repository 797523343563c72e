"""The in-process executor for small jobs: same output as Ray, same error rows, same resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pytest

from workflows.annotate.pipeline import AnnotateConfig, annotate, choose_executor
from workflows.core.config import load_config
from workflows.corpus.contract import check_output

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[3]


def _cfg(*extra: str) -> AnnotateConfig:
    return load_config(AnnotateConfig, None, ["mlflow.enabled=false", *extra])


@pytest.fixture(scope="module")
def clips(three_clips) -> Path:
    return three_clips


def _faces(out: Path):
    t = pads.dataset(out / "faces", format="parquet").to_table().to_pandas()
    return t.sort_values(["video_id", "frame_index", "track_id"]).reset_index(drop=True)


def test_small_jobs_without_a_cluster_run_locally_and_the_rest_on_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert choose_executor(_cfg(), 3)[0] == "local"
    assert choose_executor(_cfg("executor.local_max_videos=2"), 3)[0] == "ray"
    assert choose_executor(_cfg("ray.address=ray://head:10001"), 1)[0] == "ray"
    assert choose_executor(_cfg("model.uri=/models/m"), 1)[0] == "ray"  # an LLM gets its own pool
    assert choose_executor(_cfg("ray.mllm.num_gpus=1"), 1)[0] == "ray"
    assert choose_executor(_cfg("executor.kind=ray"), 1)[0] == "ray"
    assert choose_executor(_cfg("executor.kind=local", "model.uri=/models/m"), 500)[0] == "local"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert choose_executor(_cfg(), 1)[0] == "ray"


def test_local_output_equals_ray_output(clips, tmp_path):
    import ray

    local = annotate(str(clips), str(tmp_path / "local"), _cfg("executor.kind=local"), progress=False)
    assert local.executor == "local" and local.videos_ok == 3 and local.plan["faces"]["concurrency"] == 2
    try:
        on_ray = annotate(str(clips), str(tmp_path / "ray"), _cfg("executor.kind=ray"), progress=False)
    finally:
        ray.shutdown()
    assert on_ray.executor == "ray"
    assert check_output(str(tmp_path / "local")) == []
    a, b = _faces(tmp_path / "local"), _faces(tmp_path / "ray")
    assert len(a) == len(b) == local.faces > 0
    for col in ("video_id", "frame_index", "track_id", "segment_id", "fe_label", "au_active"):
        assert a[col].astype(str).tolist() == b[col].astype(str).tolist(), col
    fe = lambda t: np.array([[p for _, p in row] for row in t.fe_probs])  # noqa: E731
    np.testing.assert_allclose(fe(a), fe(b), atol=1e-6)
    doc = json.loads(next((tmp_path / "local" / "runs").glob("*.json")).read_text())
    assert doc["timings"]["executor"] == "local"
    assert {"discover_s", "resume_check_s", "first_result_s", "sink_s"} <= set(doc["timings"]["breakdown"])


def test_a_video_that_kills_its_worker_becomes_an_error_row_and_spares_the_rest(clips, tmp_path, monkeypatch):
    # b_single kills every worker it meets; c_smile kills only the first one (a transient crash).
    monkeypatch.setenv("MIEN_FAULT_INJECT", "faces_exit:b_single,faces_exit_once:c_smile")
    monkeypatch.setenv("MIEN_FAULT_STATE_DIR", str(tmp_path / "faults"))
    (tmp_path / "faults").mkdir()
    out = tmp_path / "out"
    s = annotate(str(clips), str(out), _cfg("executor.kind=local"), progress=False)
    assert (s.videos_ok, s.videos_error) == (2, 1)
    videos = pads.dataset(out / "videos", format="parquet").to_table().to_pandas().set_index("video_uri")
    crashed = videos.loc[str(clips / "b_single.mp4")]
    assert crashed.status == "error" and crashed.error_kind == "worker_crash" and "died on every try" in crashed.error
    assert videos.loc[str(clips / "c_smile.mp4")].status == "ok"
    assert videos.loc[str(clips / "c_smile.mp4")].n_faces == videos.loc[str(clips / "a_smile.mp4")].n_faces > 0
    assert check_output(str(out)) == []


def test_a_stage_that_cannot_start_is_named_not_retried_as_crashes(clips, tmp_path, monkeypatch):
    from workflows.annotate.local import LocalStartError

    # The workers find no face models (an empty cache, downloads off): their stage cannot start.
    monkeypatch.setenv("MIEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("MIEN_OFFLINE", "1")
    with pytest.raises(LocalStartError, match="failed to start in a local worker"):
        annotate(str(clips), str(tmp_path / "out"), _cfg("executor.kind=local"), progress=False)


def test_cli_one_clip_prints_the_breakdown_and_resumes(clips, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copyfile(clips / "a_smile.mp4", one / "a.mp4")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    cmd = [sys.executable, "-m", "jobs.cli", "-v", "annotate", "--input", str(one), "--output", str(tmp_path / "o"),
           "--no-progress"]
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "1 ok" in first.stdout and "local worker process" in first.stdout
    line = next(x for x in first.stdout.splitlines() if x.startswith("time (local):"))
    assert "startup" in line and "first result" in line and "mlflow" in line
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "1 already done" in again.stdout and "executor: local" not in again.stderr
    import mlflow

    runs = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(
        [mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("mien-annotate").experiment_id])
    assert len(runs) == 2 and sorted(r.data.metrics["videos_ok"] for r in runs) == [0, 1]


def _affinity_once_all_run(barrier: Any) -> set[int]:
    barrier.wait(timeout=120)  # every worker holds a task: each answer comes from another process
    return os.sched_getaffinity(0)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or not 2 <= len(os.sched_getaffinity(0)) <= 8,
                    reason="pinning needs os.sched_setaffinity; the test spawns one worker per allowed core (2 to 8)")
def test_pinned_workers_each_run_on_a_core_of_their_own():
    """executor.pin_workers with one worker per allowed core: each on a core of its own. With pinning
    off, or fewer workers than cores (a second job would pin to the same first cores), every worker
    keeps every core."""
    import multiprocessing

    from workflows.annotate.local import _worker_pool

    allowed = os.sched_getaffinity(0)
    n = len(allowed)
    with multiprocessing.get_context("spawn").Manager() as manager:
        seen = {}
        for workers, pin in ((n, True), (n, False), (n - 1, True)):
            barrier = manager.Barrier(workers)
            pool = _worker_pool(workers, pin=pin)
            try:
                seen[workers, pin] = [f.result() for f in [pool.submit(_affinity_once_all_run, barrier)
                                                           for _ in range(workers)]]
            finally:
                pool.shutdown()
    pinned = seen[n, True]
    assert all(len(c) == 1 for c in pinned) and set().union(*pinned) == allowed
    assert seen[n, False] == [allowed] * n and seen[n - 1, True] == [allowed] * (n - 1)
