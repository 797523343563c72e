"""Training and evaluation feed the model the same face inputs the annotate stage fed it.

A face goes the way a retraining round takes it: face-stage records → the MLLM stage (its model
batch and its faces table) → the committed annotate output → instruction rows → training
examples and evaluation faces → the model's face batch. Every input the model reads
(blendshapes, AU evidence, FE prior, pose, age, gender, the crop's pixels) must arrive unchanged.
"""

from __future__ import annotations

import datetime as dt

import cv2
import numpy as np
import pyarrow as pa
import pytest

from model.face_batch import build_face_batch
from model.taxonomy import AU_NAMES
from workflows.annotate.pipeline import AnnotateConfig
from workflows.annotate.stages import MllmStage, model_batch, pack_faces, unpack_faces
from workflows.core.config import load_config
from workflows.corpus import schema
from workflows.corpus.writer import AnnotationSink
from workflows.faces.landmarks import BLENDSHAPE_NAMES
from workflows.faces.stage import FaceRecord
from workflows.training.data import (
    ExampleDataset,
    examples_from_instructions,
    face_dict,
    faces_from_instructions,
)
from workflows.training.instructions import (
    PseudoLabelFilter,
    instructions_from_annotations,
    read_instructions,
    write_instructions,
)

CROP = 112
RUN_ID = "run-roundtrip"
INPUTS = ("blendshapes", "au_evidence", "fe_prior", "pose", "age")


def _record(i: int, rng: np.random.Generator, *, mesh: bool, fe_prior: bool, track: int) -> FaceRecord:
    crop = cv2.GaussianBlur(rng.integers(0, 255, (CROP, CROP, 3), dtype=np.uint8), (7, 7), 2)
    au = rng.random(len(AU_NAMES)).astype(np.float32)
    if not mesh:
        au[::3] = np.nan  # only geometry cues: some AUs unmeasured
    return FaceRecord(
        frame_index=i, timestamp_s=i / 10, bbox=np.array([10, 10, 90, 90], np.float32), det_score=0.9,
        kps=np.zeros((5, 2), np.float32), landmarks=None, crop=crop,
        pose=(rng.normal(0, 20, 3).astype(np.float32) if mesh else np.full(3, np.nan, np.float32)),
        age=None if i == 2 else 20.0 + i, gender=None if i == 2 else "female", gender_score=0.8,
        blendshapes=rng.random(len(BLENDSHAPE_NAMES)).astype(np.float32) if mesh else None,
        au_evidence=au, au_evidence_raw=au.copy(),
        fe_prior=rng.dirichlet(np.ones(7)).astype(np.float32) if fe_prior else None,
        embedding=None, track_id=track, segment_id=0)


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    """Three faces through the real MLLM stage (default model) into a committed annotate output."""
    rng = np.random.default_rng(5)
    records = [_record(0, rng, mesh=True, fe_prior=True, track=0),
               _record(1, rng, mesh=False, fe_prior=True, track=0),
               _record(2, rng, mesh=True, fe_prior=False, track=1)]
    cfg = load_config(AnnotateConfig, None, [])
    row = {"video_id": "vid", "video_uri": "/corpus/vid.mp4", "status": "ok", "error": None,
           "n_frames": 3, "n_faces": 3, "n_tracks": 2, "faces_npz": pack_faces(records, cfg.output.jpeg_quality)}
    stage = MllmStage(cfg, RUN_ID)
    fed = model_batch(unpack_faces(row["faces_npz"]), range(3), video_key=0)  # what _score annotates
    out = stage.process_video(row, video_key=0)
    assert out["status"] == "ok", out.get("error")
    faces = out["faces"]
    return records, fed, faces, tmp_path_factory.mktemp("annotate")


def _commit(root, faces: pa.Table) -> str:
    """``faces`` written as ``mien annotate``'s sink commits a video."""
    video = {"video_id": "vid", "video_uri": "/corpus/vid.mp4", "status": "ok", "n_frames": 3,
             "n_faces": faces.num_rows, "run_id": RUN_ID, "finished_at": dt.datetime.now(dt.UTC)}
    sink = AnnotationSink(str(root), RUN_ID)
    sink.add(schema.table("videos", [video]), faces, schema.TRACKS.empty_table(), 1)
    sink.flush()
    return str(root)


def _every_face() -> PseudoLabelFilter:
    return PseudoLabelFilter(min_det_score=0.0, min_fe_confidence=0.0, max_per_track=100)


def _training_and_eval_batches(output: str) -> tuple[dict, dict, list[int], list[int]]:
    """The batch ``FacialMLLM.collate`` builds from training examples and the one evaluation
    scores, each with the frame index of its faces."""
    table = instructions_from_annotations(output, flt=_every_face(), tasks=("fe_category",)).table
    examples, _ = examples_from_instructions(table, needs_crops=True)
    dataset = ExampleDataset(examples, CROP, with_crop=True)
    train = build_face_batch([dataset[i] for i in range(len(dataset))])  # = FacialMLLM.collate's batch
    face_rows = faces_from_instructions(table).to_pylist()
    evaluated = build_face_batch([face_dict(r, CROP, True) for r in face_rows])  # = predict_faces' batch

    def frames(ids):
        return [int(i.split("/")[2]) for i in ids]

    return (train, evaluated, frames(examples.column("face_id").to_pylist()),
            frames([r["face_id"] for r in face_rows]))


def test_training_and_evaluation_see_what_annotate_fed_the_model(annotated):
    records, fed, faces, tmp = annotated
    np.testing.assert_array_equal(fed["blendshapes"][0], records[0].blendshapes)  # measured, not NaN
    assert np.isnan(fed["blendshapes"][1]).all()
    train, evaluated, train_frames, eval_frames = _training_and_eval_batches(_commit(tmp / "out", faces))
    for batch, frames in ((train, train_frames), (evaluated, eval_frames)):
        assert sorted(frames) == [0, 1, 2]
        for j, i in enumerate(frames):
            for name in INPUTS:
                np.testing.assert_array_equal(batch[name][j], fed[name][i], err_msg=f"{name} of face {i}")
            assert batch["gender"][j] == fed["gender"][i]
            np.testing.assert_array_equal(batch["crop"][j], fed["crop"][i])  # the same pixels


def test_outputs_and_instructions_written_before_blendshapes_were_stored(annotated, tmp_path):
    records, fed, faces, _ = annotated
    old = faces.drop_columns(["blendshapes"])
    train, evaluated, train_frames, _ = _training_and_eval_batches(_commit(tmp_path / "out", old))
    assert np.isnan(train["blendshapes"]).all() and np.isnan(evaluated["blendshapes"]).all()
    for j, i in enumerate(train_frames):
        np.testing.assert_array_equal(train["au_evidence"][j], fed["au_evidence"][i])

    table = instructions_from_annotations(_commit(tmp_path / "new", faces), flt=_every_face(),
                                          tasks=("fe_category",)).table
    write_instructions(table.drop_columns(["blendshapes"]), str(tmp_path / "ins"))
    back = read_instructions(str(tmp_path / "ins"))
    assert back.column("blendshapes").null_count == back.num_rows
