"""`mien inspect` on the fixture output: the numbers match the Parquet, errors are explained."""

import json

import pyarrow as pa

from tests.outputs.conftest import MODEL_ID, RUN1, RUN2, faces_frame, mien


def test_inspect_text_summary(annotated, capsys):
    assert mien("inspect", annotated.root, "--videos") == 0
    text = capsys.readouterr().out
    assert "videos   3   ok 2 · error 1   (4 rows across runs)" in text
    assert "errors   invalid_data 1" in text  # the worker_crash of run 1 was superseded by an ok row
    assert "faces    9 · tracks 2" in text
    assert f"{MODEL_ID} (9 faces)" in text
    assert RUN1 in text and RUN2 in text
    assert "AU12 Lip Corner Puller" in text
    assert "not a decodable media container" in text
    for label in ("happiness", "surprise", "anger", "neutral"):
        assert label in text
    assert annotated.video_id in text and "interview.mp4" in text


def test_inspect_json_matches_parquet(annotated, capsys):
    assert mien("inspect", annotated.root, "--json", "--videos") == 0
    doc = json.loads(capsys.readouterr().out)
    faces = faces_frame(annotated.root)
    assert doc["faces"] == len(faces) == annotated.n_faces
    assert doc["fe_faces"] == faces["fe_label"].value_counts().to_dict()
    active = faces["au_active"].explode().dropna().value_counts().to_dict()
    assert {k: v for k, v in doc["au_active"].items() if v} == active
    assert (doc["videos"], doc["videos_ok"], doc["videos_error"], doc["video_rows"]) == (3, 2, 1, 4)
    assert doc["errors_by_kind"] == {"invalid_data": 1}
    assert [r["run_id"] for r in doc["runs"]] == [RUN1, RUN2]
    attempts = {v["video_id"]: v["attempts"] for v in doc["video_list"]}
    assert attempts[annotated.video_id] == 2


def test_inspect_reports_a_wrong_path(tmp_path, capsys):
    assert mien("inspect", tmp_path / "missing") == 2
    assert "output not found" in capsys.readouterr().err
    assert mien("inspect", tmp_path) == 2
    assert "not a mien annotate output" in capsys.readouterr().err


def test_uncommitted_parts_are_ignored(annotated, tmp_path, capsys):
    """A faces part without its videos part is a crashed run's leftover (see workflows/sink.py)."""
    import shutil

    root = tmp_path / "out"
    shutil.copytree(annotated.root, root)
    part = next((root / "faces").glob(f"{RUN2}-*.parquet"))
    shutil.copy(part, root / "faces" / "20260103T000000Z-cccc3333-00000.parquet")
    assert mien("inspect", root, "--json") == 0
    assert json.loads(capsys.readouterr().out)["faces"] == annotated.n_faces


def test_refused_inputs_and_non_media_files_are_shown_not_only_in_the_run_json(annotated, tmp_path, capsys):
    """Before: a refused manifest line or a README next to the clips appeared on stdout at run time
    and in runs/*.json only; `mien inspect` and the report said nothing of them."""
    import shutil

    root = tmp_path / "out"
    shutil.copytree(annotated.root, root)
    newest = root / "runs" / f"{RUN2}.json"
    doc = json.loads(newest.read_text())
    doc["rejected"] = [{"entry": "clips/missing.mp4", "line": 7, "reason": "not under an allowed root"}]
    doc.setdefault("counts", {})["skipped_non_media"] = {".txt": 2, ".wav": 1}
    newest.write_text(json.dumps(doc))
    assert mien("inspect", root) == 0
    text = capsys.readouterr().out
    assert "1 refused, non-media files .txt 2 · .wav 1" in text
    assert "line 7" in text and "clips/missing.mp4" in text and "not under an allowed root" in text
    assert mien("inspect", root, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rejected"][0]["line"] == 7 and summary["skipped_non_media"] == {".txt": 2, ".wav": 1}
    assert mien("report", "--input", root, "--output", tmp_path / "r.html") == 0
    html = (tmp_path / "r.html").read_text()
    assert 'id="rejected"' in html and "not under an allowed root" in html and ".wav 1" in html


def test_inspect_lists_each_video_s_manifest_columns(tmp_path, capsys):
    """A video listed from a manifest with other columns (subject, session) shows them with --videos,
    in the text and in the JSON."""
    import pyarrow.parquet as pq

    from tests.outputs.conftest import build_annotated_output

    fx = build_annotated_output(tmp_path)
    part = fx.root / "videos" / f"{RUN2}-00000.parquet"
    t = pq.read_table(part)
    meta = [[("subject", "S07"), ("session", "2")] if v == fx.video_id else None for v in t.column("video_id").to_pylist()]
    pq.write_table(t.set_column(t.schema.get_field_index("meta"), "meta",
                                pa.array(meta, t.schema.field("meta").type)), part)
    assert mien("inspect", fx.root, "--videos") == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith(fx.video_id))
    assert line.endswith("interview.mp4  subject=S07 session=2")
    assert mien("inspect", fx.root, "--json", "--videos") == 0
    listed = {v["video_id"]: v["meta"] for v in json.loads(capsys.readouterr().out)["video_list"]}
    assert listed[fx.video_id] == {"subject": "S07", "session": "2"} and listed[fx.empty_video_id] is None
