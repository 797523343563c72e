"""The calibrated face prior: probabilities, unavailable inputs, fusion, calibration fitting."""

from __future__ import annotations

import numpy as np

from model.config import PriorCalibration
from model.prior import CalibratedFacePrior, fit_calibration
from model.taxonomy import AU_INDEX, AU_NAMES, FE_BASIC


def _smile(rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A facex-style softmax that leans happy and AU evidence with AU12 high (AU06/AU09 dead)."""
    fe = np.tile(np.array([0.25, 0.45, 0.1, 0.05, 0.05, 0.05, 0.05], np.float32), (rows, 1))
    au = np.full((rows, len(AU_NAMES)), 0.05, np.float32)
    au[:, AU_INDEX["AU12"]] = 0.85
    au[:, AU_INDEX["AU25"]] = 0.9
    au[:, [AU_INDEX["AU06"], AU_INDEX["AU09"]]] = np.nan
    return fe, au


def test_probabilities_are_valid_and_nan_stays_unavailable():
    rng = np.random.default_rng(0)
    fe = rng.dirichlet(np.ones(7), 50).astype(np.float32)
    au = rng.random((50, 23)).astype(np.float32)
    au[:, 5] = np.nan
    fe[3] = np.nan  # the expression classifier failed on one face
    out = CalibratedFacePrior()(fe, au, 50)
    np.testing.assert_allclose(out.fe_probs.sum(1), 1.0, atol=1e-5)
    assert np.isnan(out.au_probs[:, 5]).all()
    finite = np.delete(out.au_probs, 5, axis=1)
    assert ((finite >= 0) & (finite <= 1)).all()


def test_no_measurement_at_all_gives_a_uniform_row():
    out = CalibratedFacePrior()(None, np.full((2, 23), np.nan), 2)
    np.testing.assert_allclose(out.fe_probs, 1 / 7, atol=1e-6)
    assert np.isnan(out.au_probs).all()


def test_smiling_face_ranks_happiness_first_even_when_facex_is_unsure():
    fe, au = _smile()
    out = CalibratedFacePrior()(fe, au, 1)
    assert FE_BASIC[int(out.fe_probs[0].argmax())] == "happiness"
    assert out.fe_probs[0, FE_BASIC.index("happiness")] > fe[0, FE_BASIC.index("happiness")]
    assert out.au_probs[0, AU_INDEX["AU12"]] > 0.95


def test_au_evidence_alone_still_decides():
    _, au = _smile()
    out = CalibratedFacePrior()(np.full((1, 7), np.nan), au, 1)
    assert FE_BASIC[int(out.fe_probs[0].argmax())] == "happiness"


def test_fit_calibration_learns_slopes_and_temperature():
    rng = np.random.default_rng(1)
    n = 400
    labels = rng.integers(0, 7, n)
    fe = np.full((n, 7), 0.02)
    noisy = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 7, n))
    fe[np.arange(n), noisy] = 0.88
    ev = rng.random((n, 23)) * 0.2
    au_labels = (rng.random((n, 23)) < 0.3).astype(float)
    ev += au_labels * 0.5
    cfg = fit_calibration(fe.astype(np.float32), ev, labels, au_labels, PriorCalibration())
    assert set(cfg.per_au) == set(AU_NAMES)
    slope, offset = cfg.per_au["AU12"]
    assert slope > 0 and 0.1 < offset < 0.6
    base_nll = _nll(PriorCalibration(), fe, ev, labels)
    assert _nll(cfg, fe, ev, labels) <= base_nll


def _nll(cfg: PriorCalibration, fe: np.ndarray, ev: np.ndarray, labels: np.ndarray) -> float:
    p = CalibratedFacePrior(cfg)(fe, ev, len(labels)).fe_probs
    return float(-np.log(p[np.arange(len(labels)), labels] + 1e-9).mean())
