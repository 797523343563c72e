"""Facial-expression prior from ``facex`` 1.1.0's classifier (MIT, 2.6 MB tflite, LiteRT).

Input: 200x200x3 float32 in [0, 1], a grey face repeated over three channels. The model was
trained on Haar-cascade-style crops, so the crop is rebuilt that way: a square 1.3x the width
of the MediaPipe landmark box, centred 0.1 landmark-box heights above that box's centre (a
tight landmark box turns neutral faces into "sadness"). Without landmarks the landmark box is
estimated from the detector box (measured here: same width, top edge 0.1 box heights lower).
Output: softmax over anger, disgust, fear, happy, neutral, sadness, surprised, remapped to
``FE_BASIC`` order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.taxonomy import FE_BASIC
from workflows.faces import align

FACEX_CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
# FE_BASIC position i takes facex output FACEX_TO_BASIC[i].
FACEX_TO_BASIC = np.array([FACEX_CLASSES.index(c) for c in FE_BASIC])
INPUT_SIZE = 200


def facex_region(bbox: np.ndarray, mesh_xy: np.ndarray | None) -> tuple[float, float, float]:
    """``(cx, cy, side)`` in source px of the square the classifier sees."""
    if mesh_xy is not None:
        x0, y0 = mesh_xy.min(0)
        x1, y1 = mesh_xy.max(0)
    else:
        x0, y0, x1, y1 = (float(v) for v in bbox)
        y0 = y0 + 0.1 * (y1 - y0)
    w, h = float(x1 - x0), float(y1 - y0)
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0 - 0.1 * h, 1.3 * w


class FacexClassifier:
    """The facex expression network on CPU (ai_edge_litert)."""

    def __init__(self, model_path: str | Path, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self._it = Interpreter(model_path=str(model_path), num_threads=num_threads)
        self._it.allocate_tensors()
        self._in = self._it.get_input_details()[0]["index"]
        self._out = self._it.get_output_details()[0]["index"]

    def predict(self, image: np.ndarray, bbox: np.ndarray, mesh_xy: np.ndarray | None) -> np.ndarray:
        """(7,) float32 FE probabilities in ``FE_BASIC`` order for one face of an RGB image."""
        import cv2

        cx, cy, side = facex_region(bbox, mesh_xy)
        chip, _ = align.square_crop(image, cx, cy, side, INPUT_SIZE)
        grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
        x = np.repeat((grey.astype(np.float32) / 255.0)[None, :, :, None], 3, axis=3)
        self._it.set_tensor(self._in, x)
        self._it.invoke()
        p = np.asarray(self._it.get_tensor(self._out)[0], np.float32)
        p = p[FACEX_TO_BASIC]
        return p / max(float(p.sum()), 1e-12)
