"""``import mien``: the Python API over the annotate pipeline, the output reader and the model.

One real run (a real clip, the default model, where the pipeline chooses to run it: worker
processes for one clip) checks annotate -> read -> evaluate end to end from relative paths; an output written directly through the sink checks what
``mien.read`` makes of every detail of the map columns, replaced rows and uncommitted parts.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest

import mien
from model.taxonomy import AU_NAMES, FE_BASIC
from workflows.core.config import ConfigError
from workflows.corpus import schema
from workflows.corpus.writer import AnnotationSink

ROOT = Path(__file__).resolve().parents[1]
FE_COLUMNS = [f"fe_prob_{c}" for c in FE_BASIC]
AU_COLUMNS = [f"au_prob_{a}" for a in AU_NAMES]


def test_import_is_cheap_and_exports_the_api():
    code = ("import sys, mien; print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules)); "
            "print(mien.__version__, *mien.__all__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    heavy, api = out.splitlines()
    assert heavy == "[]"
    version, *names = api.split()
    assert version == "0.1.0" and {"annotate", "read", "load_model", "evaluate"} <= set(names)


# -- mien.read on an output written without Ray --------------------------------------

OLD, NEW, CRASHED = "20260101T000000Z-aaaa1111", "20260102T000000Z-bbbb2222", "20260103T000000Z-cccc3333"


def _face(run_id: str, frame: int, track: int | None, **maps) -> dict:
    return {"video_id": "v1", "frame_index": frame, "timestamp_s": frame / 10, "track_id": track,
            "bbox": [1.0, 2.0, 30.0, 40.0], "fe_label": "happiness", "crop_jpeg": b"\xff\xd8jpeg", "run_id": run_id,
            **maps}


def _commit(root: Path, run_id: str, finished: dt.datetime, videos: list[dict], faces: list[dict],
            *, commit: bool = True) -> None:
    sink = AnnotationSink(str(root), run_id)
    sink.add(schema.table("videos", [{**v, "run_id": run_id, "finished_at": finished} for v in videos]),
             schema.table("faces", faces), schema.table("tracks", []), n_videos=len(videos))
    sink.flush()
    if not commit:  # a crash before the commit marker leaves faces without their videos part
        (root / "videos" / f"{run_id}-00000.parquet").unlink()


@pytest.fixture
def written(tmp_path) -> Path:
    """v1 annotated by OLD (2 faces), re-annotated by NEW (--force: 2 other faces, OLD's rows still
    on disk), then by CRASHED (faces, no commit); v2 failed."""
    root = tmp_path / "out"
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    full = [(c, 1 / len(FE_BASIC)) for c in FE_BASIC]
    _commit(root, OLD, t0,
            [{"video_id": "v1", "video_uri": "/corpus/v1.mp4", "status": "ok", "n_faces": 2},
             {"video_id": "v2", "video_uri": "/corpus/v2.mp4", "status": "error", "error": "not a video"}],
            [_face(OLD, i, 0, fe_probs=full) for i in range(2)])
    _commit(root, NEW, t0 + dt.timedelta(days=1),
            [{"video_id": "v1", "video_uri": "/corpus/v1.mp4", "status": "ok", "n_faces": 2}],
            [_face(NEW, 0, 3, fe_probs=[("happiness", 0.75), ("neutral", 0.25)], au_probs=[("AU12", 0.5)],
                   fe_prior=full),
             _face(NEW, 5, None, fe_probs=[("contempt", 0.5), ("anger", 0.5)])])
    _commit(root, CRASHED, t0 + dt.timedelta(days=2),
            [{"video_id": "v1", "video_uri": "/corpus/v1.mp4", "status": "ok", "n_faces": 1}],
            [_face(CRASHED, 9, 0)], commit=False)
    return root


def test_read_gives_the_current_rows_with_one_column_per_class(written):
    tables = mien.read(written)
    videos = tables.videos.set_index("video_id")
    assert videos.loc["v1", "run_id"] == NEW and videos.loc["v1", "attempts"] == 2
    assert videos.loc["v2", "status"] == "error" and videos.loc["v2", "error"] == "not a video"

    faces = tables.faces
    assert faces["run_id"].tolist() == [NEW, NEW] and faces["frame_index"].tolist() == [0, 5]
    assert faces["video_uri"].tolist() == ["/corpus/v1.mp4"] * 2
    assert faces["track_id"].dtype == "Int32" and faces["track_id"].isna().tolist() == [False, True]
    # every taxonomy class has its column, in the taxonomy's order, then classes outside it
    fe = [c for c in faces.columns if c.startswith("fe_prob_")]
    assert fe == [*FE_COLUMNS, "fe_prob_contempt"]
    assert [c for c in faces.columns if c.startswith("au_prob_")] == AU_COLUMNS
    assert {f"au_evidence_{a}" for a in AU_NAMES} | {f"fe_prior_{c}" for c in FE_BASIC} <= set(faces.columns)
    assert not {"fe_probs", "au_probs", "au_evidence", "fe_prior", "crop_jpeg"} & set(faces.columns)

    first, second = faces.iloc[0], faces.iloc[1]
    assert first["fe_prob_happiness"] == 0.75 and first["fe_prob_neutral"] == 0.25
    assert math.isnan(first["fe_prob_anger"]) and math.isnan(first["fe_prob_contempt"])
    assert first["au_prob_AU12"] == 0.5 and faces["au_prob_AU01"].isna().all()  # an absent AU is NaN
    assert np.isclose(first["fe_prior_neutral"], 1 / len(FE_BASIC))
    assert second["fe_prob_contempt"] == 0.5 and math.isnan(second["fe_prior_neutral"])  # null map: NaN
    assert faces[FE_COLUMNS + ["fe_prob_contempt"]].sum(axis=1).tolist() == [1.0, 1.0]
    assert faces[faces.fe_prob_happiness > 0.5]["frame_index"].tolist() == [0]


def test_read_without_flattening_gives_dicts_and_crops_on_request(written):
    faces = mien.read(str(written), flat=False, crops=True).faces
    assert faces["fe_probs"].tolist() == [{"happiness": 0.75, "neutral": 0.25}, {"contempt": 0.5, "anger": 0.5}]
    assert faces["au_probs"].iloc[0] == {"AU12": 0.5}
    assert faces["crop_jpeg"].tolist() == [b"\xff\xd8jpeg"] * 2
    assert not any(c.startswith("fe_prob_") for c in faces.columns)


def test_read_of_an_output_without_faces_keeps_the_columns(tmp_path):
    root = tmp_path / "out"
    _commit(root, OLD, dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            [{"video_id": "v2", "video_uri": "/corpus/v2.mp4", "status": "error", "error": "not a video"}], [])
    tables = mien.read(root)
    assert len(tables.faces) == 0 and set(FE_COLUMNS + AU_COLUMNS) <= set(tables.faces.columns)
    assert len(tables.tracks) == 0 and "fe_prob_happiness" in tables.tracks.columns
    assert tables.faces[tables.faces.fe_prob_happiness > 0.8].empty


def test_read_refuses_what_is_not_an_output(tmp_path):
    from workflows.corpus.reader import OutputError

    with pytest.raises(OutputError, match="not a mien annotate output"):
        mien.read(tmp_path)


# -- settings ----------------------------------------------------------------------------

def test_bad_settings_raise_the_clis_config_error_before_anything_runs(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as e:
        mien.annotate(tmp_path, out, decod__sampling="fps:1", decode__sampling="fps:x", output__crops="yes")
    message = str(e.value)
    assert "decod: unknown key (did you mean 'decode'?)" in message
    assert "decode.sampling:" in message and "output.crops: expected true/false" in message
    with pytest.raises(ConfigError, match="decode__: empty key segment"):
        mien.annotate(tmp_path, out, decode__="fps:1")
    with pytest.raises(ConfigError, match="au_threshold: must be in"):
        mien.evaluate("default", tmp_path, au_threshold=2)
    assert not out.exists()


def test_load_model_scores_a_face_batch():
    from model.face_batch import build_face_batch

    model = mien.load_model("default", device="cpu")
    happy = np.eye(len(FE_BASIC), dtype=np.float32)[FE_BASIC.index("happiness")]
    out = model.annotate(build_face_batch([{"fe_prior": happy}, {}]))
    assert out["fe_probs"].shape == (2, len(FE_BASIC)) and np.allclose(out["fe_probs"].sum(axis=1), 1)
    assert out["au_probs"].shape == (2, len(AU_NAMES))
    assert FE_BASIC[int(out["fe_probs"][0].argmax())] == "happiness"


# -- a real run ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def annotated(tmp_path_factory, asset):
    """``mien.annotate("clips", "out")`` from the directory holding both, as a notebook would (a
    Ray it starts is shut down afterwards)."""
    import ray

    here = tmp_path_factory.mktemp("notebook")
    (here / "clips").mkdir()
    shutil.copyfile(asset("sample_smiling_video"), here / "clips" / "smiling.mp4")
    started = not ray.is_initialized()
    cwd = os.getcwd()
    os.chdir(here)
    try:
        result = mien.annotate("clips", "out", decode__sampling="fps:1", mlflow__enabled=False)
    finally:
        os.chdir(cwd)
    yield here, result
    if started:
        ray.shutdown()


@pytest.mark.timeout(900)
def test_annotate_a_clip_then_read_it(annotated):
    here, result = annotated
    assert result.input == str(here / "clips") and result.output == str(here / "out")
    assert result.summary.videos_ok == 1 and result.summary.faces > 0
    assert str(here / "out") in str(result)

    video = result.videos.iloc[0]
    assert video["video_uri"] == str(here / "clips" / "smiling.mp4") and video["sampling"] == "fps:1"
    faces = result.faces
    assert len(faces) == result.summary.faces == video["n_faces"]
    assert np.allclose(faces[FE_COLUMNS].sum(axis=1), 1, atol=1e-4)
    # the label is the most probable class, so the columns are named after the classes they hold
    assert (faces[FE_COLUMNS].idxmax(axis=1).str.removeprefix("fe_prob_") == faces["fe_label"]).all()

    stored = pads.dataset(here / "out" / "faces", format="parquet").to_table().to_pylist()
    by_face = {(f["frame_index"], f["track_id"]): f for f in stored}
    for _, row in faces.iterrows():
        f = by_face[(row["frame_index"], row["track_id"])]
        assert {c: row[f"fe_prob_{c}"] for c in FE_BASIC} == dict(f["fe_probs"])
        au = dict(f["au_probs"])
        assert {a: row[f"au_prob_{a}"] for a in au} == au
        assert all(pd.isna(row[f"au_prob_{a}"]) for a in AU_NAMES if a not in au)

    crops = mien.read(result.output, crops=True).faces
    assert crops["crop_jpeg"].map(lambda b: b[:2] == b"\xff\xd8").all()


def test_evaluate_the_default_model_on_its_own_output(annotated, tmp_path):
    here, result = annotated
    evaluation = mien.evaluate("default", result.output, tmp_path / "eval.json", mlflow__enabled=False)
    assert evaluation.report["n_faces"] > 0 and evaluation.report["fe"]["n"] > 0
    assert evaluation.report["self_graded"]  # its own pseudo-labels: the report says it is no result
    assert (tmp_path / "eval.json").exists()


def test_annotate_without_output_writes_under_the_cache(tmp_path, asset):
    from workflows.core.assets import cache_dir

    shutil.copyfile(asset("sample_smiling_video"), tmp_path / "smiling.mp4")
    result = mien.annotate(tmp_path, limit=0, mlflow__enabled=False)  # no video to do: no Ray
    try:
        assert Path(result.output).parent == cache_dir().absolute() / "outputs"
        assert Path(result.output, "runs", f"{result.summary.run_id}.json").exists()
    finally:
        shutil.rmtree(result.output)
