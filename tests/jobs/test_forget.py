"""``mien forget``: every row of a video leaves the output, every other row stays, every reader
stays exact while it works (also when it is stopped half-way), and no later run brings the video
back. Real ``mien annotate`` output (the local executor, real clips) or the realistic fixture of
tests/outputs with chunks of the real sink; real leases; the moto S3 server for S3."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.outputs.conftest import RUN1, build_annotated_output, mien
from tests.workflows.corpus.test_damaged_parts import truncate, write_chunks
from tests.workflows.corpus.test_reader import RUN2_FINISHED, RUN3, write_chunk
from tests.workflows.corpus.test_writer import RUN4, check_contract, current_state
from workflows.annotate.ingest import discover
from workflows.annotate.pipeline import AnnotateConfig, annotate
from workflows.core import storage
from workflows.core.config import load_config
from workflows.corpus.contract import check_output
from workflows.corpus.forget import FORGOTTEN_KIND, forget
from workflows.corpus.lease import RunLease
from workflows.corpus.privacy import forgotten_uri, read_forgotten
from workflows.corpus.reader import DAMAGED_DIR, AnnotationOutput

pytestmark = pytest.mark.timeout(600)


def rows_of(root: Path, video_id: str) -> dict[str, int]:
    """Rows of ``video_id`` in every Parquet file under ``root`` (``_damaged/`` copies included),
    as pandas or DuckDB would find them."""
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".parquet", ".damaged")):
        try:
            ids = pq.read_table(path, columns=["video_id"]).column("video_id").to_pylist()
        except Exception:  # noqa: BLE001 - a damaged file: no rows a reader could find
            continue
        if video_id in ids:
            found[str(path.relative_to(root))] = ids.count(video_id)
    return found


def faces_of_others(root: Path, gone: str) -> pd.DataFrame:
    faces = pd.concat([pd.read_parquet(p) for p in sorted((root / "faces").glob("*.parquet"))], ignore_index=True)
    faces = faces[faces["video_id"] != gone].drop(columns=["fe_probs", "au_probs", "au_evidence", "fe_prior"])
    return faces.sort_values(["video_id", "frame_index", "track_id"]).reset_index(drop=True)


def test_forget_removes_one_video_of_three_and_no_rerun_brings_it_back(three_clips, tmp_path, capsys):
    clips = three_clips
    cfg = lambda: load_config(AnnotateConfig, None, ["mlflow.enabled=false", "executor.kind=local"])  # noqa: E731
    out = tmp_path / "out"
    assert annotate(str(clips), str(out), cfg(), progress=False).videos_ok == 3
    gone = next(s.video_id for s in discover(str(clips)).sources if s.uri.endswith("a_smile.mp4"))
    before = current_state(out)
    kept_faces = faces_of_others(out, gone)
    assert before[gone][2] > 0 and rows_of(out, gone)

    capsys.readouterr()
    assert mien("forget", "--output", out, "--video-id", gone, "--video-id", "f" * 20) == 0
    text = capsys.readouterr().out
    assert f"forgot 1 video(s) in {out}: {gone}" in text
    assert f"removed: videos 1 row(s), faces {before[gone][2]}, " in text
    assert f"no rows of {'f' * 20} in {out}: nothing to remove" in text
    assert current_state(out) == {k: v for k, v in before.items() if k != gone}
    assert rows_of(out, gone) == {}
    pd.testing.assert_frame_equal(faces_of_others(out, gone), kept_faces)  # crops included
    assert not [p for p in out.rglob("*") if p.is_file() and b"a_smile" in p.read_bytes()]
    assert {r["video_id"] for r in read_forgotten(str(out))} == {gone, "f" * 20}
    assert mien("inspect", out, "--check") == 0
    assert "contract: ok" in capsys.readouterr().out

    rerun = annotate(str(clips), str(out), cfg(), progress=False)
    assert (rerun.denied, rerun.videos_ok, rerun.videos_skipped) == (1, 0, 2)
    forced = annotate(str(clips), str(out), cfg(), progress=False, force=True)
    assert (forced.denied, forced.videos_ok) == (1, 2)
    assert gone not in current_state(out) and rows_of(out, gone) == {}


def test_forget_refuses_while_another_run_writes_and_finishes_once_it_has_ended(tmp_path, capsys):
    fx = build_annotated_output(tmp_path)
    before = current_state(fx.root)
    with RunLease(str(fx.root), RUN3, ttl_s=60):  # a live run of this machine
        capsys.readouterr()
        assert mien("forget", "--output", fx.root, "--video-id", fx.video_id) == 1
        err = capsys.readouterr().err
    assert f"run {RUN3} (host" in err and "rerun this command" in err
    assert current_state(fx.root) == before
    assert [r["video_id"] for r in read_forgotten(str(fx.root))] == [fx.video_id]  # denied at once

    assert mien("report", "--input", fx.root) == 0  # OUT/report.html shows the interview's faces
    assert "interview.mp4" in (fx.root / "report.html").read_text()
    capsys.readouterr()
    assert mien("forget", "--output", fx.root, "--video-id", fx.video_id) == 0
    assert f"rebuilt {fx.root / 'report.html'} without them" in capsys.readouterr().out
    assert "interview.mp4" not in (fx.root / "report.html").read_text()
    assert current_state(fx.root) == {k: v for k, v in before.items() if k != fx.video_id}
    assert rows_of(fx.root, fx.video_id) == {}
    assert not list((fx.root / "_runs").iterdir())  # forget's own lease is gone too
    assert len(read_forgotten(str(fx.root))) == 1


def test_a_forget_stopped_after_any_write_leaves_readers_exact_and_its_rerun_finishes_it(tmp_path, monkeypatch):
    """The interview has a --force rerun's row (RUN3, 2 faces) besides its replaced run-2 row and
    the run-1 error (also in run 1's record); d4 is another video in its own chunk. A write failing (a full disk) after
    each possible number of forget's writes: every other video reads as before, the interview as
    before, as forgotten or not at all, never a damaged chunk; a rerun of the same command ends
    with no row of it anywhere."""
    fx = build_annotated_output(tmp_path)
    run1 = fx.root / "runs" / f"{RUN1}.json"  # as annotate records run 1's error on the interview
    run1.write_text(json.dumps({**json.loads(run1.read_text()), "errors": [
        {"video_uri": str(fx.video_path), "error_kind": "worker_crash", "error": "worker crashed 3 times"},
        {"video_uri": str(fx.root.parent / "corpus" / "broken.mp4"), "error_kind": "invalid_data", "error": "x"}]}))
    write_chunk(fx.root, RUN3, fx.video_id, RUN2_FINISHED + dt.timedelta(days=1), 2)
    write_chunks(fx.root, str(fx.root), RUN4, RUN2_FINISHED + dt.timedelta(days=2), {"d4": 3})
    before = current_state(fx.root)
    others = {k: v for k, v in before.items() if k != fx.video_id}
    assert before[fx.video_id] == ("ok", RUN3, 2)

    real_write = storage.write_bytes
    writes: list[str] = []

    def counting_write(uri, data):
        if "/_runs/" not in uri:  # lease heartbeats come at any time: not a step of forget
            writes.append(uri)
        real_write(uri, data)

    probe = tmp_path / "probe"
    shutil.copytree(fx.root, probe)
    monkeypatch.setattr(storage, "write_bytes", counting_write)
    forget(str(probe), [fx.video_id])
    monkeypatch.setattr(storage, "write_bytes", real_write)
    assert len(writes) >= 6  # deny-list, the forgotten rows' chunk, the rewritten parts, ...

    seen = set()
    for allowed in range(len(writes)):
        root = tmp_path / f"stopped{allowed}"
        shutil.copytree(fx.root, root)
        done: list[str] = []

        def failing_write(uri, data, _done=done, _allowed=allowed):
            if "/_runs/" not in uri:
                if len(_done) == _allowed:
                    raise OSError(28, "No space left on device")
                _done.append(uri)
            real_write(uri, data)

        monkeypatch.setattr(storage, "write_bytes", failing_write)
        with pytest.raises(OSError, match="No space"):
            forget(str(root), [fx.video_id])
        monkeypatch.setattr(storage, "write_bytes", real_write)
        state = current_state(root)
        assert AnnotationOutput(str(root)).damaged == [], allowed
        assert {k: v for k, v in state.items() if k != fx.video_id} == others, allowed
        seen.add("absent" if fx.video_id not in state else "before" if state[fx.video_id] == before[fx.video_id]
                 else "forgotten")
        if fx.video_id in state and state[fx.video_id] != before[fx.video_id]:
            status, run, faces = state[fx.video_id]
            assert (status, faces) == ("error", 0) and "-forget" in run, allowed
            [row] = [v for v in AnnotationOutput(str(root)).current_videos() if v["video_id"] == fx.video_id]
            assert row["error_kind"] == FORGOTTEN_KIND and row["video_uri"] is None

        forget(str(root), [fx.video_id])  # the rerun
        assert current_state(root) == others, allowed
        assert rows_of(root, fx.video_id) == {}, allowed
        check_contract(root)
        assert [e["error_kind"] for e in json.loads((root / "runs" / f"{RUN1}.json").read_text())["errors"]] == [
            "invalid_data"]
    assert seen == {"before", "forgotten"}  # its last step removes the forgotten rows: no write after it


def test_forget_reaches_damaged_chunks_and_their_copies(tmp_path, capsys):
    """d4's chunk is damaged (its faces part cut short); d5's chunk was moved to _damaged/ by an
    earlier run; a file there that cannot be read is named, not guessed at."""
    fx = build_annotated_output(tmp_path)
    d4_part, d5_part = write_chunks(fx.root, str(fx.root), RUN3, RUN2_FINISHED + dt.timedelta(days=1),
                                    {"d4": 3, "d5": 2})
    truncate(fx.root / "faces" / d4_part)
    for name in ("faces", "tracks", "videos"):
        aside = fx.root / DAMAGED_DIR / name
        aside.mkdir(parents=True, exist_ok=True)
        (fx.root / name / d5_part).rename(aside / f"{d5_part}.damaged")
    garbage = fx.root / DAMAGED_DIR / "faces" / "20251231T000000Z-ffff0000-00000.parquet.damaged"
    garbage.write_bytes(b"not parquet")
    assert [d.table for d in AnnotationOutput(str(fx.root)).damaged] == ["faces"]
    before = current_state(fx.root)

    capsys.readouterr()
    assert mien("forget", "--output", fx.root, "--video-id", "d4", "--video-id", "d5") == 1  # the unreadable file
    text = capsys.readouterr().out
    assert "forgot 2 video(s)" in text and f"cannot read {garbage}" in text
    assert rows_of(fx.root, "d4") == rows_of(fx.root, "d5") == {}
    assert not [p for p in fx.root.rglob(f"*{d4_part}*")]  # the damaged chunk is gone whole
    assert AnnotationOutput(str(fx.root)).damaged == []
    assert current_state(fx.root) == {k: v for k, v in before.items() if k not in ("d4", "d5")}
    assert garbage.exists()
    check_contract(fx.root)


def test_forget_on_s3_by_uri(tmp_path, s3_bucket, capsys):
    fx = build_annotated_output(tmp_path)
    root = f"{s3_bucket}/annotations"
    fs = fsspec.filesystem("s3")
    fs.put(str(fx.root), root.removeprefix("s3://"), recursive=True)
    capsys.readouterr()
    assert mien("forget", "--output", root, "--video-uri", fx.video_path) == 0
    assert f"forgot 1 video(s) in {root}: {fx.video_id}" in capsys.readouterr().out
    out = AnnotationOutput(root)
    assert fx.video_id not in {v["video_id"] for v in out.current_videos()}
    assert not len(out.read("faces", ["video_id"])) and not len(out.read("tracks", ["video_id"]))
    assert check_output(root) == []
    [record] = read_forgotten(root)
    assert record["video_id"] == fx.video_id and str(fx.video_path) not in storage.read_text(forgotten_uri(root))
