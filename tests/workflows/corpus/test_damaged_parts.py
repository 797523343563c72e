"""Damaged parts are noticed when an output is opened, named with their repair, and repaired by a
plain rerun; the other videos are never touched.

Outputs are the realistic fixture of tests/outputs (its parts written by an older writer, without
row counts in the commit record) plus chunks written by the real
:class:`~workflows.corpus.writer.AnnotationSink`, one video each; damage is done to the real
Parquet files on disk (or on the moto S3 server): a faces part cut short, a videos part
overwritten with garbage, a part replaced by a sound Parquet file with other rows, corrupt data
pages behind a sound footer.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from tests.outputs.conftest import RUN2, build_annotated_output, mien
from tests.workflows.corpus.test_reader import RUN2_FINISHED, RUN3
from tests.workflows.corpus.test_writer import check_contract, current_state
from workflows.core import storage
from workflows.corpus import schema
from workflows.corpus.reader import DAMAGED_DIR, AnnotationOutput, DamagedPart
from workflows.corpus.writer import AnnotationSink

ROOT = Path(__file__).resolve().parents[3]
RUN4 = "20260104T000000Z-dddd4444"
CORPUS = "/corpus"
CHUNK_FACES = {"d4": 3, "d5": 2}  # video -> faces, one chunk each: RUN3-00000 holds d4, RUN3-00001 d5


def write_chunks(source: Path, root: str, run_id: str, finished: dt.datetime, videos: dict[str, int]) -> list[str]:
    """One chunk per video through the real sink: ``video_id -> faces`` (copies of the fixture's)
    and one track each; and the run's record, naming its input. Returns the part names."""
    faces = pq.read_table(source / "faces" / f"{RUN2}-00000.parquet").to_pylist()
    track = pq.read_table(source / "tracks" / f"{RUN2}-00000.parquet").to_pylist()[0]
    sink = AnnotationSink(root, run_id, flush_every_videos=1)
    for vid, n in videos.items():
        row = {"video_id": vid, "video_uri": f"{CORPUS}/{vid}.mp4", "status": "ok", "run_id": run_id,
               "finished_at": finished, "n_faces": n, "n_tracks": 1}
        sink.add(schema.table("videos", [row]),
                 schema.table("faces", [{**f, "video_id": vid, "run_id": run_id} for f in faces[:n]]),
                 schema.table("tracks", [{**track, "video_id": vid, "run_id": run_id}]), n_videos=1)
    storage.write_text(storage.join(root, "runs", f"{run_id}.json"), json.dumps({"run_id": run_id, "input": CORPUS}))
    return [f"{run_id}-{i:05d}.parquet" for i in range(len(videos))]


@pytest.fixture
def output(tmp_path):
    """The fixture output plus run 3's chunks of d4 and d5: ``(fixture, parts)``."""
    fx = build_annotated_output(tmp_path)
    parts = write_chunks(fx.root, str(fx.root), RUN3, RUN2_FINISHED + dt.timedelta(days=1), CHUNK_FACES)
    return fx, parts


def sound_videos(fx) -> set[str]:
    return {fx.video_id, fx.empty_video_id}


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def inspect(root, capsys, *flags: str) -> tuple[int, str]:
    capsys.readouterr()
    status = mien("inspect", root, *flags)
    return status, capsys.readouterr().out


def test_a_truncated_faces_part_is_left_out_and_named_and_its_video_is_not_done(output, capsys, caplog):
    fx, (d4_part, _) = output
    truncate(fx.root / "faces" / d4_part)
    caplog.set_level(logging.WARNING, logger="workflows.corpus.reader")

    out = AnnotationOutput(str(fx.root))
    [bad] = out.damaged
    assert (bad.uri, bad.table, bad.video_ids) == (str(fx.root / "faces" / d4_part), "faces", ("d4",))
    assert bad.reason.startswith("unreadable: ") and "magic bytes" in bad.reason
    repair = f"rerun `mien annotate --input {CORPUS} --output {fx.root}` to re-annotate the 1 affected video(s)"
    assert f"faces/{d4_part}" in caplog.text and repair in caplog.text  # every command warns with it

    # d4 is not done, and nothing of its chunk is read; everything else is as it was
    assert set(out.committed_videos()["video_id"]) == sound_videos(fx) | {"d5"}
    faces = out.faces_of()
    assert "d4" not in set(faces["video_id"]) and (faces["video_id"] == "d5").sum() == 2
    assert len(faces) == fx.n_faces + 2
    assert "d4" not in set(out.read("tracks", ["video_id"]).column("video_id").to_pylist())
    row = out.find_video("d4")
    assert (row["status"], row["error_kind"]) == ("error", "damaged_part")
    assert f"faces/{d4_part}" in row["error"] and "mien annotate" in row["error"]
    assert AnnotationSink(str(fx.root), RUN4).done_video_ids() == sound_videos(fx) | {"d5"}

    status, text = inspect(fx.root, capsys)
    assert status == 1
    assert f"faces/{d4_part}  unreadable: " in text and "videos: d4" in text and repair in text
    assert "damaged_part 1" in text  # among the errors by kind
    status, text = inspect(fx.root, capsys, "--json")
    doc = json.loads(text)
    assert status == 1 and doc["videos_ok"] == 3 and doc["faces"] == fx.n_faces + 2
    assert [(d["part"], d["video_ids"]) for d in doc["damaged"]] == [(f"faces/{d4_part}", ["d4"])]
    assert repair in doc["repair"]


def test_a_videos_part_overwritten_with_garbage_loses_only_its_chunk(output, capsys):
    fx, (d4_part, d5_part) = output
    (fx.root / "videos" / d4_part).write_bytes(b"\x00garbage" * 300)

    out = AnnotationOutput(str(fx.root))
    assert out.damaged == [DamagedPart(str(fx.root / "videos" / d4_part), "videos",
                                       out.damaged[0].reason, ("d4",))]  # d4 named by its faces part
    assert "magic bytes" in out.damaged[0].reason
    assert "d4" not in {v["video_id"] for v in out.current_videos()}  # its only row is unreadable
    assert set(out.committed_videos()["video_id"]) == sound_videos(fx) | {"d5"}
    assert "d4" not in set(out.faces_of()["video_id"])
    # its faces and tracks are the chunk of a damaged commit, not a crashed run's leftovers
    assert out.uncommitted_parts("faces") == [] and out.uncommitted_parts("tracks") == []
    sink = AnnotationSink(str(fx.root), RUN4)
    sink.prepare(temporaries_older_than_s=60)  # a rerun's start: d4 still needs its chunk's faces named
    assert (fx.root / "faces" / d4_part).exists() and sink.done_video_ids() == sound_videos(fx) | {"d5"}

    status, text = inspect(fx.root, capsys)
    assert status == 1 and f"videos/{d4_part}  unreadable: " in text and "videos: d4" in text


def test_a_part_whose_row_count_disagrees_with_its_commit_record_is_damaged(output, capsys):
    fx, (_, d5_part) = output
    faces = fx.root / "faces" / d5_part
    written = pq.read_table(faces)
    pq.write_table(written.slice(0, 1), faces)  # sound Parquet, one of its two faces

    out = AnnotationOutput(str(fx.root))
    [bad] = out.damaged
    assert (bad.table, bad.video_ids) == ("faces", ("d5",))
    assert bad.reason == f"1 rows, where its commit record videos/{d5_part} says 2"
    assert set(out.committed_videos()["video_id"]) == sound_videos(fx) | {"d4"}
    assert AnnotationSink(str(fx.root), RUN4).done_video_ids() == sound_videos(fx) | {"d4"}

    tracks = fx.root / "tracks" / d5_part  # more rows than the record is as wrong as fewer
    pq.write_table(written, faces)
    shutil.copyfile(fx.root / "tracks" / f"{RUN2}-00000.parquet", tracks)
    [bad] = AnnotationOutput(str(fx.root)).damaged
    assert (bad.table, bad.reason) == ("tracks", f"2 rows, where its commit record videos/{d5_part} says 1")

    (fx.root / "tracks" / d5_part).unlink()  # a part of a recorded chunk gone missing
    [bad] = AnnotationOutput(str(fx.root)).damaged
    assert (bad.table, bad.reason) == ("tracks", f"missing, where its commit record videos/{d5_part} counts 1 rows")
    assert inspect(fx.root, capsys)[0] == 1


def test_rows_dropped_by_an_interrupted_force_rerun_are_no_damage(output, monkeypatch):
    """A --force rerun of d4 drops its old faces and tracks before its old videos row (here the whole
    old chunk, d4 being its only video, which goes once emptied): stopped in between, the old chunk
    holds fewer rows than its commit record, and that is sound; the next run finishes the job."""
    fx, (d4_part, _) = output
    write_chunks(fx.root, str(fx.root), RUN4, RUN2_FINISHED + dt.timedelta(days=2), {"d4": 1})
    writes = []
    real_write, real_remove = storage.write_bytes, storage.remove

    def recorded(uri, data):
        writes.append(uri)
        real_write(uri, data)

    def failing_at_the_videos_part(uri):
        if "/videos/" in uri:
            raise OSError(5, "Input/output error")
        real_remove(uri)

    monkeypatch.setattr(storage, "write_bytes", recorded)
    monkeypatch.setattr(storage, "remove", failing_at_the_videos_part)
    with pytest.raises(OSError, match="Input/output"):
        AnnotationSink(str(fx.root), "20260105T000000Z-eeee5555").drop_replaced()
    monkeypatch.undo()
    assert sorted(Path(w).parent.name for w in writes) == ["faces", "tracks"]
    assert len(pq.read_table(fx.root / "faces" / d4_part)) == 0  # d4's 3 old faces are gone

    out = AnnotationOutput(str(fx.root))
    assert out.damaged == []
    assert current_state(fx.root)["d4"] == ("ok", RUN4, 1)
    AnnotationSink(str(fx.root), "20260105T000000Z-eeee5555").drop_replaced()
    assert not any((fx.root / name / d4_part).exists() for name in ("videos", "faces", "tracks"))


def test_a_rerun_repairs_and_then_moves_the_damaged_chunk_aside(output, capsys):
    """What `mien annotate` does on the output (its sink's calls, in its order): d4 alone is
    annotated again; its damaged chunk is moved to _damaged/ only once the new row is committed."""
    fx, (d4_part, d5_part) = output
    truncate(fx.root / "faces" / d4_part)

    sink = AnnotationSink(str(fx.root), RUN4, flush_every_videos=1)
    sink.prepare(temporaries_older_than_s=60)
    assert (fx.root / "faces" / d4_part).exists()  # nothing moves before the replacement exists
    todo = {"d4", "d5"} - sink.done_video_ids()
    assert todo == {"d4"}
    write_chunks(fx.root, str(fx.root), RUN4, sink.commit_time(), dict.fromkeys(todo, 1))
    sink.drop_replaced()  # the end of the run

    for name in ("faces", "tracks", "videos"):
        assert not (fx.root / name / d4_part).exists()
        assert (fx.root / DAMAGED_DIR / name / f"{d4_part}.damaged").exists()
    state = current_state(fx.root)
    assert state["d4"] == ("ok", RUN4, 1) and state["d5"] == ("ok", RUN3, 2)
    assert AnnotationOutput(str(fx.root)).damaged == []
    check_contract(fx.root)  # pandas / DuckDB readers see a sound output again
    status, text = inspect(fx.root, capsys)
    assert status == 0 and "damaged" not in text


def test_a_damaged_chunk_of_error_rows_alone_is_moved_aside_at_once(tmp_path):
    """An error row has no faces to lose: nothing waits for its damaged chunk, which the next run
    moves aside; the video, now without a row, is simply annotated again."""
    root = str(tmp_path / "out")
    sink = AnnotationSink(root, RUN3)
    sink.add(schema.table("videos", [{"video_id": "e1", "video_uri": f"{CORPUS}/e1.mp4", "status": "error",
                                      "error": "no video stream", "error_kind": "no_video_stream", "run_id": RUN3,
                                      "finished_at": RUN2_FINISHED}]),
             schema.table("faces", []), schema.table("tracks", []), n_videos=1)
    sink.flush()
    part = f"{RUN3}-00000.parquet"
    (tmp_path / "out" / "tracks" / part).write_bytes(b"")

    out = AnnotationOutput(root)
    assert [d.reason for d in out.damaged] == ["unreadable: Parquet file size is 0 bytes"]
    assert out.damaged_chunks() == {part: set()}
    assert out.find_video("e1")["error_kind"] == "no_video_stream"  # still its row until moved
    AnnotationSink(root, RUN4).prepare(temporaries_older_than_s=60)
    out = AnnotationOutput(root)
    assert out.damaged == [] and out.current_videos() == []
    assert (tmp_path / "out" / DAMAGED_DIR / "videos" / f"{part}.damaged").exists()


def test_corrupt_data_pages_behind_a_sound_footer_are_a_message_naming_the_part(output, capsys):
    """The footer check cannot see them; the command that reads the pages stops with the part and
    the repair instead of a traceback, and following the advice repairs the output."""
    fx, (d4_part, _) = output
    faces = fx.root / "faces" / d4_part
    data = bytearray(faces.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    for i in range(4, len(data) - footer):
        data[i] ^= 0x5A
    faces.write_bytes(bytes(data))
    assert AnnotationOutput(str(fx.root)).damaged == []  # the footer reads and counts 3 rows

    capsys.readouterr()
    assert mien("inspect", fx.root) == 2
    err = capsys.readouterr().err
    aside = fx.root / DAMAGED_DIR / "faces"
    assert err.startswith(f"mien inspect: {faces} is damaged (") and "Traceback" not in err
    assert f"move it to {aside}/ and rerun `mien annotate --input {CORPUS} --output {fx.root}`" in err

    aside.mkdir(parents=True)
    faces.rename(aside / d4_part)
    [bad] = AnnotationOutput(str(fx.root)).damaged
    assert (bad.table, bad.video_ids) == ("faces", ("d4",)) and bad.reason.startswith("missing")
    assert AnnotationSink(str(fx.root), RUN4).done_video_ids() == sound_videos(fx) | {"d5"}


def test_the_other_commands_warn_and_go_on_with_the_other_videos(output, tmp_path, capsys, caplog):
    from workflows.training.instructions import PseudoLabelFilter, instructions_from_annotations

    fx, (d4_part, _) = output
    truncate(fx.root / "faces" / d4_part)
    caplog.set_level(logging.WARNING, logger="workflows.corpus.reader")

    assert mien("report", "--input", fx.root, "--output", tmp_path / "r.html") == 0
    assert f"faces/{d4_part}" in caplog.text and "rerun `mien annotate" in caplog.text
    assert mien("export", "openface", "--input", fx.root, "--output", tmp_path / "of") == 0
    assert not list((tmp_path / "of").glob("*d4*"))
    built = instructions_from_annotations(str(fx.root), tasks=["fe_category"],
                                          flt=PseudoLabelFilter(min_det_score=0.0, min_fe_confidence=0.0))
    assert built.report["n_faces"] == fx.n_faces + 2  # what `mien train --data OUT` reads: d5, not d4


def test_damaged_parts_on_s3_are_noticed_and_moved_aside_after_the_rerun(s3_bucket, tmp_path, capsys):
    fx = build_annotated_output(tmp_path)
    root = f"{s3_bucket}/annotations"
    fs = fsspec.filesystem("s3")
    fs.put(str(fx.root), root.removeprefix("s3://"), recursive=True)
    d4_part, d5_part = write_chunks(fx.root, root, RUN3, RUN2_FINISHED + dt.timedelta(days=1), CHUNK_FACES)
    key = f"{root}/faces/{d4_part}".removeprefix("s3://")
    fs.pipe_file(key, fs.cat_file(key)[:100])  # cut short
    fs.pipe_file(f"{root}/videos/{d5_part}".removeprefix("s3://"), b"not parquet")

    out = AnnotationOutput(root)
    assert sorted((d.uri, d.video_ids) for d in out.damaged) == [
        (f"{root}/faces/{d4_part}", ("d4",)), (f"{root}/videos/{d5_part}", ("d5",))]
    assert AnnotationSink(root, RUN4).done_video_ids() == sound_videos(fx)
    assert inspect(root, capsys)[0] == 1

    sink = AnnotationSink(root, RUN4)
    sink.prepare(temporaries_older_than_s=60)
    write_chunks(fx.root, root, RUN4, sink.commit_time(), {"d4": 1, "d5": 1})
    sink.drop_replaced()
    out = AnnotationOutput(root)
    assert out.damaged == [] and set(out.committed_videos()["video_id"]) == sound_videos(fx) | {"d4", "d5"}
    fs.invalidate_cache()
    assert sorted(fs.find(f"{root}/{DAMAGED_DIR}".removeprefix("s3://"))) == sorted(
        f"{root}/{DAMAGED_DIR}/{name}/{part}.damaged".removeprefix("s3://")
        for name in ("faces", "tracks", "videos") for part in (d4_part, d5_part))


@pytest.mark.timeout(900)
def test_a_plain_mien_annotate_rerun_repairs_a_truncated_faces_part(asset, tmp_path, capsys):
    """Real `mien annotate` on real media, one chunk per video: one chunk's faces part cut short,
    the rerun annotates that video alone, and the output ends sound."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copyfile(asset("sample_smiling_video"), corpus / "smiling.mp4")
    shutil.copyfile(asset("sample_single_face_jpg"), corpus / "face.jpg")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "jobs.cli", "annotate", "--input", str(corpus), "--output", str(out),
            "--no-progress", "--set", "mlflow.enabled=false", "--set", "output.flush_every_videos=1"]

    def rows() -> dict[str, dict]:
        return {Path(v["video_uri"]).name: v for v in AnnotationOutput(str(out)).current_videos()}

    first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    before = rows()
    assert {v["status"] for v in before.values()} == {"ok"} and before["smiling.mp4"]["n_faces"] > 0
    smiling = AnnotationOutput(str(out)).committed_videos().set_index("video_id")
    part = smiling.loc[before["smiling.mp4"]["video_id"], "part"]
    truncate(out / "faces" / part)
    assert inspect(out, capsys)[0] == 1

    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"faces/{part}" in second.stderr  # it said what it found
    after = rows()
    assert after["face.jpg"]["run_id"] == before["face.jpg"]["run_id"]  # not redone
    redone = after["smiling.mp4"]
    assert redone["status"] == "ok" and redone["run_id"] != before["smiling.mp4"]["run_id"]
    assert redone["n_faces"] == before["smiling.mp4"]["n_faces"]
    state = current_state(out)  # one current row each, with exactly its own faces
    assert {state[v["video_id"]] for v in after.values()} == {
        ("ok", v["run_id"], v["n_faces"]) for v in after.values()}
    assert (out / DAMAGED_DIR / "faces" / f"{part}.damaged").exists() and not (out / "faces" / part).exists()
    check_contract(out)  # one ok row per video and no face twice, in the files themselves
    status, text = inspect(out, capsys)
    assert status == 0 and "damaged" not in text
