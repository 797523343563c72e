"""The face batch builder: every path's batch has the same fields, shapes, dtypes and NaN rules."""

from __future__ import annotations

import numpy as np
import pytest

from model.face_batch import batch_rows, build_face_batch, slice_batch
from model.face_prior import prior_arrays


def _face(seed: int, **extra) -> dict:
    rng = np.random.default_rng(seed)
    return {"crop": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
            "au_evidence": rng.random(23).tolist(), "fe_prior": rng.dirichlet(np.ones(7)),
            "blendshapes": rng.random(52).astype(np.float32), "pose": [10.0, -5.0, 2.5],
            "age": 31.0, "gender": "female", **extra}


def test_shapes_dtypes_and_values():
    faces = [_face(0), _face(1, age=None, gender="", track_key=7)]
    b = build_face_batch(faces)
    assert b["crop"].shape == (2, 16, 16, 3) and b["crop"].dtype == np.uint8
    for name, width in (("au_evidence", 23), ("fe_prior", 7), ("blendshapes", 52), ("pose", 3)):
        assert b[name].shape == (2, width) and b[name].dtype == np.float32
        np.testing.assert_array_equal(b[name][0], np.asarray(faces[0][name], np.float32))
    assert b["age"].dtype == np.float32 and b["age"][0] == 31.0 and np.isnan(b["age"][1])
    assert b["gender"] == ["female", None]  # an empty string is "unknown", as None
    assert b["track_key"].dtype == np.int64 and b["track_key"].tolist() == [0, 7]  # default: own segment
    assert "landmarks" not in b and "identity" not in b and "race" not in b  # no face has them
    assert batch_rows(b) == 2


def test_unmeasured_inputs_are_nan_and_missing_crops_black():
    faces = [_face(0), {"age": 40}]  # the second face: nothing measured, no crop
    b = build_face_batch(faces)
    for name in ("au_evidence", "fe_prior", "blendshapes", "pose"):
        assert np.isnan(b[name][1]).all()
    assert not b["crop"][1].any()
    # NaN reaches the face-prior encoder as "unavailable", the same as a batch without the field
    feats = prior_arrays(b, ["blendshapes", "pose"], 2)
    assert np.isnan(feats["blendshapes"][1]).all() and np.isfinite(feats["blendshapes"][0]).all()
    assert "crop" not in build_face_batch([{"age": 3.0}])  # no face with a crop: no crop field


def test_optional_fields_and_bad_widths():
    b = build_face_batch([_face(0, landmarks=np.zeros((5, 2)), race="x"), _face(1)])
    assert b["landmarks"].shape == (2, 10) and np.isnan(b["landmarks"][1]).all()
    assert b["race"] == ["x", None]
    with pytest.raises(ValueError, match="blendshapes: expected 52"):
        build_face_batch([_face(0, blendshapes=[0.5] * 51)])
    with pytest.raises(ValueError, match="crop"):
        build_face_batch([_face(0, crop=np.zeros((16, 16, 3), np.float32))])


def test_slice_keeps_every_field_aligned():
    b = build_face_batch([_face(i, track_key=10 + i) for i in range(4)])
    s = slice_batch(b, [3, 1])
    assert s["track_key"].tolist() == [13, 11] and len(s["gender"]) == 2
    np.testing.assert_array_equal(s["blendshapes"], b["blendshapes"][[3, 1]])
