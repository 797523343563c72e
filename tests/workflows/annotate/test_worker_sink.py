"""``output.sink=workers``: the stage that finishes a batch of videos writes its chunk's faces and
tracks parts itself; the driver receives status rows and commits. Same output as the driver sink,
and exactly once when the driver or a worker dies between the two."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from workflows.annotate.pipeline import AnnotateConfig, annotate
from workflows.core.config import load_config
from workflows.core.faults import FAULT_EXIT_CODE
from workflows.corpus.contract import check_output
from workflows.corpus.reader import AnnotationOutput

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[3]
COMPARED = ["video_id", "frame_index", "track_id", "segment_id", "bbox", "fe_label", "fe_confidence", "au_active",
            "description", "model_id"]


def _cfg(*extra: str) -> AnnotateConfig:
    return load_config(AnnotateConfig, None, ["mlflow.enabled=false", "output.crops=false", *extra])


def _faces(out: Path) -> pd.DataFrame:
    faces = AnnotationOutput(str(out)).faces_of()[COMPARED]
    return faces.sort_values(["video_id", "frame_index", "track_id"]).reset_index(drop=True)


def _one_row_each(out: Path) -> dict[str, int]:
    """video file -> faces, asserting one current ok row per video with exactly its faces, and that
    no part is left uncommitted (readers ignore those, but nothing should stay behind)."""
    reader = AnnotationOutput(str(out))
    faces = reader.faces_of()
    state = {}
    for v in reader.current_videos():
        assert v["status"] == "ok", v
        mine = faces[faces["video_id"] == v["video_id"]]
        assert len(mine) == v["n_faces"] and set(mine["run_id"]) <= {v["run_id"]}, v["video_uri"]
        state[Path(v["video_uri"]).name] = int(v["n_faces"])
    assert reader.uncommitted_parts("faces") == [] and reader.uncommitted_parts("tracks") == []
    assert check_output(str(out)) == []
    return state


def test_the_workers_write_what_the_driver_would(three_clips, tmp_path):
    driver = annotate(str(three_clips), str(tmp_path / "driver"), _cfg("executor.kind=local"), progress=False)
    workers = annotate(str(three_clips), str(tmp_path / "workers"),
                       _cfg("executor.kind=local", "output.sink=workers"), progress=False)
    assert (workers.videos_ok, workers.faces, workers.tracks) == (driver.videos_ok, driver.faces, driver.tracks)
    assert workers.fe_counts == driver.fe_counts and workers.au_counts == driver.au_counts
    pd.testing.assert_frame_equal(_faces(tmp_path / "workers"), _faces(tmp_path / "driver"))
    assert _one_row_each(tmp_path / "workers") == _one_row_each(tmp_path / "driver")
    # one chunk per worker batch (a video each), merged into one chunk at the end
    for name in ("videos", "faces", "tracks"):
        assert sorted(p.name for p in (tmp_path / "workers" / name).glob("*.parquet")) == [
            f"{workers.run_id}-c00000.parquet"], name
    doc = json.loads((tmp_path / "workers" / "runs" / f"{workers.run_id}.json").read_text())
    assert doc["parts_written"] == 4 and doc["bytes_written"] > 0


def test_mllm_batches_of_several_videos_commit_as_chunks_merged_on_ray(three_clips, tmp_path):
    corpus = tmp_path / "in"
    shutil.copytree(three_clips, corpus)
    (corpus / "d_broken.mp4").write_bytes(b"not a video" * 50)
    out = tmp_path / "out"
    import ray

    try:
        s = annotate(str(corpus), str(out), _cfg("executor.kind=ray", "ray.fuse_stages=never", "ray.mllm.batch_size=2",
                                                 "ray.mllm.concurrency=1", "output.sink=workers"), progress=False)
    finally:
        ray.shutdown()
    assert (s.videos_ok, s.videos_error) == (3, 1), s.render()
    videos = AnnotationOutput(str(out)).current_videos()
    assert {Path(v["video_uri"]).name: v["status"] for v in videos}["d_broken.mp4"] == "error"
    # the workers' chunks of 2 videos, merged (in a Ray task) into one
    assert [p.name for p in (out / "videos").glob("*.parquet")] == [f"{s.run_id}-c00000.parquet"]
    faces = AnnotationOutput(str(out)).faces_of()
    assert len(faces) == s.faces and faces.groupby("video_id").size().to_dict() == {
        v["video_id"]: v["n_faces"] for v in videos if v["n_faces"]}


def _cli(corpus: Path, out: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
    sets = ["mlflow.enabled=false", "output.crops=false", "output.sink=workers", "executor.kind=local",
            "executor.local_workers=1"]
    return subprocess.run([sys.executable, "-m", "jobs.cli", "annotate", "--input", str(corpus), "--output", str(out),
                           "--no-progress", *[x for s in sets for x in ("--set", s)], *extra], cwd=ROOT,
                          env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **env},
                          capture_output=True, text=True, timeout=600)


def test_a_driver_killed_before_committing_a_written_chunk_loses_and_doubles_nothing(three_clips, tmp_path):
    """The worker wrote b_single's faces and tracks; the driver dies before the videos part that commits
    them. Readers never see those parts; the rerun annotates b_single again, commits it once, and
    removes the parts the dead run left."""
    out = tmp_path / "out"
    killed = _cli(three_clips, out, MIEN_FAULT_INJECT="commit_exit:b_single.mp4")
    assert killed.returncode == FAULT_EXIT_CODE, killed.stdout + killed.stderr
    left = AnnotationOutput(str(out))
    assert left.uncommitted_parts("faces")  # written by the worker, never committed
    assert "b_single.mp4" not in {Path(v["video_uri"]).name for v in left.current_videos()}
    rerun = _cli(three_clips, out)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    state = _one_row_each(out)
    assert set(state) == {"a_smile.mp4", "b_single.mp4", "c_smile.mp4"} and all(state.values())


def test_a_worker_killed_after_writing_its_chunk_is_retried_and_its_parts_removed(three_clips, tmp_path):
    out = tmp_path / "out"
    r = _cli(three_clips, out, MIEN_FAULT_INJECT="written_exit_once:c_smile.mp4", MIEN_FAULT_STATE_DIR=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "retrying them one at a time" in r.stdout + r.stderr
    state = _one_row_each(out)
    assert set(state) == {"a_smile.mp4", "b_single.mp4", "c_smile.mp4"} and state["c_smile.mp4"] > 0


def test_workers_write_their_chunks_to_s3(three_clips, s3_bucket):
    """The local worker processes write faces/tracks parts to the object store themselves (the same
    credentials and endpoint as the driver), and the driver commits them there."""
    from workflows.core import storage

    out = f"{s3_bucket}/out"
    s = annotate(str(three_clips), out, _cfg("executor.kind=local", "output.sink=workers"), progress=False)
    assert s.videos_ok == 3 and s.faces > 0
    reader = AnnotationOutput(out)
    assert len(reader.faces_of()) == s.faces and reader.uncommitted_parts("faces") == []
    assert [u.rsplit("/", 1)[-1] for u in storage.list_files(f"{out}/faces")] == [f"{s.run_id}-c00000.parquet"]
    assert check_output(out) == []


def test_a_compaction_stopped_after_its_commit_leaves_readers_exact(three_clips, tmp_path, monkeypatch):
    """The merged chunk is committed, then the run dies deleting the chunks it replaces: every video
    still reads once with its faces (the originals are older rows), and the next run removes them."""
    from workflows.core import storage

    out = tmp_path / "out"
    real_remove = storage.remove

    def failing_remove(uri: str) -> None:
        if "/videos/" in uri and "-w" in uri:
            raise OSError(5, "Input/output error")
        real_remove(uri)

    monkeypatch.setattr(storage, "remove", failing_remove)
    with pytest.raises(OSError, match="Input/output"):
        annotate(str(three_clips), str(out), _cfg("executor.kind=local", "output.sink=workers"), progress=False)
    monkeypatch.setattr(storage, "remove", real_remove)
    assert len(list((out / "videos").glob("*-w*.parquet"))) == 3 and list((out / "videos").glob("*-c*.parquet"))
    state = {Path(v["video_uri"]).name: v["n_faces"] for v in AnnotationOutput(str(out)).current_videos()}
    faces = AnnotationOutput(str(out)).faces_of()
    assert sorted(state) == ["a_smile.mp4", "b_single.mp4", "c_smile.mp4"] and len(faces) == sum(state.values())
    rerun = annotate(str(three_clips), str(out), _cfg("executor.kind=local", "output.sink=workers"), progress=False)
    assert rerun.videos_skipped == 3 and rerun.videos_ok == 0
    assert [p.name for p in (out / "videos").glob("*.parquet")] == [p.name for p in (out / "videos").glob("*-c*")]
    assert _one_row_each(out) == state
