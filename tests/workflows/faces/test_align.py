"""Similarity alignment: exact on synthetic points, templates consistent with each other."""

from __future__ import annotations

import numpy as np

from workflows.faces import align


def test_similarity_transform_recovers_rotation_scale_translation():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    a = np.deg2rad(30)
    m = np.array([[np.cos(a), -np.sin(a), 12.0], [np.sin(a), np.cos(a), -7.0]]) * [[1.7], [1.7]]
    m[:, 2] = [12.0, -7.0]
    dst = align.apply(m, src)
    assert np.allclose(align.similarity_transform(src, dst), m, atol=1e-9)
    assert np.allclose(align.apply(align.invert(m), dst), src)


def test_dlib_kps_template_matches_dlib_five_point_template():
    # eye centres of the kps template are the midpoints of dlib's eye-corner template points
    t = align.DLIB_TEMPLATE
    assert np.allclose(align.DLIB_TEMPLATE_FROM_KPS[0], (t[2] + t[3]) / 2)
    assert np.allclose(align.DLIB_TEMPLATE_FROM_KPS[1], (t[0] + t[1]) / 2)


def test_square_crop_maps_centre_to_centre():
    img = np.zeros((100, 200, 3), np.uint8)
    img[40:60, 90:110] = 255
    chip, m = align.square_crop(img, 100, 50, 40, 80)
    assert chip.shape == (80, 80, 3)
    assert np.allclose(align.apply(m, np.array([[100.0, 50.0]])), [[40, 40]])
    assert chip[30:50, 30:50].mean() > 250 and chip[:10].mean() == 0
