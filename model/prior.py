"""The calibrated face prior: FE and AU probabilities without an LLM.

Offline, no pretrained facial MLLM exists, and the small shipped LLM does not classify
expressions (ASSETS.md). What does work is the face stage's measurements: a shipped
expression classifier (facex, 7/9 real posed faces) and AU evidence from blendshapes,
normalised per track against the person's neutral baseline. This module fuses the two:

* AU probability ``p_a = sigmoid(slope_a * (evidence_a - offset_a))``; NaN evidence stays NaN
  (the AU is unavailable, never a measured 0).
* AU-prototype score per class ``s_c`` = mean probability of the class's prototype AUs
  (FE_PROTOTYPE_AUS, EMFACS); neutral scores ``1 - mean(top-3 AU probabilities)``.
* FE logits ``log(fe_prior) / T + w * (s - mean(s))`` (+ a neutral bias), softmax. Without an
  expression-classifier row the AU scores alone decide (temperature ``T_au``); with neither,
  the row is uniform (and its low confidence filters it out of pseudo-labels).

:func:`fit_calibration` fits the temperatures, AU weight and per-AU slope/offset on labeled
data (held-out split of a labeled dataset or a trusted annotation set).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from model.config import PriorCalibration
from model.taxonomy import AU_INDEX, AU_NAMES, FE_BASIC, FE_PROTOTYPE_AUS

_EPS = 1e-4
# Prototype AU indices per FE_BASIC class (neutral: none).
_PROTO = [np.array([AU_INDEX[a] for a in FE_PROTOTYPE_AUS.get(c, ()) if a in AU_INDEX], dtype=np.int64)
          for c in FE_BASIC]
# AUs that say little about expression on their own (speech, blinks).
_NON_EXPRESSIVE = np.array([AU_INDEX[a] for a in ("AU25", "AU26", "AU43", "AU45")])


@dataclasses.dataclass
class PriorScores:
    """``fe_probs`` (B, 7) rows sum to 1 (FE_BASIC order); ``au_probs`` (B, 23) in [0, 1],
    NaN where the AU is unavailable (AU_NAMES order)."""

    fe_probs: np.ndarray
    au_probs: np.ndarray


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def _nanmean(x: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    """``np.nanmean`` that returns NaN for all-NaN slices without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis, keepdims=keepdims)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class CalibratedFacePrior:
    """Scores faces from ``fe_prior`` (B, 7) and ``au_evidence`` (B, 23); pure numpy."""

    def __init__(self, cfg: PriorCalibration | None = None):
        self.cfg = cfg or PriorCalibration()
        slope = np.full(len(AU_NAMES), self.cfg.au_slope, dtype=np.float64)
        offset = np.full(len(AU_NAMES), self.cfg.au_offset, dtype=np.float64)
        for name, (s, o) in self.cfg.per_au.items():
            slope[AU_INDEX[name]], offset[AU_INDEX[name]] = s, o
        self.slope, self.offset = slope, offset

    def au_probs(self, au_evidence: np.ndarray) -> np.ndarray:
        """(B, 23) evidence (NaN = unavailable) -> (B, 23) probabilities (NaN kept)."""
        e = np.asarray(au_evidence, dtype=np.float64)
        return _sigmoid(self.slope * (e - self.offset))

    def prototype_scores(self, au_probs: np.ndarray) -> np.ndarray:
        """(B, 23) AU probabilities -> (B, 7) AU-prototype agreement in [0, 1], NaN where a class
        has no available prototype AU (or no AU at all is available)."""
        p = np.asarray(au_probs, dtype=np.float64)
        rows = p.shape[0]
        s = np.full((rows, len(FE_BASIC)), np.nan)
        for c, idx in enumerate(_PROTO):
            if len(idx) and rows:
                s[:, c] = _nanmean(p[:, idx], axis=1)
        expressive = np.delete(p, _NON_EXPRESSIVE, axis=1)
        top = -np.sort(-np.nan_to_num(expressive, nan=-1.0), axis=1)[:, :3]
        top = np.where(top < 0, np.nan, top)
        if rows:
            s[:, FE_BASIC.index("neutral")] = 1.0 - _nanmean(top, axis=1)
        return s

    def fe_probs(self, fe_prior: np.ndarray | None, au_probs: np.ndarray) -> np.ndarray:
        """Fused (B, 7) FE probabilities (rows sum to 1)."""
        rows = au_probs.shape[0]
        cfg = self.cfg
        scores = self.prototype_scores(au_probs)
        has_au = np.isfinite(scores)
        centred = scores - _nanmean(np.where(has_au, scores, np.nan), axis=1, keepdims=True)
        centred = np.where(has_au, centred, 0.0)
        bias = np.zeros(len(FE_BASIC))
        bias[FE_BASIC.index("neutral")] = cfg.neutral_bias
        if fe_prior is None:
            fe_prior = np.full((rows, len(FE_BASIC)), np.nan)
        fp = np.asarray(fe_prior, dtype=np.float64)
        has_fe = np.isfinite(fp).all(axis=1) & (np.nan_to_num(fp).sum(axis=1) > 0)
        fp = np.where(has_fe[:, None], np.clip(np.nan_to_num(fp), 0, None), 1.0)
        fp = fp / fp.sum(axis=1, keepdims=True)
        logits = np.where(has_fe[:, None],
                          np.log(fp + _EPS) / cfg.fe_temperature + cfg.au_weight * centred,
                          centred / cfg.au_only_temperature) + bias
        probs = _softmax(logits)
        nothing = ~has_fe & ~has_au.any(axis=1)
        probs[nothing] = 1.0 / len(FE_BASIC)
        return probs.astype(np.float32)

    def __call__(self, fe_prior: np.ndarray | None, au_evidence: np.ndarray | None, rows: int) -> PriorScores:
        if au_evidence is None:
            au_evidence = np.full((rows, len(AU_NAMES)), np.nan, dtype=np.float32)
        au = self.au_probs(np.asarray(au_evidence, dtype=np.float64).reshape(rows, len(AU_NAMES)))
        fe = self.fe_probs(None if fe_prior is None else np.asarray(fe_prior).reshape(rows, len(FE_BASIC)), au)
        return PriorScores(fe_probs=fe, au_probs=au.astype(np.float32))


def fit_calibration(fe_prior: np.ndarray, au_evidence: np.ndarray, fe_labels: np.ndarray | None = None,
                    au_labels: np.ndarray | None = None, base: PriorCalibration | None = None) -> PriorCalibration:
    """Fit the prior's calibration on labeled faces.

    ``fe_labels`` (B,) int FE_BASIC indices (-1 = unlabeled); ``au_labels`` (B, 23) in {0, 1}
    (NaN = unlabeled). AU slope/offset per AU by logistic regression on the evidence; FE
    temperature, AU weight and neutral bias by a grid search on the negative log-likelihood."""
    cfg = dataclasses.replace(base or PriorCalibration())
    ev = np.asarray(au_evidence, dtype=np.float64)
    if au_labels is not None:
        per_au = dict(cfg.per_au)
        for j, name in enumerate(AU_NAMES):
            x, y = ev[:, j], np.asarray(au_labels, dtype=np.float64)[:, j]
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.sum() >= 10 and 0 < y[ok].mean() < 1:
                a, b = _logistic_1d(x[ok], y[ok])
                if a > 0:
                    per_au[name] = [float(a), float(-b / a)]
        cfg = dataclasses.replace(cfg, per_au=per_au)
    if fe_labels is not None:
        labels = np.asarray(fe_labels)
        ok = labels >= 0
        best = (np.inf, cfg)
        for t in (0.5, 0.75, 1.0, 1.5, 2.0):
            for w in (0.0, 0.5, 1.0, 2.0, 3.0):
                for nb in (-0.5, 0.0, 0.5):
                    cand = dataclasses.replace(cfg, fe_temperature=t, au_weight=w, neutral_bias=nb)
                    p = CalibratedFacePrior(cand)(fe_prior[ok], ev[ok], int(ok.sum())).fe_probs
                    nll = -np.log(p[np.arange(len(p)), labels[ok]] + 1e-9).mean()
                    if nll < best[0]:
                        best = (nll, cand)
        cfg = best[1]
    return cfg


def _logistic_1d(x: np.ndarray, y: np.ndarray, steps: int = 500, lr: float = 0.5) -> tuple[float, float]:
    """Weights (a, b) of ``sigmoid(a * x + b)`` by gradient descent on the log loss."""
    a, b = 1.0, 0.0
    for _ in range(steps):
        p = _sigmoid(a * x + b)
        ga, gb = ((p - y) * x).mean(), (p - y).mean()
        a, b = a - lr * 10 * ga, b - lr * gb
    return a, b
