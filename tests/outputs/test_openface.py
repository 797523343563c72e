"""`mien export openface`: OpenFace 2.0 column conventions, values checked against the Parquet."""

import math

import numpy as np
import pandas as pd
import pytest

from model.taxonomy import AU_NAMES
from tests.outputs.conftest import ERROR_MESSAGE, faces_frame, mien
from workflows.outputs.openface import OPENFACE_AU_C, OPENFACE_AU_R

OPENFACE_PREFIX = ["frame", "face_id", "timestamp", "confidence", "success",
                   "pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]


@pytest.fixture(scope="module")
def exported(annotated, tmp_path_factory):
    out = tmp_path_factory.mktemp("openface")
    assert mien("export", "openface", "--input", annotated.root, "--output", out) == 0
    return out


def test_one_csv_per_ok_video_and_an_index(annotated, exported):
    names = sorted(p.name for p in exported.iterdir())
    assert names == [f"empty_room-{annotated.empty_video_id}.csv", f"interview-{annotated.video_id}.csv",
                     "videos.csv"]
    index = pd.read_csv(exported / "videos.csv", keep_default_na=False)
    broken = index.set_index("video_id").loc[annotated.error_video_id]
    assert (broken["status"], broken["error_kind"], broken["error"], broken["csv"]) == \
        ("error", "invalid_data", ERROR_MESSAGE, "")
    empty = pd.read_csv(exported / f"empty_room-{annotated.empty_video_id}.csv", skipinitialspace=True)
    assert len(empty) == 0 and list(empty.columns[:11]) == OPENFACE_PREFIX


def test_csv_values_match_parquet(annotated, exported):
    path = exported / f"interview-{annotated.video_id}.csv"
    raw = pd.read_csv(path)
    assert " AU12_c" in raw.columns  # OpenFace's ", " separator, kept for scripts written against it
    df = pd.read_csv(path, skipinitialspace=True)
    assert list(df.columns[:11]) == OPENFACE_PREFIX
    assert [c for c in df.columns if c.endswith("_r")] == [f"{a}_r" for a in OPENFACE_AU_R]
    assert [c for c in df.columns if c.endswith("_c")] == [f"{a}_c" for a in OPENFACE_AU_C]

    faces = faces_frame(annotated.root)
    faces = faces[faces["video_id"] == annotated.video_id].sort_values(["frame_index", "track_id"])
    assert len(df) == len(faces) == annotated.n_faces
    assert list(df[["frame", "face_id"]].itertuples(index=False, name=None)) == \
        [(f + 1, t) for f, t in zip(faces["frame_index"], faces["track_id"], strict=True)]
    np.testing.assert_allclose(df["timestamp"], faces["timestamp_s"], atol=1e-6)
    np.testing.assert_allclose(df["confidence"], faces["det_score"], atol=1e-4)
    assert (df["success"] == 1).all()
    assert df[["pose_Tx", "pose_Ty", "pose_Tz"]].isna().all().all()
    pose = np.stack(faces["pose"].to_numpy())  # yaw, pitch, roll degrees
    np.testing.assert_allclose(df["pose_Rx"], np.radians(pose[:, 1]), atol=1e-4)  # NaN stays NaN
    np.testing.assert_allclose(df["pose_Ry"], np.radians(pose[:, 0]), atol=1e-4)
    np.testing.assert_allclose(df["pose_Rz"], np.radians(pose[:, 2]), atol=1e-4)
    assert df[[f"{a}_r" for a in OPENFACE_AU_R]].isna().all().all()  # no intensities by default
    assert list(df["mien_fe_label"]) == list(faces["fe_label"])
    np.testing.assert_allclose(df["mien_fe_confidence"], faces["fe_confidence"], atol=1e-4)

    for (_, row), (_, face) in zip(df.iterrows(), faces.iterrows(), strict=True):
        probs = dict(face["au_probs"])
        for au in OPENFACE_AU_C:
            expected = (1.0 if au in face["au_active"] else 0.0) if au in probs else math.nan
            assert row[f"{au}_c"] == expected or (math.isnan(expected) and math.isnan(row[f"{au}_c"])), au
        for au in AU_NAMES:
            got = row[f"mien_{au}_p"]
            assert (math.isnan(got) and au not in probs) or got == pytest.approx(probs[au], abs=1e-4)
    assert df["AU28_c"].isna().all()  # mien has no AU28
    assert df.loc[df["face_id"] == 1, "AU45_c"].isna().all()  # not scored on track 1


def test_probability_as_intensity_is_opt_in(annotated, tmp_path):
    assert mien("export", "openface", "--input", annotated.root, "--output", tmp_path,
                "--au-intensity", "probability") == 0
    df = pd.read_csv(tmp_path / f"interview-{annotated.video_id}.csv", skipinitialspace=True)
    np.testing.assert_allclose(df["AU12_r"], 5 * df["mien_AU12_p"], atol=2e-3)
