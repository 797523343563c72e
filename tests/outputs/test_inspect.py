"""`mien inspect` on the fixture output: the numbers match the Parquet, errors are explained."""

import json

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
