"""mien evaluate: metrics against a hand-computed example, every data format, CLI, JSON, plots, MLflow."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.taxonomy import AU_NAMES, FE_BASIC
from workflows.corpus import schema
from workflows.training.data import FACE_SCHEMA


def _fe(top: str, p: float) -> list[float]:
    """A 7-way distribution (FE_BASIC order) with ``p`` on ``top`` and the rest spread evenly."""
    v = np.full(len(FE_BASIC), (1 - p) / (len(FE_BASIC) - 1))
    v[FE_BASIC.index(top)] = p
    return v.tolist()


def _au(values: dict[str, float]) -> list[float]:
    return [values.get(a, float("nan")) for a in AU_NAMES]


def test_report_matches_a_hand_computed_example() -> None:
    from workflows.evaluation.evaluate import report_from_predictions

    labeled = ["AU06", "AU12"]
    faces = pa.Table.from_pylist([
        {"face_id": "f1", "fe_label": "happiness", "au_active": ["AU06", "AU12"], "au_labeled": labeled},
        {"face_id": "f2", "fe_label": "happiness", "au_active": ["AU12"], "au_labeled": labeled},
        {"face_id": "f3", "fe_label": "sadness", "au_active": [], "au_labeled": labeled},
        {"face_id": "f4", "fe_label": "neutral", "au_active": ["AU06", "AU12"], "au_labeled": labeled},
        {"face_id": "f5", "fe_label": "surprise", "au_active": None, "au_labeled": None},  # no AU labels
    ], schema=FACE_SCHEMA)
    fe_probs = np.array([_fe("happiness", 0.90), _fe("sadness", 0.62), _fe("sadness", 0.78),
                         _fe("neutral", 0.70), _fe("happiness", 0.55)])
    au_probs = np.array([_au({"AU06": 0.8, "AU12": 0.9, "AU25": 0.9}),  # AU25 is not labeled: not scored
                         _au({"AU06": 0.6, "AU12": 0.3}),
                         _au({"AU06": 0.2, "AU12": 0.7}),
                         _au({"AU06": 0.4, "AU12": 0.1}),
                         _au({"AU06": 0.9})])  # f5 has no AU truth: not scored
    report = report_from_predictions(faces, fe_probs, au_probs)

    fe = report["fe"]
    # predictions: happiness, sadness, sadness, neutral, happiness -> faces 1, 3, 4 right
    assert fe["n"] == 5 and fe["accuracy"] == pytest.approx(3 / 5) and fe["war"] == pytest.approx(3 / 5)
    assert fe["per_class_recall"] == {"neutral": 1.0, "happiness": 0.5, "sadness": 1.0, "surprise": 0.0,
                                      "fear": None, "disgust": None, "anger": None}
    assert fe["uar"] == pytest.approx((1.0 + 0.5 + 1.0 + 0.0) / 4)
    cm = np.zeros((7, 7), int)
    for true, pred in [("happiness", "happiness"), ("happiness", "sadness"), ("sadness", "sadness"),
                       ("neutral", "neutral"), ("surprise", "happiness")]:
        cm[FE_BASIC.index(true), FE_BASIC.index(pred)] += 1
    assert fe["confusion_matrix"] == cm.tolist()
    # ECE, 15 bins: every confidence sits alone in its bin -> mean |correct - confidence|
    assert fe["ece"] == pytest.approx((0.10 + 0.62 + 0.22 + 0.30 + 0.55) / 5)
    au = report["au"]
    # AU06: f1 TP, f2 FP, f3 TN, f4 FN -> 2*1 / (2*1 + 1 + 1) = 0.5
    # AU12: f1 TP, f2 FN, f3 FP, f4 FN -> 2*1 / (2*1 + 1 + 2) = 0.4
    assert au["n"] == 4
    assert au["f1"]["AU06"] == pytest.approx(0.5) and au["f1"]["AU12"] == pytest.approx(0.4)
    assert au["mean_f1"] == pytest.approx(0.45)
    assert au["f1"]["AU25"] is None  # never labeled: undefined, not zero
    json.dumps(report, allow_nan=False)


def _annotate_output(root: Path, model_id: str = "m") -> str:
    """A minimal `mien annotate` output: faces whose prior readings are known, with pseudo-labels."""
    faces = [  # (pseudo-label, argmax of the face prior)
        ("happiness", "happiness"), ("happiness", "sadness"), ("sadness", "sadness"), ("anger", "anger")]
    rows = []
    for i, (label, prior) in enumerate(faces):
        rows.append({"video_id": f"v{i}", "frame_index": 0, "timestamp_s": 0.0, "track_id": 0,
                     "segment_id": 0, "bbox": [0.0, 0.0, 10.0, 10.0], "det_score": 0.99, "age": 30.0,
                     "gender": "female",
                     "fe_label": label, "fe_confidence": 0.9, "fe_probs": [(label, 0.9)],
                     "au_probs": [], "au_active": [], "au_evidence": [],
                     "fe_prior": list(zip(FE_BASIC, _fe(prior, 0.64), strict=True)),
                     "model_id": model_id, "run_id": "r"})
    videos = [{"video_id": r["video_id"], "video_uri": f"/corpus/{r['video_id']}.mp4", "status": "ok", "run_id": "r",
               "finished_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)} for r in rows]
    for name, table_rows in (("faces", rows), ("videos", videos)):  # the videos part commits the faces part
        (root / name).mkdir(parents=True)
        pq.write_table(schema.table(name, table_rows), root / name / "part-0.parquet")
    return str(root)


def _cli(argv: list[str]) -> int:
    from jobs.cli import main

    return main(argv)


def test_cli_evaluates_the_default_model_on_an_annotate_output(tmp_path, monkeypatch, capsys) -> None:
    """The offline default reads the face prior, so its predictions are known: the prior's arg-max."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = _annotate_output(tmp_path / "out")
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "eval" / "default.json"
    rc = _cli(["evaluate", "--model", "default", "--data", data, "--output", str(out),
               "--set", f"mlflow.tracking_uri={tracking}"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "FE  accuracy 0.7500" in printed
    report = json.loads(out.read_text())
    assert report["data"]["load"]["format"] == "annotations" and report["n_faces"] == 4
    assert report["fe"]["accuracy"] == pytest.approx(0.75)
    assert report["fe"]["per_class_recall"]["happiness"] == 0.5
    assert report["fe"]["uar"] == pytest.approx((0.5 + 1 + 1) / 3)
    # au_active = [] reads as "no AU active" and the prior predicts none: every F1 undefined, not 0
    assert report["au"]["n"] == 4 and report["au"]["mean_f1"] is None
    # calibrated prior: p ∝ prior^(1/T), T = 2 -> 0.8 / (0.8 + 6 * 0.06 ** 0.5) (up to its log epsilon)
    expected = 0.8 / (0.8 + 6 * 0.06 ** 0.5)
    assert report["fe"]["calibration"]["bins"][5]["confidence"] == pytest.approx(expected, abs=1e-3)
    assert {p.name for p in (tmp_path / "eval" / "default_plots").iterdir()} == {
        "confusion_matrix.png", "reliability.png", "au_f1.png"}
    client = mlflow.MlflowClient(tracking)
    (run,) = client.search_runs([client.get_experiment_by_name("mien-evaluate").experiment_id])
    assert run.data.metrics["fe/accuracy"] == pytest.approx(0.75)
    assert run.data.params["model_uri"] == "default"
    assert run.data.tags["mien.model_id"].startswith("mien-default")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.json", "confusion_matrix.png"}


def test_cli_reports_unusable_inputs_with_exit_2(tmp_path, capsys) -> None:
    assert _cli(["evaluate", "--model", str(tmp_path / "missing"), "--data", str(tmp_path),
                 "--set", "mlflow.enabled=false"]) == 2
    assert "mien evaluate:" in capsys.readouterr().err
    no_mlflow = ["--set", "mlflow.enabled=false"]
    assert _cli(["evaluate", "--model", "default", "--data", str(tmp_path), *no_mlflow]) == 2
    assert "no Parquet files and no faces/" in capsys.readouterr().err
    assert _cli(["evaluate", "--model", "default", "--data", str(tmp_path), "--set", "au_threshold=2"]) == 2
    assert "au_threshold" in capsys.readouterr().err


def test_split_selection_matches_trainings_holdout(tmp_path) -> None:
    """Instruction data without a split column is split as `mien train` splits it."""
    from workflows.evaluation.evaluate import EvaluateConfig, load_faces
    from workflows.training.instructions import (
        assign_splits,
        instructions_from_annotations,
        write_instructions,
    )

    data = _annotate_output(tmp_path / "out")
    table = instructions_from_annotations(data, tasks=["fe_category"]).table
    write_instructions(table, str(tmp_path / "ins"))
    expected = {r["id"].rsplit("/", 1)[0] for r in assign_splits(table).to_pylist() if r["split"] == "train"}
    faces, report = load_faces(str(tmp_path / "ins"), EvaluateConfig(split="train"), with_crops=False)
    assert set(faces.column("face_id").to_pylist()) == expected and report["load"]["format"] == "instructions"


def test_data_formats_are_detected(tmp_path) -> None:
    from workflows.training.data import data_format
    from workflows.training.datasets import records_to_arrow

    assert data_format("rafdb:/data/RAF-DB/EmoLabel/list_patition_label.txt") == "labeled"
    assert data_format(_annotate_output(tmp_path / "out")) == "annotations"
    import pandas as pd

    records = pd.DataFrame([{"id": "x/1", "dataset": "x", "fe_label": "happiness", "au_labeled": None}])
    (tmp_path / "rec").mkdir()
    pq.write_table(records_to_arrow(records), tmp_path / "rec" / "r.parquet")
    assert data_format(str(tmp_path / "rec")) == "records"


def test_grading_a_model_on_its_own_pseudo_labels_is_flagged_not_a_result(tmp_path, capsys) -> None:
    """`mien evaluate --model default --data OUT` where OUT was annotated by the default model grades
    the teacher against itself: the report says so, loudly, and names the fix."""
    from model import load_model

    own = load_model("default").model_id
    data = _annotate_output(tmp_path / "out", model_id=own)
    out = tmp_path / "eval.json"
    assert _cli(["evaluate", "--model", "default", "--data", data, "--output", str(out),
                 "--set", "mlflow.enabled=false"]) == 0
    printed = capsys.readouterr().out
    assert "WARNING NOT A RESULT: 100% of these labels are pseudo-labels made by" in printed
    assert "labeled holdout" in printed
    report = json.loads(out.read_text())
    assert report["self_graded"] is True and report["data"]["label_models"] == {own: 4}
    other = _annotate_output(tmp_path / "out2")  # labels from another model: a result
    assert _cli(["evaluate", "--model", "default", "--data", other, "--output", str(tmp_path / "e2.json"),
                 "--set", "mlflow.enabled=false"]) == 0
    assert "NOT A RESULT" not in capsys.readouterr().out
    assert json.loads((tmp_path / "e2.json").read_text())["self_graded"] is False
    # the model's own run with descriptions on (its model_id names them) made the same labels
    described = _annotate_output(tmp_path / "out3", model_id=f"{own}+describe:per_track/32tok")
    assert _cli(["evaluate", "--model", "default", "--data", described, "--output", str(tmp_path / "e3.json"),
                 "--set", "mlflow.enabled=false"]) == 0
    assert "WARNING NOT A RESULT: 100% of these labels are pseudo-labels made by" in capsys.readouterr().out
