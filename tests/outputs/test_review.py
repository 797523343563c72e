"""``mien review export | import``: faces picked for a human look go to Label Studio as tasks that
fit their labeling config, and Label Studio's JSON export comes back as labeled faces that
``mien evaluate`` scores.

The annotate output is written through the real sink with known probabilities; the Label Studio
export is built by hand in the documented "JSON" export format (``label-studio`` and
``label-studio-sdk`` are not installed here).
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from PIL import Image

from model.taxonomy import AU_NAMES, FE_BASIC
from tests.outputs.conftest import MODEL_ID, mien, synthetic_crop
from workflows.corpus import schema
from workflows.corpus.writer import AnnotationSink
from workflows.outputs.review import (
    ReviewError,
    export_tasks,
    labeling_config,
    validate_tasks,
)

RUN = "20260301T000000Z-rrrr0001"
V1, V2, V3 = "v1" + "0" * 18, "v2" + "0" * 18, "v3" + "0" * 18


def _fe(label: str, p: float, second: str | None = None) -> dict[str, float]:
    """``label`` with probability ``p``; the rest on ``second`` alone, or spread evenly."""
    rest = [c for c in FE_BASIC if c != label]
    if second is not None:
        return {c: p if c == label else (1 - p if c == second else 0.0) for c in FE_BASIC}
    return {c: p if c == label else (1 - p) / len(rest) for c in FE_BASIC}


# video -> (track, frame, fe_label, top p, second class (None: spread), prior label, prior p, active AUs, crop)
FACES: dict[str, list[tuple[int, int, str, float, str | None, str, float, list[str], bool]]] = {
    V1: [(0, 0, "happiness", 0.90, None, "happiness", 0.8, ["AU06", "AU12"], True),
         (0, 5, "happiness", 0.40, None, "happiness", 0.6, ["AU12"], True),
         (0, 10, "happiness", 0.55, None, "happiness", 0.6, ["AU12"], True),
         (1, 0, "happiness", 0.35, None, "anger", 0.9, [], True),  # the prior says anger, sure of it
         (1, 5, "anger", 0.80, None, "anger", 0.7, ["AU04"], True)],
    V2: [(0, 0, "sadness", 0.30, None, "sadness", 0.5, ["AU15"], True),
         (0, 5, "sadness", 0.45, None, "neutral", 0.7, ["AU15"], True),  # a less sure disagreement
         (1, 0, "neutral", 0.20, None, "neutral", 0.5, [], False)],  # least certain, but no crop
    V3: [(0, 0, "surprise", 0.50, None, "surprise", 0.5, ["AU01", "AU02"], True),  # high entropy
         (1, 0, "surprise", 0.50, "fear", "surprise", 0.5, ["AU01"], True)],  # same top p, lower entropy
}


def key(video: str, track: int, frame: int) -> str:
    return f"{video}-{frame:06d}-t{track}"


def write_output(root: Path, crops: bool = True) -> Path:
    """One committed chunk of three videos through the real sink."""
    sink = AnnotationSink(str(root), RUN)
    finished = sink.commit_time()
    videos, faces = [], []
    for vid, rows in FACES.items():
        videos.append({"video_id": vid, "video_uri": f"/corpus/{vid[:2]}.mp4", "status": "ok", "run_id": RUN,
                       "n_faces": len(rows), "model_id": MODEL_ID, "finished_at": finished})
        for track, frame, label, p, second, prior, prior_p, active, crop in rows:
            au_probs = [(a, 0.8 if a in active else 0.1) for a in AU_NAMES]
            faces.append({
                "video_id": vid, "frame_index": frame, "timestamp_s": frame / 10, "track_id": track,
                "segment_id": 0, "bbox": [10.0, 10.0, 110.0, 130.0], "det_score": 0.9, "pose": [0.0, 0.0, 0.0],
                "age": 30.0, "gender": "female", "fe_label": label, "fe_confidence": p,
                "fe_probs": list(_fe(label, p, second).items()), "au_probs": au_probs, "au_active": active,
                "au_evidence": [(a, 0.9 if a in active else 0.0) for a in AU_NAMES],
                "fe_prior": list(_fe(prior, prior_p).items()),
                "crop_jpeg": synthetic_crop(label) if crops and crop else None, "model_id": MODEL_ID,
                "run_id": RUN})
    sink.add(schema.table("videos", videos), schema.table("faces", faces), schema.table("tracks", []),
             n_videos=len(videos))
    sink.flush()
    return root


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    return write_output(tmp_path_factory.mktemp("review") / "out")


def tasks_of(directory: str | Path) -> list[dict[str, Any]]:
    return json.loads((Path(directory) / "tasks.json").read_text())


def test_uncertainty_export_asks_about_the_least_certain_face_of_each_track(output, tmp_path):
    r = export_tasks(str(output), str(tmp_path / "review"), budget=4, strategy="uncertainty")
    tasks = tasks_of(r.directory)
    assert r.tasks == len(tasks) == 4
    # lowest top probability first, one face per track; at equal top p the higher entropy first;
    # V2's track 1 is the least certain face of all but has no crop to show
    assert [t["data"]["meta"]["face_key"] for t in tasks] == [
        key(V2, 0, 0), key(V1, 1, 0), key(V1, 0, 5), key(V3, 0, 0)]
    assert r.candidates == 9
    assert validate_tasks(tasks, (tmp_path / "review" / "labeling_config.xml").read_text()) == []
    for t in tasks:
        face = t["data"]["meta"]["face_key"]
        assert t["data"]["image"] == f"{r.image_root}{face}.jpg"
        assert r.image_root.startswith("/data/local-files/?d=") and r.image_root.endswith("/images/")
        with Image.open(tmp_path / "review" / "images" / f"{face}.jpg") as img:
            assert img.size == (112, 112)
    first = tasks[0]
    assert first["data"]["meta"]["video_uri"] == "/corpus/v2.mp4"
    assert first["data"]["meta"]["frame_index"] == 0 and first["data"]["meta"]["track_id"] == 0
    pred = first["predictions"][0]
    assert pred["model_version"] == MODEL_ID and pred["score"] == pytest.approx(0.30)
    fe, au = pred["result"]
    assert (fe["from_name"], fe["value"]["choices"], fe["score"]) == ("expression", ["sadness"], pytest.approx(0.30))
    assert (au["from_name"], au["value"]["choices"]) == ("aus", ["AU15"])
    # the model found no active AU on V1's track 1: the pre-annotation says so
    assert tasks[1]["predictions"][0]["result"][1]["value"]["choices"] == ["none"]


def test_disagreement_and_random_exports(output, tmp_path):
    r = export_tasks(str(output), str(tmp_path / "dis"), budget=10, strategy="disagreement")
    # only faces whose face prior disagrees with the model, the surer disagreement first
    assert [t["data"]["meta"]["face_key"] for t in tasks_of(r.directory)] == [key(V2, 0, 5), key(V1, 1, 0)]

    picks = []
    for name, seed in (("a", 7), ("b", 7)):
        r = export_tasks(str(output), str(tmp_path / name), budget=3, strategy="random", seed=seed)
        keys = [t["data"]["meta"]["face_key"] for t in tasks_of(r.directory)]
        assert len(keys) == 3
        assert len({k.rsplit("-", 2)[0] + k.rsplit("-", 1)[1] for k in keys}) == 3  # three different tracks
        picks.append(keys)
    assert picks[0] == picks[1]  # seeded


def test_validate_tasks_names_what_does_not_fit_the_config():
    xml = labeling_config()
    good = {"data": {"image": "/data/local-files/?d=x.jpg"}, "predictions": [{"result": [
        {"from_name": "expression", "to_name": "image", "type": "choices", "value": {"choices": ["anger"]}}]}]}
    assert validate_tasks([good], xml) == []
    bad = copy.deepcopy(good)
    bad["predictions"][0]["result"] += [
        {"from_name": "expression", "to_name": "image", "type": "choices", "value": {"choices": ["joy", "anger"]}},
        {"from_name": "aus", "to_name": "img", "type": "choices", "value": {"choices": ["AU12"]}},
        {"from_name": "valence", "to_name": "image", "type": "rating", "value": {"rating": 3}}]
    problems = validate_tasks([bad, {"data": {}}], xml)
    assert any("['joy'] are not choices of 'expression'" in p for p in problems)
    assert any("single-choice, got 2" in p for p in problems)
    assert any("to_name 'img'" in p for p in problems)
    assert any("'valence' is no control" in p for p in problems)
    assert any(p.startswith("task 1: data.image") for p in problems)


def test_export_of_an_output_without_crops_names_the_fix(tmp_path, capsys):
    out = write_output(tmp_path / "out", crops=False)
    assert mien("review", "export", "--input", out, "--output", tmp_path / "review") == 2
    err = capsys.readouterr().err
    assert "no face crops" in err and "--set output.crops=true" in err
    assert not (tmp_path / "review" / "tasks.json").exists()


def test_export_never_overwrites_an_earlier_review_set(output, tmp_path):
    export_tasks(str(output), str(tmp_path / "review"), budget=1)
    with pytest.raises(ReviewError, match="already holds a review export"):
        export_tasks(str(output), str(tmp_path / "review"), budget=1)


def _annotation(ident: int, task: int, result: list[dict[str, Any]], *, cancelled: bool = False,
                updated: str = "2026-03-02T10:00:00.000000Z", user: Any = 1) -> dict[str, Any]:
    # Label Studio "JSON" export, one annotation: https://labelstud.io/guide/export.html
    # ("Label Studio JSON format of annotated tasks": id, result, was_cancelled, ground_truth,
    # created_at, updated_at, lead_time, result_count, task, completed_by)
    return {"id": ident, "result": result, "was_cancelled": cancelled, "ground_truth": False,
            "created_at": updated, "updated_at": updated, "lead_time": 4.2, "result_count": 0, "task": task,
            "completed_by": user}


def _choices(name: str, values: list[str], ident: str) -> dict[str, Any]:
    # a Choices result item as Label Studio exports it (type "choices", value.choices)
    return {"id": ident, "type": "choices", "value": {"choices": values}, "origin": "manual",
            "to_name": "image", "from_name": name}


def label_studio_export(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What Label Studio's Export > JSON gives after review: the imported tasks with ids, project
    fields and annotations. Task 0 skipped; 1 FE only; 2 FE + AUs, relabeled (the later annotation
    counts); 3 "no AU active"; the rest not annotated (not in a default export)."""
    out = []
    annotations = {
        0: [_annotation(100, 1, [], cancelled=True)],
        1: [_annotation(101, 2, [_choices("expression", ["sadness"], "r1")], user={"id": 2, "email": "b@lab"})],
        2: [_annotation(102, 3, [_choices("expression", ["neutral"], "r2"), _choices("aus", ["AU04"], "r3")],
                        updated="2026-03-02T09:00:00.000000Z"),
            _annotation(103, 3, [_choices("expression", ["happiness"], "r4"),
                                 _choices("aus", ["AU06", "AU12"], "r5")], updated="2026-03-02T11:00:00.000000Z")],
        3: [_annotation(104, 4, [_choices("expression", ["surprise"], "r6"), _choices("aus", ["none"], "r7")])],
    }
    for n, task in enumerate(tasks):
        if n not in annotations:
            continue
        out.append({"id": n + 1, "data": task["data"], "annotations": annotations[n], "predictions": [n + 1],
                    "drafts": [], "meta": {}, "created_at": "2026-03-02T08:00:00.000000Z",
                    "updated_at": "2026-03-02T11:00:00.000000Z", "inner_id": n + 1, "total_annotations": 1,
                    "cancelled_annotations": int(n == 0), "total_predictions": 1, "project": 1,
                    "updated_by": None, "file_upload": "tasks.json", "comment_authors": []})
    return out


def test_review_round_trip_through_label_studio_json_export(output, tmp_path, capsys):
    from workflows.core.tracking import MlflowConfig
    from workflows.evaluation.evaluate import EvaluateConfig, evaluate
    from workflows.training.data import data_format, faces_from_instructions, load_instructions

    review = tmp_path / "review"
    assert mien("review", "export", "--input", output, "--output", review, "--budget", "5") == 0
    assert "5 faces (uncertainty)" in capsys.readouterr().out
    tasks = tasks_of(review)
    export = tmp_path / "project-1-at-2026-03-02.json"
    export.write_text(json.dumps(label_studio_export(tasks)))
    labeled = tmp_path / "labeled"
    assert mien("review", "import", "--input", export, "--output", labeled) == 0
    assert "3 labeled faces (2 FE+AU, 1 FE only, 0 AU only) of 4 tasks; 1 skipped" in capsys.readouterr().out
    report = json.loads((labeled / "review_import.json").read_text())
    assert (report["skipped"], report["n_problems"], report["annotators"]) == (1, 0, {"2": 1, "1": 2})

    assert data_format(str(labeled)) == "instructions"
    table, _ = load_instructions(str(labeled))
    faces = {f["face_id"].split("/", 1)[1]: f for f in faces_from_instructions(table).to_pylist()}
    keys = [t["data"]["meta"]["face_key"] for t in tasks]
    assert set(faces) == set(keys[1:4])
    fe_only, both, none = (faces[k] for k in keys[1:4])
    assert (fe_only["fe_label"], fe_only["au_labeled"]) == ("sadness", None)  # unlabeled, not all-negative
    assert both["fe_label"] == "happiness" and both["au_active"] == ["AU06", "AU12"]
    assert both["au_labeled"] == list(AU_NAMES)
    assert (none["fe_label"], none["au_active"], none["au_labeled"]) == ("surprise", [], list(AU_NAMES))
    assert all(f["source"] == "review" and f["image"] and f["fe_prior"] for f in faces.values())
    raw = pq.read_table(next(labeled.glob("*.parquet"))).to_pylist()
    prov = {(r["id"].split("/")[1], r["review_task_id"], r["review_annotation_id"], r["review_annotator"])
            for r in raw}
    assert prov == {(keys[1], 2, 101, "2"), (keys[2], 3, 103, "1"), (keys[3], 4, 104, "1")}
    with Image.open(io.BytesIO(both["image"])) as img:
        assert img.size == (112, 112)

    result = evaluate("default", str(labeled), EvaluateConfig(mlflow=MlflowConfig(enabled=False)))
    rep = result.report
    assert rep["n_faces"] == 3 and rep["fe"]["n"] == 3 and rep["au"]["n"] == 2
    assert rep["self_graded"] is False
