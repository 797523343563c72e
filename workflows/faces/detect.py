"""Face detection: YuNet (``cv2.FaceDetectorYN``), boxes + 5 keypoints, small faces included."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

# YuNet finds every face whose box is at least this many pixels at the scale it runs at
# (recall 1.00 at 12 px, 0.85-0.89 at 10 px, 0.33 at 8 px: bench/bench_detect.py).
YUNET_MIN_FACE_PX = 12.0
# Frames are never downscaled for detection below this long side: smaller frames cost little.
MIN_DETECT_SIDE = 640


@dataclasses.dataclass(slots=True)
class Detection:
    """One detected face in source pixels.

    ``bbox``: (4,) float32 x0, y0, x1, y1. ``kps``: (5, 2) float32 in the ArcFace order
    (image-left eye, image-right eye, nose tip, image-left / image-right mouth corner).
    """

    bbox: np.ndarray
    score: float
    kps: np.ndarray
    embedding: np.ndarray | None = None
    extras: dict = dataclasses.field(default_factory=dict)

    @property
    def size(self) -> float:
        """Face size in pixels: geometric mean of the box sides."""
        w = float(self.bbox[2] - self.bbox[0])
        h = float(self.bbox[3] - self.bbox[1])
        return float(np.sqrt(max(w, 0.0) * max(h, 0.0)))


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Any HxW grey, HxWx1, HxWx3 RGB or HxWx4 RGBA array → contiguous HxWx3 uint8 RGB."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating) and img.size and float(np.nanmax(img)) <= 1.0:
            img = img * 255.0
        img = np.clip(np.nan_to_num(img), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxW or HxWx{{1,3,4}} image, got shape {img.shape}")
    return np.ascontiguousarray(img)


def detect_scale(h: int, w: int, max_side: int = 0, min_face_px: float = 0.0) -> float:
    """Scale (<= 1) a ``h`` x ``w`` frame is resized by for detection: the smallest that still
    finds every face of ``min_face_px`` (0: no such limit), never below a long side of
    ``MIN_DETECT_SIDE``, and never above a long side of ``max_side`` (0: no cap)."""
    long = max(h, w)
    scale = 1.0
    if max_side and long > max_side:
        scale = max_side / long
    if min_face_px > 0:
        scale = min(scale, max(YUNET_MIN_FACE_PX / min_face_px, MIN_DETECT_SIDE / long))
    return scale


class YuNetDetector:
    """YuNet face detector (OpenCV DNN). Frames are downscaled for detection only (see
    :func:`detect_scale`); results are in source pixels."""

    def __init__(self, model_path: str | Path, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 max_side: int = 1280, min_face_px: float = 0.0, top_k: int = 5000):
        import cv2

        self._cv2 = cv2
        self.max_side = max_side
        self.min_face_px = min_face_px
        self._det = cv2.FaceDetectorYN.create(str(model_path), "", (320, 320), score_threshold,
                                              nms_threshold, top_k)
        self._size: tuple[int, int] | None = None

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in an HxWx3 uint8 RGB image, highest score first."""
        h, w = image.shape[:2]
        if h < 8 or w < 8:
            return []
        scale = detect_scale(h, w, self.max_side, self.min_face_px)
        small = image
        if scale != 1.0:  # resizing works per channel: first, on the RGB frame, so no full-size copy is made
            small = self._cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                                     interpolation=self._cv2.INTER_AREA)
        # YuNet reads BGR. cvtColor writes the same bytes as copying numpy's reversed view, ~15x
        # faster (0.05 vs 0.8 ms a 640x360 frame; with a 720p frame's resize, 0.3 vs 3.4 ms).
        bgr = self._cv2.cvtColor(small, self._cv2.COLOR_RGB2BGR)
        size = (bgr.shape[1], bgr.shape[0])
        if size != self._size:
            self._det.setInputSize(size)
            self._size = size
        _, faces = self._det.detect(bgr)
        if faces is None:
            return []
        out = []
        for row in faces:
            x, y, bw, bh = (float(v) / scale for v in row[:4])
            kps = (row[4:14].reshape(5, 2) / scale).astype(np.float32)
            out.append(Detection(bbox=np.array([x, y, x + bw, y + bh], np.float32), score=float(row[14]), kps=kps))
        out.sort(key=lambda d: -d.score)
        return out
