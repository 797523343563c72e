"""Blendshape → AU mapping and per-track neutral-baseline normalisation (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from model.taxonomy import AU_NAMES
from workflows.faces import BLENDSHAPE_NAMES
from workflows.faces.au import (
    BLENDSHAPE_AUS,
    GEOMETRY_AUS,
    NEUTRAL_PRIOR_VECTOR,
    UNAVAILABLE_AUS,
    normalise_track,
    raw_au_evidence,
    track_baseline,
)


def _bs(**values: float) -> np.ndarray:
    v = np.zeros(52, np.float32)
    for k, x in values.items():
        v[BLENDSHAPE_NAMES.index(k)] = x
    return v


def test_mapping_covers_every_au_exactly_once():
    covered = set(BLENDSHAPE_AUS) | set(GEOMETRY_AUS) | set(UNAVAILABLE_AUS) | {"AU27"}
    assert covered == set(AU_NAMES)
    for names in BLENDSHAPE_AUS.values():
        assert all(n in BLENDSHAPE_NAMES for n in names)


def test_blendshapes_map_to_aus():
    raw = raw_au_evidence(_bs(mouthSmileLeft=0.8, mouthSmileRight=0.6, jawOpen=0.9, browInnerUp=0.5), None, None)
    au = dict(zip(AU_NAMES, raw, strict=True))
    assert au["AU12"] == pytest.approx(0.7)
    assert au["AU26"] == pytest.approx(0.9) and au["AU27"] == pytest.approx(0.8)
    assert au["AU01"] == pytest.approx(0.5) and au["AU04"] == 0.0
    # no mesh → geometry AUs unmeasured; AU23 never measured
    assert np.isnan(au["AU06"]) and np.isnan(au["AU25"]) and np.isnan(au["AU23"])


def test_nothing_measured_is_all_nan():
    assert np.isnan(raw_au_evidence(None, None, None)).all()


def test_baseline_shrinks_to_prior_for_short_tracks():
    one = np.full((1, len(AU_NAMES)), 0.9, np.float32)
    base = track_baseline(one, prior_frames=8, cap=0.5)
    w = 1 / 9
    assert np.allclose(base, np.minimum(w * 0.9 + (1 - w) * NEUTRAL_PRIOR_VECTOR, 0.5))


def test_normalisation_removes_a_persons_resting_offset():
    rng = np.random.default_rng(0)
    raw = np.full((60, len(AU_NAMES)), np.nan, np.float32)
    au04 = AU_NAMES.index("AU04")
    au12 = AU_NAMES.index("AU12")
    raw[:, au04] = 0.35 + rng.uniform(0, 0.05, 60)  # brows always read as lowered on this face
    raw[:, au12] = np.r_[np.full(40, 0.02), np.full(20, 0.9)]  # smiles in the last third
    norm = normalise_track(raw, percentile=10, prior_frames=8, cap=0.5)
    assert norm[:, au04].max() < 0.15 and norm[:, au04].mean() < 0.1  # the resting offset is gone
    assert norm[-20:, au12].min() > 0.85 and norm[:40, au12].max() < 0.02  # the smile stays
    assert np.isnan(norm[:, 0]).all()  # unmeasured stays NaN


def test_cap_keeps_a_smile_that_lasts_the_whole_track():
    raw = np.full((100, len(AU_NAMES)), 0.9, np.float32)
    norm = normalise_track(raw, cap=0.5)
    assert np.allclose(norm, 0.8)  # (0.9 - 0.5) / (1 - 0.5)


def test_geometry_aus_from_a_real_mesh(extractor, astronaut):
    from workflows.annotate.decode import Frame

    (r,) = extractor.process_frame(Frame(0, 0.0, astronaut))
    mesh = extractor._mesh.run(astronaut, r.bbox)
    on = dict(zip(AU_NAMES, raw_au_evidence(mesh.blendshapes, mesh.landmarks, mesh.depth, ("AU06", "AU09")),
                  strict=True))
    assert all(0.0 <= on[a] <= 1.0 for a in ("AU06", "AU09", "AU25"))
    assert on["AU25"] > 0.5  # smiling with the teeth showing: lips apart
    off = dict(zip(AU_NAMES, raw_au_evidence(mesh.blendshapes, mesh.landmarks, mesh.depth, ()), strict=True))
    assert np.isnan(off["AU06"]) and np.isnan(off["AU09"]) and off["AU25"] == on["AU25"]
