"""Several `mien annotate` runs on one output root, and a `--force` run killed before its commit.

Real `python -m jobs.cli annotate` processes, each with its own embedded Ray, on real face clips;
the ``commit_pause`` / ``commit_exit`` faults (workflows/core/faults.py) stop or kill a driver
between a chunk's faces/tracks writes and the videos part that commits them, so the
interleavings are exact, and every wait is on a file appearing or a process ending.

Each test runs under both sinks (``output.sink``): with ``driver`` the paused driver has written
exactly one chunk it has not committed; with ``workers`` the workers go on writing chunks while the
driver is held, so a paused run may have several in flight, and every one of them must survive the
other runs and be committed by its own run.
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
from workflows.corpus.reader import AnnotationOutput, run_of_part

pytestmark = pytest.mark.timeout(600)
SINKS = pytest.mark.parametrize("sink", ["driver", "workers"])

SMALL_MACHINE = ["--no-progress", "--set", "mlflow.enabled=false", "--set", "output.crops=false",
                 "--set", "output.flush_every_videos=1", "--set", "ray.faces.concurrency=1",
                 "--set", "ray.faces.num_cpus=0.5", "--set", "ray.mllm.num_cpus=0.25"]


def _annotate_cli(input_dir: Path, out: Path | str, sink: str, *extra: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", "annotate", "--input", str(input_dir),
                             "--output", str(out), *SMALL_MACHINE, "--set", f"output.sink={sink}", *extra], cwd=ROOT,
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
    ok row and exactly its faces: n_faces of the row, all from that row's run (empty before the
    first commit)."""
    reader = AnnotationOutput(str(out), must_exist=False)
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


def _uncommitted(out: str) -> list[str]:
    """The faces/tracks parts of ``out`` that no videos part commits (chunks in flight)."""
    reader = AnnotationOutput(out, must_exist=False)
    return [uri for name in ("faces", "tracks") for uri in reader.uncommitted_parts(name)]


def _run_in_flight(out: str) -> tuple[str, list[str]]:
    """The one run with chunks written but not committed, and those parts, asserting that readers
    see none of them: every video reads with one ok row and exactly its committed faces."""
    in_flight = _uncommitted(out)
    runs = {run_of_part(uri) for uri in in_flight}
    assert in_flight and len(runs) == 1, in_flight
    reader_state(out)
    return runs.pop(), in_flight


@SINKS
def test_runs_sharing_an_output_keep_each_others_work(face_corpus, tmp_path, sink):
    """Run A (shard 1) is stopped with work in flight (clip00's chunk written, not committed); run B
    starts on the same input and run C on shard 2 of the same corpus. Before leases, B annotated
    shard 1 again (two ok rows per video) and both B and C deleted A's chunk in flight, which A then
    committed without faces. Every part A had in flight must outlive B and C unseen, and be
    committed by A (check_contract: no run left a part uncommitted)."""
    shard1 = _corpus(face_corpus, tmp_path / "shard1", ["clip00.mp4", "clip01.mp4", "still.jpg"])
    shard2 = _corpus(face_corpus, tmp_path / "shard2", ["clip02.mp4", "clip03.mp4"])
    out = tmp_path / "out"
    state = tmp_path / "fault_state"
    state.mkdir()

    a = _annotate_cli(shard1, out, sink, MIEN_FAULT_INJECT="commit_pause:clip00.mp4",
                      MIEN_FAULT_STATE_DIR=str(state))
    paused = _wait_for_file("mien-fault-*.paused", state, a)
    run_a, in_flight = _run_in_flight(str(out))
    assert (out / "_runs" / f"{run_a}.lease").exists()
    assert "clip00.mp4" not in reader_state(out)

    b = _annotate_cli(shard1, out, sink)
    log_b = b.communicate(timeout=300)[0]
    assert b.returncode == 0, log_b
    assert f"left to run {run_a}" in log_b and "videos: 0 ok, 0 error" in log_b, log_b

    c = _annotate_cli(shard2, out, sink)
    log_c = c.communicate(timeout=300)[0]
    assert c.returncode == 0 and "2 ok, 0 error" in log_c, log_c
    assert [p for p in in_flight if not Path(p).exists()] == [], "run B or C removed run A's work in flight"
    assert "clip00.mp4" not in reader_state(out)

    paused.unlink()  # A commits what it has in flight and finishes
    log_a = a.communicate(timeout=300)[0]
    assert a.returncode == 0 and "3 ok, 0 error" in log_a, log_a
    check_contract(str(out))
    got = reader_state(out)
    assert sorted(got) == ["clip00.mp4", "clip01.mp4", "clip02.mp4", "clip03.mp4", "still.jpg"]
    assert {got[n][0] for n in ("clip00.mp4", "clip01.mp4", "still.jpg")} == {run_a}
    assert all(n > 0 for _, n in got.values())
    assert not list((out / "_runs").iterdir())  # every run removed its lease


@SINKS
def test_force_killed_before_its_commit_leaves_old_or_new_rows_then_completes(face_corpus, tmp_path, sink):
    """`--force` killed (kill -9 at the point) after writing clip01's faces, before committing them.
    Before the fix, --force deleted every old row first: the videos it had not redone were gone
    (and a kill inside that deletion left ok rows without faces)."""
    corpus = _corpus(face_corpus, tmp_path / "corpus", ["clip00.mp4", "clip01.mp4", "still.jpg"])
    out = tmp_path / "out"
    cfg = annotate_cfg(tmp_path, "output.flush_every_videos=1", "ray.faces.concurrency=1", f"output.sink={sink}")
    with local_ray():
        first = annotate(str(corpus), str(out), cfg, progress=False)
        assert first.videos_ok == 3
        clean = reader_state(out)

        forced = _annotate_cli(corpus, out, sink, "--force", MIEN_FAULT_INJECT="commit_exit:clip01.mp4")
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


@SINKS
def test_runs_sharing_an_s3_output_keep_each_others_work(face_corpus, tmp_path, s3_bucket, sink):
    """The same on an S3 output (moto): the lease and the per-run cleanup work on an object store,
    where there is no rename and no file lock. Run A is stopped with a chunk in flight; run C
    annotates another shard into the same bucket prefix; A then commits, and nothing is lost."""
    from workflows.core import storage

    shard1 = _corpus(face_corpus, tmp_path / "shard1", ["clip00.mp4", "still.jpg"])
    shard2 = _corpus(face_corpus, tmp_path / "shard2", ["clip02.mp4"])
    out = f"{s3_bucket}/out"
    state = tmp_path / "fault_state"
    state.mkdir()
    a = _annotate_cli(shard1, out, sink, MIEN_FAULT_INJECT="commit_pause:clip00.mp4",
                      MIEN_FAULT_STATE_DIR=str(state))
    paused = _wait_for_file("mien-fault-*.paused", state, a)
    run_a, in_flight = _run_in_flight(out)
    assert storage.exists(f"{out}/_runs/{run_a}.lease")

    c = _annotate_cli(shard2, out, sink)
    log_c = c.communicate(timeout=300)[0]
    assert c.returncode == 0 and "1 ok, 0 error" in log_c, log_c
    assert [p for p in in_flight if not storage.exists(p)] == [], "run C removed run A's work in flight"

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
    assert {got[n][0] for n in ("clip00.mp4", "still.jpg")} == {run_a}
    assert not (storage.exists(f"{out}/_runs") and storage.list_files(f"{out}/_runs", (".lease",)))  # released
