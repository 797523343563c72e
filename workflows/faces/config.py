"""Configuration of the face-extraction stage (``faces.*`` keys of the annotate config).

All thresholds are in source-image pixels, seconds or unit-free scores as named. Defaults run
the ``offline`` backend on CPU with no downloads beyond the pinned assets.
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass
class TrackConfig:
    """How detections of one video are linked into tracks and tracks cut into segments.

    Two detections in successive *sampled* frames are matched when their boxes overlap
    (IoU ≥ ``iou_threshold``) or, for faces that moved between sparse samples, when the
    5-point landmarks moved by at most ``max_landmark_shift`` face sizes; where both faces
    carry an identity embedding, cosine similarity below ``embedding_threshold`` vetoes the
    match and similarity above ``reid_threshold`` re-links a face after a gap.
    """

    iou_threshold: float = 0.3
    max_landmark_shift: float = 0.6  # mean 5-point displacement / face size
    max_size_ratio: float = 1.8  # larger/smaller face size between matched detections
    embedding_threshold: float = 0.3  # cosine; below: never the same person
    reid_threshold: float = 0.55  # cosine; above: same person even without overlap
    max_gap_frames: int = 3  # sampled frames a track may miss before it ends
    max_gap_s: float = 3.0  # ... and seconds; a longer gap always starts a new track
    segment_max_frames: int = 16  # frames per segment (clip for dynamic FER)

    def validate(self) -> list[str]:
        problems = []
        for name in ("iou_threshold", "embedding_threshold", "reid_threshold"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                problems.append(f"{name}: must be in [0, 1], got {v}")
        if self.max_landmark_shift <= 0:
            problems.append(f"max_landmark_shift: must be > 0, got {self.max_landmark_shift}")
        if self.max_size_ratio < 1:
            problems.append(f"max_size_ratio: must be >= 1, got {self.max_size_ratio}")
        if self.max_gap_s <= 0:
            problems.append(f"max_gap_s: must be > 0, got {self.max_gap_s}")
        if self.segment_max_frames < 1:
            problems.append(f"segment_max_frames: must be >= 1, got {self.segment_max_frames}")
        return problems


@dataclasses.dataclass
class AUConfig:
    """Per-track neutral-baseline normalisation of AU evidence (see ``workflows.faces.au``).

    A track's baseline for each AU is the ``baseline_percentile`` of its raw evidence, shrunk
    towards the population neutral prior with the weight of ``prior_frames`` pseudo-frames
    (a one-frame still is judged almost entirely against the prior) and capped at
    ``baseline_cap`` (a face that smiles through the whole clip keeps most of its smile).
    """

    normalise: bool = True
    baseline_percentile: float = 10.0
    prior_frames: float = 8.0
    baseline_cap: float = 0.5
    geometry_aus: list[str] = dataclasses.field(default_factory=lambda: ["AU06"])

    def validate(self) -> list[str]:
        problems = []
        if not 0.0 <= self.baseline_percentile <= 100.0:
            problems.append(f"baseline_percentile: must be in [0, 100], got {self.baseline_percentile}")
        if not 0.0 <= self.baseline_cap < 1.0:
            problems.append(f"baseline_cap: must be in [0, 1), got {self.baseline_cap}")
        bad = [a for a in self.geometry_aus if a not in ("AU06", "AU09")]
        if bad:
            problems.append(f"geometry_aus: only AU06 and AU09 have a geometric estimate, got {bad}")
        return problems


@dataclasses.dataclass
class InsightFaceConfig:
    """The ``insightface`` backend: a model pack in buffalo_l layout (``*.onnx`` files).

    ``pack`` is a local directory or an ``s3://`` prefix (copied once into the mien cache).
    Nothing is ever downloaded from the internet: an empty ``pack`` is a configuration error.
    ``device``: ``auto`` uses CUDA when the stage was given GPUs (``faces.num_gpus > 0``),
    ``cuda`` requires it; either raises when onnxruntime has no CUDAExecutionProvider.
    """

    pack: str = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    det_size: int = 640
    modules: list[str] = dataclasses.field(
        default_factory=lambda: ["detection", "recognition", "genderage", "landmark_3d_68"])

    def validate(self) -> list[str]:
        problems = []
        if self.det_size < 32 or self.det_size % 32:
            problems.append(f"det_size: must be a positive multiple of 32, got {self.det_size}")
        if "detection" not in self.modules:
            problems.append("modules: must include 'detection'")
        return problems


@dataclasses.dataclass
class FaceConfig:
    """Face extraction: detection, alignment, landmarks, attributes, expression prior, tracks.

    Age and gender are estimated when ``attributes`` is true; race is never inferred (no
    model for it is loaded, and no option turns one on).
    """

    backend: Literal["offline", "insightface"] = "offline"
    crop_size: int = 224  # side of the aligned RGB crop, pixels
    crop_padding: float = 0.15  # context around the 5-point template, fraction of its size
    det_score_threshold: float = 0.6
    det_nms_threshold: float = 0.3
    det_max_side: int = 1280  # longer frame side fed to the detector; 0 = native size
    # Smallest face (px, sqrt of box area) detection must find: frames are downscaled for detection
    # as far as that allows (never below 640 px on the long side); 0 = only det_max_side applies.
    # 24 px finds every face that carries an expression at a third of the cost on 720p (bench_detect).
    det_min_face_px: float = 24.0
    max_faces: int = 32  # per frame, largest first
    min_face_px: float = 10.0  # shorter box side below which a detection is dropped
    tiny_face_px: float = 40.0  # ... below which it is kept but flagged "tiny"
    profile_yaw_deg: float = 50.0  # |yaw| above which a face is flagged "profile"
    dark_mean_luma: float = 40.0  # mean crop luma (0-255) below which a face is flagged "dark"
    landmarks: bool = True  # MediaPipe FaceLandmarker: 478 points, 52 blendshapes, head pose
    landmark_box_scale: float = 2.0  # detected box side x this = square region given to MediaPipe
    attributes: bool = True  # age + gender
    expression: bool = True  # facex FE prior
    expression_fp32: bool = True  # facex with its 8-bit weights expanded to float32: 2.9x faster
    num_threads: int = 1  # per model (onnxruntime / LiteRT) and OpenCV's pool; a face actor owns one CPU
    num_gpus: float = 0.0  # GPUs the stage is scheduled with (insightface uses CUDA when > 0)
    track: TrackConfig = dataclasses.field(default_factory=TrackConfig)
    au: AUConfig = dataclasses.field(default_factory=AUConfig)
    insightface: InsightFaceConfig = dataclasses.field(default_factory=InsightFaceConfig)

    def validate(self) -> list[str]:
        problems = []
        if not 32 <= self.crop_size <= 1024:
            problems.append(f"crop_size: must be in [32, 1024], got {self.crop_size}")
        if not 0.0 <= self.crop_padding <= 1.0:
            problems.append(f"crop_padding: must be in [0, 1], got {self.crop_padding}")
        for name in ("det_score_threshold", "det_nms_threshold"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                problems.append(f"{name}: must be in (0, 1), got {v}")
        if self.det_max_side and self.det_max_side < 64:
            problems.append(f"det_max_side: must be 0 (native) or >= 64, got {self.det_max_side}")
        if self.max_faces < 1:
            problems.append(f"max_faces: must be >= 1, got {self.max_faces}")
        if self.min_face_px < 1 or self.tiny_face_px < self.min_face_px:
            problems.append("min_face_px/tiny_face_px: need 1 <= min_face_px <= tiny_face_px")
        if self.landmark_box_scale < 1.2:
            problems.append(f"landmark_box_scale: must be >= 1.2, got {self.landmark_box_scale}")
        if self.num_threads < 1:
            problems.append(f"num_threads: must be >= 1, got {self.num_threads}")
        if self.backend == "insightface" and not self.insightface.pack:
            problems.append("insightface.pack: the insightface backend needs a model pack directory "
                            "(local path or s3:// prefix in buffalo_l layout); nothing is downloaded")
        if self.backend == "offline" and self.num_gpus > 0:
            problems.append("num_gpus: the offline backend runs on CPU only; set backend=insightface "
                            "to use GPUs, or num_gpus=0")
        return problems


def check_config(cfg: FaceConfig) -> None:
    """Raise one ``ConfigError`` listing every problem of ``cfg`` (keys prefixed ``faces.``)."""
    from workflows.core.config import ConfigError, validate_config

    problems = validate_config(cfg, "faces")
    if problems:
        raise ConfigError(problems)
