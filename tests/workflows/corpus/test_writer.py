"""The sink when several runs share an output and when a ``--force`` rerun is interrupted.

Real processes hold the leases that another run's start-up must respect (one paused between its
faces write and its commit with the ``commit_pause`` fault, one killed there with ``kill -9``);
an interrupted clean-up is a storage write failing, as a full disk fails it, after each
possible number of successful writes.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.outputs.conftest import RUN2, build_annotated_output
from tests.workflows.corpus.test_reader import RUN2_FINISHED, RUN3, write_chunk
from workflows.core import storage
from workflows.corpus import schema
from workflows.corpus.contract import check_output
from workflows.corpus.lease import LEASE_DIR
from workflows.corpus.reader import AnnotationOutput
from workflows.corpus.writer import AnnotationSink

ROOT = Path(__file__).resolve().parents[3]
RUN4 = "20260104T000000Z-dddd4444"

# A run writing one chunk of video d4 under a lease: it stops between its faces/tracks writes
# and its commit (MIEN_FAULT_INJECT=commit_pause), commits once released, then ends.
CHUNK_WRITER = """
import datetime as dt, sys
from workflows.corpus import schema
from workflows.corpus.lease import RunLease
from workflows.corpus.writer import AnnotationSink
root, run_id = sys.argv[1:3]
with RunLease(root, run_id, ttl_s=60) as lease:
    sink = AnnotationSink(root, run_id, lease=lease)
    sink.add(schema.table("videos", [{"video_id": "d4", "video_uri": "/corpus/d4.mp4", "status": "ok",
                                      "run_id": run_id, "n_faces": 2, "finished_at": sink.commit_time()}]),
             schema.table("faces", [{"video_id": "d4", "frame_index": i, "track_id": 0, "run_id": run_id}
                                    for i in range(2)]),
             schema.table("tracks", []), n_videos=1)
    sink.flush()
"""


def current_state(root: Path) -> dict[str, tuple[str, str, int]]:
    """video_id -> (status, run_id, faces) as every reader sees it; asserts they agree with each
    other and with the row's n_faces."""
    out = AnnotationOutput(str(root))
    faces = out.faces_of()
    per_video = faces.groupby("video_id").size().to_dict() if len(faces) else {}
    state = {}
    for v in out.current_videos():
        vid = v["video_id"]
        rows = out.rows_of_video(vid, "faces", ["video_id", "run_id"])
        assert set(rows.column("run_id").to_pylist()) <= {v["run_id"]}, vid  # that run's faces only
        assert len(rows) == per_video.get(vid, 0) == (v["n_faces"] if v["status"] == "ok" else 0), vid
        state[vid] = (v["status"], v["run_id"], len(rows))
    ok = out.committed_videos()
    assert ok["video_id"].is_unique
    assert sorted(ok["video_id"]) == sorted(k for k, s in state.items() if s[0] == "ok")
    return state


def check_contract(root: Path) -> None:
    assert check_output(str(root)) == []


def _start_chunk_writer(root: Path, run_id: str, state: Path) -> tuple[subprocess.Popen, Path]:
    env = dict(os.environ, MIEN_FAULT_INJECT="commit_pause:d4.mp4", MIEN_FAULT_STATE_DIR=str(state))
    p = subprocess.Popen([sys.executable, "-c", CHUNK_WRITER, str(root), run_id], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        paused = list(state.glob("mien-fault-*.paused"))
        if paused:
            return p, paused[0]
        time.sleep(0.05)
    raise AssertionError(f"the chunk writer never reached its commit: {p.communicate()[0]}")


def test_a_live_runs_chunk_in_flight_survives_another_runs_start_a_killed_runs_does_not(tmp_path):
    """Before leases, a starting run removed every uncommitted part, so a shard in flight then
    committed d4 as ok with its faces gone."""
    fx = build_annotated_output(tmp_path)
    state = tmp_path / "fault_state"
    state.mkdir()
    part = f"{RUN3}-00000.parquet"

    writer, paused = _start_chunk_writer(fx.root, RUN3, state)
    assert (fx.root / LEASE_DIR / f"{RUN3}.lease").exists()
    assert AnnotationSink(str(fx.root), RUN4).remove_orphans() == []  # another run starts now
    assert (fx.root / "faces" / part).exists()
    paused.unlink()  # the writer commits and ends
    assert writer.wait(timeout=60) == 0, writer.communicate()[0]
    assert current_state(fx.root)["d4"] == ("ok", RUN3, 2)
    assert not list((fx.root / LEASE_DIR).iterdir())  # an ended run leaves no lease

    killed_run = "20260105T000000Z-eeee5555"
    writer, _ = _start_chunk_writer(fx.root, killed_run, state)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=60)
    removed = AnnotationSink(str(fx.root), RUN4).remove_orphans()  # at once: its process is gone
    assert sorted(Path(u).relative_to(fx.root).as_posix() for u in removed) == [
        f"faces/{killed_run}-00000.parquet", f"tracks/{killed_run}-00000.parquet"]
    assert not list((fx.root / LEASE_DIR).iterdir())
    assert current_state(fx.root)["d4"] == ("ok", RUN3, 2)
    check_contract(fx.root)


def test_force_rerun_replaces_rows_only_once_its_own_are_committed(tmp_path, monkeypatch):
    """A --force rerun of the interview committed 2 faces (was 9). Readers see the new row and its
    faces only at once; drop_replaced then makes the files exact, and a write failing after any
    number of its writes (full disk) leaves readers seeing the same."""
    fx = build_annotated_output(tmp_path)
    before = current_state(fx.root)
    assert before[fx.video_id] == ("ok", RUN2, fx.n_faces)
    write_chunk(fx.root, RUN3, fx.video_id, RUN2_FINISHED + dt.timedelta(days=1), 2)
    expected = {**before, fx.video_id: ("ok", RUN3, 2)}
    assert current_state(fx.root) == expected
    assert [v["attempts"] for v in AnnotationOutput(str(fx.root)).current_videos()
            if v["video_id"] == fx.video_id] == [3]

    real_write = storage.write_bytes
    for allowed in range(3):  # faces, tracks, then videos of RUN2's part
        root = tmp_path / f"interrupted{allowed}"
        shutil.copytree(fx.root, root)
        writes = []

        def failing_write(uri, data, _writes=writes, _allowed=allowed):
            if len(_writes) == _allowed:
                raise OSError(28, "No space left on device")
            _writes.append(uri)
            real_write(uri, data)

        monkeypatch.setattr(storage, "write_bytes", failing_write)
        with pytest.raises(OSError, match="No space"):
            AnnotationSink(str(root), RUN4).drop_replaced()
        monkeypatch.setattr(storage, "write_bytes", real_write)
        assert current_state(root) == expected, allowed

    sink = AnnotationSink(str(fx.root), RUN4)
    assert sink.drop_replaced() == 1
    assert current_state(fx.root) == expected
    check_contract(fx.root)  # the files alone: one ok row per video, no duplicate faces
    faces = pd.read_parquet(fx.root / "faces")
    assert faces.groupby("video_id")["run_id"].unique().map(list).to_dict() == {fx.video_id: [RUN3]}
    assert sink.drop_replaced() == 0


def test_a_failed_force_rerun_replaces_the_ok_row(tmp_path):
    """--force on a video whose redo fails: its current row is the error, its old faces are gone
    from every reader, and a plain rerun tries it again."""
    fx = build_annotated_output(tmp_path)
    sink = AnnotationSink(str(fx.root), RUN3)
    sink.drop_replaced()  # reads the newest commit time: this run's rows come after it
    stamp = sink.commit_time()
    assert stamp > RUN2_FINISHED
    sink.add(schema.table("videos", [{"video_id": fx.video_id, "video_uri": str(fx.video_path), "status": "error",
                                      "error": "decode failed", "error_kind": "decode_error", "run_id": RUN3,
                                      "finished_at": stamp}]),
             schema.FACES.empty_table(), schema.TRACKS.empty_table(), n_videos=1)
    sink.flush()
    state = current_state(fx.root)
    assert state[fx.video_id] == ("error", RUN3, 0)
    assert fx.video_id not in AnnotationSink(str(fx.root), RUN4).done_video_ids()
    assert AnnotationSink(str(fx.root), RUN4).drop_replaced() == 1
    assert current_state(fx.root) == state and not len(pd.read_parquet(fx.root / "faces"))
    check_contract(fx.root)


def test_killed_writes_temporaries_are_removed_once_stale(tmp_path):
    """What a write killed before its rename leaves (``.tmp-*`` next to the part, a write probe in
    the root): removed once older than the lease time to live; a fresh one may be a live write."""
    fx = build_annotated_output(tmp_path)
    old = time.time() - 3600
    stale = [fx.root / "faces" / ".tmp-k1ll3d", fx.root / "videos" / ".tmp-0ld", fx.root / ".mien-write-test-1-2"]
    for p in stale:
        p.write_bytes(b"half a part")
        os.utime(p, (old, old))
    fresh = fx.root / "faces" / ".tmp-in-flight"
    fresh.write_bytes(b"being written")
    AnnotationSink(str(fx.root), RUN3).prepare(temporaries_older_than_s=120)
    assert not any(p.exists() for p in stale) and fresh.exists()
    assert current_state(fx.root)[fx.video_id] == ("ok", RUN2, fx.n_faces)


def test_killed_multipart_uploads_are_aborted_on_s3(s3_bucket):
    import boto3

    out = f"{s3_bucket}/out"
    storage.write_bytes(f"{out}/videos/x.parquet", b"x")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    bucket = s3_bucket.removeprefix("s3://")
    killed = s3.create_multipart_upload(Bucket=bucket, Key="out/faces/big.parquet")
    elsewhere = s3.create_multipart_upload(Bucket=bucket, Key="other/faces/big.parquet")
    # (moto dates every upload 2010-11-10, so the age rule is only tested on local files above)
    removed = storage.remove_stale_temporaries(f"{out}/faces", older_than_s=120)
    assert removed == [f"{s3_bucket}/out/faces/big.parquet?uploadId={killed['UploadId']}"]
    left = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [elsewhere["UploadId"]]
