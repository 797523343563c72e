"""Long videos in time windows (decode.window_s): the windows of one video run on different face
workers, and the output equals a whole read of the video: the same sampled frames, the same faces
and crops, the same tracks and AU normalisation, and one video row that commits when all its
windows have. A window whose worker dies is retried alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from workflows.annotate.pipeline import AnnotateConfig, annotate
from workflows.annotate.windows import windows_of
from workflows.core.config import ConfigError, load_config
from workflows.corpus.contract import check_output

pytestmark = pytest.mark.timeout(900)

# The smiling sample is 19.7 s at 23.976 fps: windows of 5 s give 3 windows of 6.56 s, and at
# fps:2 the smile's track crosses both boundaries.
WINDOWED = ["decode.window_s=5", "decode.sampling=fps:2"]
WHOLE = ["decode.window_s=0", "decode.sampling=fps:2"]


def _cfg_args(*extra: str) -> list[str]:
    return ["mlflow.enabled=false", "output.flush_every_videos=1", *extra]


def _cfg(*extra: str) -> AnnotateConfig:
    return load_config(AnnotateConfig, None, _cfg_args(*extra))


def test_windows_cover_the_video_in_equal_spans_the_last_open_ended():
    spans = windows_of(19.685, 5)
    assert len(spans) == 3 and spans[0][0] == 0 and spans[-1][1] is None
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert windows_of(9.9, 5) == [(0.0, None)]  # shorter than two windows: read whole
    assert windows_of(600, 0) == [(0.0, None)]  # off
    # a lone long video keeps every worker busy: the count rounds up to a multiple of the workers
    assert len(windows_of(354, 60, 2)) == 6 and len(windows_of(354, 60, 16)) == 5 and len(windows_of(354, 60)) == 5
    assert windows_of(None, 5) == [(0.0, None)]  # unknown duration: read whole


def test_a_negative_window_is_refused_at_config_load():
    with pytest.raises(ConfigError, match="window_s"):
        load_config(AnnotateConfig, None, ["decode.window_s=-1"])


def test_merged_windows_equal_the_whole_read_face_for_face(asset):
    """The face stage alone, no Ray: three windows read separately and merged give the very arrays
    of one read (same frames, boxes, crops bytes, AU evidence, tracks, segments, flags)."""
    from workflows.annotate.stages import DecodeFacesStage, merge_window_rows, unpack_faces

    clip = str(asset("sample_smiling_video"))
    cfg = _cfg(*WINDOWED)
    stage = DecodeFacesStage(cfg)
    try:
        probe = stage.process_video("v", clip)
        assert probe["status"] == "windowed" and probe["n_faces"] == 0
        spans = windows_of(probe["duration_s"], 5)
        parts = [stage.process_window("v", clip, a, b) for a, b in spans]
        merged = merge_window_rows(probe, parts, cfg)
        stage.cfg.decode.window_s = 0
        whole = stage.process_video("v", clip)
    finally:
        stage.extractor.close()
    assert whole["status"] == merged["status"] == "ok"
    assert [p["n_frames"] for p in parts] == [14, 13, 13] and merged["n_frames"] == whole["n_frames"] == 40
    for key in ("n_faces", "n_tracks", "width", "height", "rotation", "duration_s", "fps"):
        assert merged[key] == whole[key], key
    a, b = unpack_faces(merged["faces_npz"]), unpack_faces(whole["faces_npz"])
    assert set(a) == set(b)
    for key in b:
        if key == "crop_jpeg":
            assert a[key] == b[key]
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # the smile's track spans the windows: one track, not one per window
    assert len(set(b["track_id"].tolist())) < 3 and b["timestamp_s"].max() > spans[-1][0]


def _faces(out: Path):
    t = pads.dataset(out / "faces", format="parquet").to_table().to_pandas()
    return t.drop(columns=["run_id"]).sort_values(["video_id", "frame_index", "track_id"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory, asset) -> Path:
    d = tmp_path_factory.mktemp("long")
    shutil.copyfile(asset("sample_smiling_video"), d / "smile.mp4")
    return d


@pytest.fixture(scope="module")
def long_and_short(tmp_path_factory, asset) -> Path:
    """The long clip among more short ones than the driver probes itself for one worker (4 per worker)."""
    d = tmp_path_factory.mktemp("mixed")
    shutil.copyfile(asset("sample_smiling_video"), d / "smile.mp4")
    for k in range(4):
        shutil.copyfile(asset("sample_single_face_video"), d / f"short{k}.mp4")
    return d


@pytest.mark.parametrize(("executor", "sink", "corpus", "workers"), [
    # one video: the driver probes it and starts on its windows at once, 4 (3 rounded up to a
    # multiple of the 2 face actors)
    ("ray", "workers", "long_clip", 2),
    ("local", "driver", "long_and_short", 1),  # five videos on one worker: the face stage probes them
])
def test_a_long_video_in_windows_annotates_like_a_whole_read(tmp_path, executor, sink, corpus, workers, request):
    import ray

    corpus = request.getfixturevalue(corpus)
    n = len(list(corpus.iterdir()))
    run = [f"executor.kind={executor}", f"output.sink={sink}", f"executor.local_workers={workers}",
           f"ray.num_cpus={workers}"]
    spans = len(windows_of(19.685, 5, workers))
    try:
        whole = annotate(str(corpus), str(tmp_path / "whole"), _cfg(*WHOLE, *run), progress=False)
        split = annotate(str(corpus), str(tmp_path / "split"), _cfg(*WINDOWED, *run), progress=False)
    finally:
        ray.shutdown()
    assert whole.windowed_videos == 0 and (split.windowed_videos, split.windows) == (1, spans)
    assert f"1 read in {spans} time windows" in split.render()
    assert split.videos_ok == n and split.faces == whole.faces > 0 and split.tracks == whole.tracks
    assert check_output(str(tmp_path / "split")) == []
    a, b = _faces(tmp_path / "split"), _faces(tmp_path / "whole")
    assert a.equals(b)
    videos = pads.dataset(tmp_path / "split" / "videos", format="parquet").to_table().to_pylist()
    assert sorted(v["status"] for v in videos) == ["ok"] * n
    assert [v["n_frames"] for v in videos if v["video_uri"].endswith("smile.mp4")] == [40]


@pytest.mark.parametrize(("executor", "dies"), [("local", "window"), ("ray", "window"), ("ray", "merge")])
def test_a_window_whose_worker_dies_is_retried_alone(long_clip, tmp_path, monkeypatch, executor, dies):
    """kill -9 of the face worker reading the middle window (or of the worker merging the video):
    that window (the merge) runs again, the video commits once, equal to a whole read."""
    import ray

    (tmp_path / "faults").mkdir()
    spans = windows_of(19.685, 5, 2)
    monkeypatch.setenv("MIEN_FAULT_INJECT", f"faces_exit_once:smile.mp4#t={spans[1][0]:g}" if dies == "window"
                       else "mllm_exit_once:smile.mp4")
    monkeypatch.setenv("MIEN_FAULT_STATE_DIR", str(tmp_path / "faults"))
    try:
        split = annotate(str(long_clip), str(tmp_path / "split"),
                         _cfg(*WINDOWED, f"executor.kind={executor}", "executor.local_workers=2", "ray.num_cpus=2"),
                         progress=False)
    finally:
        ray.shutdown()
    assert (tmp_path / "faults").exists() and any((tmp_path / "faults").iterdir()), "the fault never fired"
    monkeypatch.delenv("MIEN_FAULT_INJECT")
    whole = annotate(str(long_clip), str(tmp_path / "whole"), _cfg(*WHOLE, "executor.kind=local"), progress=False)
    assert split.videos_ok == 1 and split.videos_error == 0, split.errors
    assert _faces(tmp_path / "split").equals(_faces(tmp_path / "whole")) and whole.faces > 0


def test_a_driver_killed_at_a_windowed_videos_commit_leaves_nothing_then_a_rerun_finishes_it(long_clip, tmp_path):
    """kill -9 semantics (os._exit) of the driver between the writing of a windowed video's parts
    and its commit: readers see no row of it, and the rerun commits it once, equal to a whole read."""
    import os
    import subprocess
    import sys

    from workflows.core.faults import FAULT_EXIT_CODE
    from workflows.corpus.reader import AnnotationOutput

    root = Path(__file__).resolve().parents[3]
    cmd = [sys.executable, "-m", "jobs.cli", "annotate", "--input", str(long_clip), "--output", str(tmp_path / "split"),
           "--no-progress", *[x for kv in _cfg_args(*WINDOWED) for x in ("--set", kv)]]
    env = {**os.environ, "MIEN_FAULT_INJECT": "commit_exit:smile", "MIEN_FAULT_STATE_DIR": str(tmp_path)}
    killed = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == FAULT_EXIT_CODE, killed.stderr[-2000:]
    stopped = AnnotationOutput(str(tmp_path / "split"), must_exist=False)
    assert stopped.uncommitted_parts("faces") and stopped.current_videos() == []  # written, never committed
    env.pop("MIEN_FAULT_INJECT")
    rerun = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    annotate(str(long_clip), str(tmp_path / "whole"), _cfg(*WHOLE), progress=False)
    current = AnnotationOutput(str(tmp_path / "split")).current_videos()
    assert [v["status"] for v in current] == ["ok"]
    assert _faces(tmp_path / "split").equals(_faces(tmp_path / "whole"))
    assert check_output(str(tmp_path / "split")) == []
