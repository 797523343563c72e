"""The one reader of annotate outputs: every consumer sees committed parts only.

Outputs are the realistic fixture of tests/outputs (two runs, an error video, a video without
faces) plus chunks written by the real :class:`~workflows.corpus.writer.AnnotationSink`; a crash
is the state a run leaves when it dies between writing a chunk's faces/tracks parts and the
videos part that commits them.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.outputs.conftest import RUN2, build_annotated_output
from workflows.corpus import schema
from workflows.corpus.reader import AnnotationOutput, OutputError
from workflows.corpus.writer import AnnotationSink
from workflows.training.instructions import PseudoLabelFilter, instructions_from_annotations

RUN3 = "20260103T000000Z-cccc3333"
RUN2_FINISHED = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)  # the fixture's run 2 commit time
EVERY_FACE = PseudoLabelFilter(min_det_score=0.0, min_fe_confidence=0.0, max_per_track=1000)


def write_chunk(root: Path, run_id: str, video_id: str, finished: dt.datetime, n_faces: int,
                *, commit: bool = True) -> str:
    """One chunk of ``n_faces`` faces (copies of run 2's) of ``video_id`` through the real sink;
    ``commit=False`` removes its videos part afterwards, as a crash before that write leaves it."""
    faces = pq.read_table(root / "faces" / f"{RUN2}-00000.parquet").to_pylist()[:n_faces]
    sink = AnnotationSink(str(root), run_id)
    video = {"video_id": video_id, "video_uri": f"/corpus/{video_id}.mp4", "status": "ok", "run_id": run_id,
             "finished_at": finished, "n_faces": n_faces}
    sink.add(schema.table("videos", [video]),
             schema.table("faces", [{**f, "video_id": video_id, "run_id": run_id} for f in faces]),
             schema.table("tracks", []), n_videos=1)
    sink.flush()
    part = f"{run_id}-00000.parquet"
    if not commit:
        (root / "videos" / part).unlink()
    return part


def test_training_data_ignores_the_faces_of_a_crashed_run(tmp_path, caplog) -> None:
    """`mien train/evaluate --data OUT` read no rows of an uncommitted faces part, and say so."""
    from workflows.training.data import load_instructions

    fx = build_annotated_output(tmp_path)
    # a --force rerun of the interview crashed after writing its faces part
    part = write_chunk(fx.root, RUN3, fx.video_id, RUN2_FINISHED + dt.timedelta(days=1), fx.n_faces, commit=False)
    caplog.set_level(logging.WARNING, logger="workflows.corpus.reader")

    built = instructions_from_annotations(str(fx.root), flt=EVERY_FACE, tasks=["fe_category"])
    assert built.report["n_faces"] == fx.n_faces and built.table.num_rows == fx.n_faces
    assert set(built.table.column("run_id").to_pylist()) == {RUN2}
    assert f"faces/{part}" in caplog.text and "uncommitted" in caplog.text

    table, report = load_instructions(str(fx.root), tasks=["fe_category"], flt=EVERY_FACE)
    assert report["format"] == "annotations" and table.num_rows == fx.n_faces
    assert len(set(table.column("id").to_pylist())) == fx.n_faces  # no face twice
    assert set(table.column("image_uri").to_pylist()) == {str(fx.video_path)}


def test_an_output_with_nothing_committed_is_refused(tmp_path) -> None:
    """Faces without any videos part: every part is a crash leftover; a ValueError the CLIs report."""
    fx = build_annotated_output(tmp_path)
    for p in (fx.root / "videos").iterdir():
        p.unlink()
    (fx.root / "videos").rmdir()
    with pytest.raises(OutputError, match="not a mien annotate output"):
        instructions_from_annotations(str(fx.root))
    assert issubclass(OutputError, ValueError)


def test_committed_videos_and_their_faces_since_a_watermark(tmp_path) -> None:
    fx = build_annotated_output(tmp_path)
    later = RUN2_FINISHED + dt.timedelta(days=1)
    write_chunk(fx.root, RUN3, "d4", later, 2)
    out = AnnotationOutput(str(fx.root))

    every = out.committed_videos()  # ok rows only: run 1's two error rows are not there
    assert sorted(every["video_id"]) == sorted([fx.video_id, fx.empty_video_id, "d4"])
    since = out.committed_videos(since_ms=int(RUN2_FINISHED.timestamp() * 1000))
    assert since.to_dict("records") == [{"video_id": "d4", "video_uri": "/corpus/d4.mp4", "run_id": RUN3,
                                         "finished_ms": int(later.timestamp() * 1000),
                                         "part": f"{RUN3}-00000.parquet"}]
    assert out.committed_videos(since_ms=int(later.timestamp() * 1000)).empty

    faces = out.faces_of(since)
    assert faces["video_id"].tolist() == ["d4", "d4"] and set(faces["run_id"]) == {RUN3}
    assert set(faces["video_uri"]) == {"/corpus/d4.mp4"}
    everything = out.faces_of()
    assert len(everything) == fx.n_faces + 2
    assert set(everything["track_id"]) == {"0", "1"}  # str, as instruction rows carry them
    first = everything.iloc[0]
    assert isinstance(first["fe_probs"], dict) and isinstance(first["au_probs"], dict)
    assert isinstance(first["au_evidence"], dict) and isinstance(first["fe_prior"], dict)
    assert first["fe_probs"][first["fe_label"]] == pytest.approx(first["fe_confidence"])
    only_interview = out.faces_of(keep_video=lambda v: v == fx.video_id)
    assert len(only_interview) == fx.n_faces and set(only_interview["video_uri"]) == {str(fx.video_path)}


def test_the_writer_resumes_from_committed_rows_and_removes_a_crashed_chunk(tmp_path) -> None:
    fx = build_annotated_output(tmp_path)
    part = write_chunk(fx.root, RUN3, "d4", RUN2_FINISHED + dt.timedelta(days=1), 2, commit=False)
    sink = AnnotationSink(str(fx.root), "20260104T000000Z-dddd4444")
    # d4's chunk never committed and broken.mp4 only failed: both are annotated again
    assert sink.done_video_ids() == {fx.video_id, fx.empty_video_id}
    removed = sink.remove_orphans()
    assert sorted(Path(u).relative_to(fx.root).as_posix() for u in removed) == [f"faces/{part}", f"tracks/{part}"]
    out = AnnotationOutput(str(fx.root))
    assert out.uncommitted_parts("faces") == [] and len(out.faces_of()) == fx.n_faces

    fresh = AnnotationSink(str(tmp_path / "new"), RUN3)  # a first run: nothing to resume or remove
    assert fresh.done_video_ids() == set() and fresh.remove_orphans() == []


def test_current_states_are_what_a_rerun_checks_its_input_against(tmp_path) -> None:
    """The resume check's view of an output (Arrow, one row per video): the committed ``ok`` videos
    and the current errors; a video whose current row is in an uncommitted chunk keeps its older row."""
    fx = build_annotated_output(tmp_path)
    write_chunk(fx.root, RUN3, fx.empty_video_id, RUN2_FINISHED + dt.timedelta(days=1), 0, commit=False)
    out = AnnotationOutput(str(fx.root))
    count, batches = out.current_states(batch_rows=2)
    states = {r["video_id"]: (r["status"], r["error_kind"]) for batch in batches for r in batch.to_pylist()}
    assert count == len(states)
    assert states == {fx.video_id: ("ok", None), fx.empty_video_id: ("ok", None),
                      fx.error_video_id: ("error", "invalid_data")}
    assert {v for v, (status, _) in states.items() if status == "ok"} == set(out.committed_videos()["video_id"])
