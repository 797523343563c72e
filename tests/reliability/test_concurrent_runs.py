"""Several `mien annotate` runs on one output root, and a `--force` run killed before its commit.

Real `python -m jobs.cli annotate` processes, each with its own embedded Ray, on real face clips;
the ``commit_pause`` / ``commit_exit`` faults (workflows/core/faults.py) stop or kill a driver
between a chunk's faces/tracks writes and the videos part that commits them, so the
interleavings are exact, and every wait is on a file appearing or a process ending.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.reliability.conftest import ROOT, annotate_cfg, check_contract, local_ray
from workflows.annotate.pipeline import annotate
from workflows.core.faults import FAULT_EXIT_CODE
from workflows.corpus.reader import AnnotationOutput

pytestmark = pytest.mark.timeout(600)

SMALL_MACHINE = ["--no-progress", "--set", "mlflow.enabled=false", "--set", "output.crops=false",
                 "--set", "output.flush_every_videos=1", "--set", "ray.faces.concurrency=1",
                 "--set", "ray.faces.num_cpus=0.5", "--set", "ray.mllm.num_cpus=0.25"]


def _annotate_cli(input_dir: Path, out: Path, *extra: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", "annotate", "--input", str(input_dir),
                             "--output", str(out), *SMALL_MACHINE, *extra], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_file(pattern: str, where: Path, proc: subprocess.Popen, timeout_s: float = 300) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        found = sorted(where.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"{pattern} never appeared in {where}; the run said:\n{proc.communicate()[0]}")


def _corpus(face_corpus: Path, where: Path, names: list[str]) -> Path:
    where.mkdir()
    for n in names:
        shutil.copyfile(face_corpus / n, where / n)
    return where


def reader_state(out: Path) -> dict[str, tuple[str, int]]:
    """video file -> (run_id, faces) as the readers see it, asserting that every video has one
    ok row and exactly its faces: n_faces of the row, all from that row's run."""
    reader = AnnotationOutput(str(out))
    current = reader.current_videos()
    assert all(v["status"] == "ok" for v in current), current
    faces = reader.faces_of()
    state = {}
    for v in current:
        mine = faces[faces["video_id"] == v["video_id"]] if len(faces) else faces
        assert len(mine) == v["n_faces"], (v["video_uri"], len(mine), v["n_faces"])
        assert set(mine.get("run_id", [])) <= {v["run_id"]}
        state[Path(v["video_uri"]).name] = (v["run_id"], int(v["n_faces"]))
    assert reader.committed_videos()["video_id"].is_unique
    return state


def test_runs_sharing_an_output_keep_each_others_work(face_corpus, tmp_path):
    """Run A (shard 1) is stopped with a chunk in flight; run B starts on the same input and run C
    on shard 2 of the same corpus. Before leases, B annotated shard 1 again (two ok rows per
    video) and both B and C deleted A's chunk in flight, which A then committed without faces."""
    shard1 = _corpus(face_corpus, tmp_path / "shard1", ["clip00.mp4", "clip01.mp4", "still.jpg"])
    shard2 = _corpus(face_corpus, tmp_path / "shard2", ["clip02.mp4", "clip03.mp4"])
    out = tmp_path / "out"
    state = tmp_path / "fault_state"
    state.mkdir()

    a = _annotate_cli(shard1, out, MIEN_FAULT_INJECT="commit_pause:clip00.mp4", MIEN_FAULT_STATE_DIR=str(state))
    paused = _wait_for_file("mien-fault-*.paused", state, a)
    in_flight = [p for p in (out / "faces").glob("*.parquet") if not (out / "videos" / p.name).exists()]
    assert len(in_flight) == 1
    run_a = in_flight[0].name.rsplit("-", 1)[0]
    assert (out / "_runs" / f"{run_a}.lease").exists()

    b = _annotate_cli(shard1, out)
    log_b = b.communicate(timeout=300)[0]
    assert b.returncode == 0, log_b
    assert f"left to run {run_a}" in log_b and "videos: 0 ok, 0 error" in log_b, log_b

    c = _annotate_cli(shard2, out)
    log_c = c.communicate(timeout=300)[0]
    assert c.returncode == 0 and "2 ok, 0 error" in log_c, log_c
    assert in_flight[0].exists(), "run C removed run A's chunk in flight"

    paused.unlink()  # A commits its chunk and finishes
    log_a = a.communicate(timeout=300)[0]
    assert a.returncode == 0 and "3 ok, 0 error" in log_a, log_a
    check_contract(str(out))
    got = reader_state(out)
    assert sorted(got) == ["clip00.mp4", "clip01.mp4", "clip02.mp4", "clip03.mp4", "still.jpg"]
    assert {got[n][0] for n in ("clip00.mp4", "clip01.mp4", "still.jpg")} == {run_a}
    assert all(n > 0 for _, n in got.values())
    assert not list((out / "_runs").iterdir())  # every run removed its lease


def test_force_killed_before_its_commit_leaves_old_or_new_rows_then_completes(face_corpus, tmp_path):
    """`--force` killed (kill -9 at the point) after writing clip01's faces, before committing them.
    Before the fix, --force deleted every old row first: the videos it had not redone were gone
    (and a kill inside that deletion left ok rows without faces)."""
    corpus = _corpus(face_corpus, tmp_path / "corpus", ["clip00.mp4", "clip01.mp4", "still.jpg"])
    out = tmp_path / "out"
    cfg = annotate_cfg(tmp_path, "output.flush_every_videos=1", "ray.faces.concurrency=1")
    with local_ray():
        first = annotate(str(corpus), str(out), cfg, progress=False)
        assert first.videos_ok == 3
        clean = reader_state(out)

        forced = _annotate_cli(corpus, out, "--force", MIEN_FAULT_INJECT="commit_exit:clip01.mp4")
        log = forced.communicate(timeout=300)[0]
        assert forced.returncode == FAULT_EXIT_CODE, log
        killed = reader_state(out)  # every video still has one ok row and its faces, old or new
        assert sorted(killed) == sorted(clean)
        assert killed["clip01.mp4"] == clean["clip01.mp4"]  # its new faces never committed
        assert all(killed[k][1] == clean[k][1] for k in clean)

        again = annotate(str(corpus), str(out), cfg, progress=False)  # a plain rerun: nothing to redo
        assert again.videos_skipped == 3 and again.videos_ok == 0
        check_contract(str(out))  # the killed run's chunk and the rows it replaced are gone from the files
        assert reader_state(out) == killed

        redo = annotate(str(corpus), str(out), cfg, force=True, progress=False)
        assert redo.videos_ok == 3
    check_contract(str(out))
    assert reader_state(out) == {k: (redo.run_id, n) for k, (_, n) in clean.items()}
    faces = pd.read_parquet(out / "faces")
    assert set(faces["run_id"]) == {redo.run_id} and len(faces) == sum(n for _, n in clean.values())


def test_runs_sharing_an_s3_output_keep_each_others_work(face_corpus, tmp_path, s3_bucket):
    """The same on an S3 output (moto): the lease and the per-run cleanup work on an object store,
    where there is no rename and no file lock. Run A is stopped with a chunk in flight; run C
    annotates another shard into the same bucket prefix; A then commits, and nothing is lost."""
    from workflows.core import storage

    shard1 = _corpus(face_corpus, tmp_path / "shard1", ["clip00.mp4", "still.jpg"])
    shard2 = _corpus(face_corpus, tmp_path / "shard2", ["clip02.mp4"])
    out = f"{s3_bucket}/out"
    state = tmp_path / "fault_state"
    state.mkdir()
    a = _annotate_cli(shard1, out, MIEN_FAULT_INJECT="commit_pause:clip00.mp4", MIEN_FAULT_STATE_DIR=str(state))
    paused = _wait_for_file("mien-fault-*.paused", state, a)
    faces = [f for f in storage.list_files(f"{out}/faces", (".parquet",))
             if not storage.exists(f"{out}/videos/{f.rsplit('/', 1)[-1]}")]  # the chunk in flight
    assert len(faces) == 1 and storage.list_files(f"{out}/_runs", (".lease",))

    c = _annotate_cli(shard2, out)
    log_c = c.communicate(timeout=300)[0]
    assert c.returncode == 0 and "1 ok, 0 error" in log_c, log_c
    assert storage.exists(faces[0]), "run C removed run A's chunk in flight"

    paused.unlink()
    log_a = a.communicate(timeout=300)[0]
    assert a.returncode == 0 and "2 ok, 0 error" in log_a, log_a
    local = tmp_path / "copy"
    fs, path = storage.filesystem(out)
    fs.invalidate_cache()
    fs.get(path, str(local), recursive=True)
    check_contract(str(local))
    got = reader_state(local)
    assert sorted(got) == ["clip00.mp4", "clip02.mp4", "still.jpg"] and all(n > 0 for _, n in got.values())
    assert not (storage.exists(f"{out}/_runs") and storage.list_files(f"{out}/_runs", (".lease",)))  # released
