"""Dense landmarks, blendshapes and head pose: MediaPipe FaceLandmarker on each detected face.

MediaPipe's own short-range detector misses small faces in group photos, so it never sees a
whole frame: every YuNet detection is cut out as a square of ``box_scale`` x its size, resized
to 256², and run in IMAGE mode. Of the (at most two) faces MediaPipe finds in that region,
the one that overlaps the detection is kept; none → no landmarks (the record gets a flag).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import math
import threading
import weakref
from pathlib import Path

import numpy as np

from workflows.faces import align

MESH_INPUT_SIZE = 256  # MediaPipe's landmark model runs at 256²; a larger crop buys nothing

# The 52 blendshape names in MediaPipe's output order (index 0 is its "_neutral" score).
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)
BLENDSHAPE_INDEX = {n: i for i, n in enumerate(BLENDSHAPE_NAMES)}


@dataclasses.dataclass(slots=True)
class MeshResult:
    """MediaPipe output for one face, mapped back to source pixels.

    ``landmarks``: (478, 2) float32 source px. ``depth``: (478,) float32 relative depth in
    source px (MediaPipe's z, same scale as x; smaller = closer to the camera).
    ``blendshapes``: (52,) float32 in ``BLENDSHAPE_NAMES`` order, each in [0, 1].
    ``pose``: (3,) float32 yaw, pitch, roll in degrees (see :func:`pose_from_matrix`).
    """

    landmarks: np.ndarray
    depth: np.ndarray
    blendshapes: np.ndarray | None
    pose: np.ndarray


def pose_from_matrix(matrix: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) in degrees from MediaPipe's 4x4 facial transformation matrix.

    Conventions (camera view): yaw > 0 when the face turns towards the image's right side
    (the subject's left), pitch > 0 when the face tilts up, roll > 0 when the face is rotated
    counter-clockwise in the image as the viewer sees it. Checked on real faces: a 39° turn
    to the image's left reads yaw -39, the mirrored image +39; an image rotated 20° CCW
    reads roll +17 to +20.
    """
    r = np.asarray(matrix, np.float64)[:3, :3]
    n = np.linalg.norm(r, axis=0)
    r = r / np.where(n > 0, n, 1.0)
    fwd = r[:, 2]  # face normal in camera coordinates (x right, y up, z towards the viewer)
    yaw = math.degrees(math.atan2(fwd[0], fwd[2]))
    pitch = math.degrees(math.atan2(fwd[1], math.hypot(fwd[0], fwd[2])))
    roll = math.degrees(math.atan2(r[1, 0], r[0, 0]))
    return np.array([yaw, pitch, roll], np.float32)


class MeshLandmarker:
    """MediaPipe FaceLandmarker (Tasks API, IMAGE mode) over detected face regions."""

    def __init__(self, model_path: str | Path, box_scale: float = 2.0, min_confidence: float = 0.3):
        import mediapipe as mp
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        self._mp = mp
        self.box_scale = box_scale
        opts = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.IMAGE, num_faces=2,
            min_face_detection_confidence=min_confidence, min_face_presence_confidence=min_confidence,
            output_face_blendshapes=True, output_facial_transformation_matrixes=True)
        self._landmarker = vision.FaceLandmarker.create_from_options(opts)
        _close_before_exit(self)

    def close(self) -> None:
        self._landmarker.close()

    def run(self, image: np.ndarray, bbox: np.ndarray) -> MeshResult | None:
        """Landmarks of the face in ``bbox`` (x0, y0, x1, y1 source px) of an RGB image, or
        None when MediaPipe finds no face overlapping it."""
        x0, y0, x1, y1 = (float(v) for v in bbox)
        side = max(x1 - x0, y1 - y0) * self.box_scale
        chip, m = align.square_crop(image, (x0 + x1) / 2, (y0 + y1) / 2, side, MESH_INPUT_SIZE)
        res = self._landmarker.detect(self._mp.Image(image_format=self._mp.ImageFormat.SRGB,
                                                     data=np.ascontiguousarray(chip)))
        if not res.face_landmarks:
            return None
        inv = align.invert(m)
        scale = 1.0 / m[0, 0]
        best, best_iou = None, 0.0
        for i, lms in enumerate(res.face_landmarks):
            pts = np.array([(p.x, p.y, p.z) for p in lms], np.float64) * MESH_INPUT_SIZE
            xy = align.apply(inv, pts[:, :2])
            box = np.array([*xy.min(0), *xy.max(0)])
            iou = _iou(box, np.array(bbox, np.float64))
            if iou > best_iou:
                best, best_iou = (i, xy, pts[:, 2] * scale), iou
        if best is None or best_iou < 0.25:
            return None
        i, xy, depth = best
        blend = None
        if res.face_blendshapes and i < len(res.face_blendshapes):
            cats = res.face_blendshapes[i]
            blend = np.zeros(len(BLENDSHAPE_NAMES), np.float32)
            for c in cats:
                j = BLENDSHAPE_INDEX.get(c.category_name)
                if j is not None:
                    blend[j] = c.score
        pose = np.full(3, np.nan, np.float32)
        if res.facial_transformation_matrixes and i < len(res.facial_transformation_matrixes):
            pose = pose_from_matrix(np.asarray(res.facial_transformation_matrixes[i]))
        return MeshResult(landmarks=xy.astype(np.float32), depth=depth.astype(np.float32),
                          blendshapes=blend, pose=pose)


def _close_before_exit(mesh: MeshLandmarker) -> None:
    """Close ``mesh`` when the process exits, if nothing closed it before.

    MediaPipe's finaliser otherwise first runs during interpreter teardown (every Ray actor
    exit) and prints a traceback; an ``atexit`` hook is too late as well, because MediaPipe
    closes through a ``concurrent.futures`` executor that has shut down by then. The hook runs
    where that executor's own shutdown does (threading's exit hooks, newest first) and holds
    only a weak reference, so it never keeps a graph alive.
    """
    ref = weakref.ref(mesh)

    def close() -> None:
        obj = ref()
        if obj is not None:
            with contextlib.suppress(Exception):
                obj.close()

    register = getattr(threading, "_register_atexit", atexit.register)
    with contextlib.suppress(RuntimeError):  # registering while the interpreter is exiting
        register(close)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
