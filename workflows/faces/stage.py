"""The face-extraction stage: sampled frames of one video in, per-face records out.

Per frame: detect (YuNet, or insightface) → per face: MediaPipe mesh on the face region
(478 landmarks, 52 blendshapes, head pose) → aligned crop (5-point similarity onto the ArcFace
template) → age/gender → facex FE prior → raw AU evidence. Per video: tracks, segments, and
AU evidence normalised against each track's neutral baseline. Frames never leave the stage:
a record holds the crop and small arrays only (~151 KB at 224², nearly all of it the crop).

A frame without faces yields nothing; a failing model on one face adds a flag
(``landmarks_error``, ``attributes_error``, ``expression_error``) instead of raising.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from workflows.faces import align
from workflows.faces.config import FaceConfig, check_config

log = logging.getLogger(__name__)

# Flags a record can carry.
FLAG_TINY = "tiny"  # shorter box side < tiny_face_px
FLAG_BORDER = "border"  # box touches or crosses the frame edge: the face is cut
FLAG_PROFILE = "profile"  # |yaw| > profile_yaw_deg (or keypoints say so when there is no pose)
FLAG_DARK = "dark"  # mean luma of the face box < dark_mean_luma
FLAG_NO_LANDMARKS = "no_landmarks"  # the mesh model found no face there: no blendshapes/AUs/pose
FLAG_NO_BASELINE = "no_baseline"  # track too short for its own baseline: AUs judged against the prior


@dataclasses.dataclass
class FaceRecord:
    """One face in one sampled frame. Arrays are numpy; coordinates are source-frame pixels.

    ``bbox`` (4,) float32 x0, y0, x1, y1 (detector); ``kps`` (5, 2) float32 image-left eye,
    image-right eye, nose tip, image-left / image-right mouth corner (from the mesh when there
    is one, else the detector's; the crop is aligned on these); ``landmarks`` (N, 2) float32 (478
    MediaPipe points, or 106 insightface points) or None; ``crop`` (S, S, 3) uint8 RGB aligned;
    ``pose`` (3,) float32 yaw, pitch, roll degrees or NaN; ``blendshapes`` (52,) float32 in
    ``BLENDSHAPE_NAMES`` order or None; ``au_evidence`` / ``au_evidence_raw`` (23,) float32 in
    ``AU_NAMES`` order in [0, 1], NaN = not measured; ``fe_prior`` (7,) float32 in ``FE_BASIC``
    order or None; ``embedding`` unit-norm float32 vector or None.
    """

    frame_index: int
    timestamp_s: float
    bbox: np.ndarray
    det_score: float
    kps: np.ndarray
    landmarks: np.ndarray | None
    crop: np.ndarray
    pose: np.ndarray
    age: float | None
    gender: str | None
    gender_score: float | None
    blendshapes: np.ndarray | None
    au_evidence: np.ndarray
    au_evidence_raw: np.ndarray
    fe_prior: np.ndarray | None
    embedding: np.ndarray | None
    track_id: int = -1
    segment_id: int = -1
    flags: list[str] = dataclasses.field(default_factory=list)

    def nbytes(self) -> int:
        """Bytes of array payload this record carries (what crosses the object store)."""
        total = 0
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                total += v.nbytes
        return total


class FaceExtractor:
    """Face-extraction stage for one video at a time; all models are loaded once here.

    ``assets_dir``: optional pre-staged asset root (``assets.dir``), see ``workflows.core.assets``.
    """

    def __init__(self, cfg: FaceConfig | None = None, assets_dir: str | None = None):
        from workflows.core.assets import resolve

        self.cfg = cfg = cfg or FaceConfig()
        check_config(cfg)
        # counts over the extractor's life / the last process_video: frames, faces, flags,
        # frames_detector_error, frames_unreadable
        self.stats: Counter[str] = Counter()
        self.video_stats: Counter[str] = Counter()
        self._mesh = self._attrs = self._fer = None
        t0 = time.perf_counter()
        # OpenCV's own pool (YuNet, resize, warpAffine) defaults to every core of the node; a
        # face actor owns one CPU, and N actors each spinning N threads thrash one another.
        import cv2

        cv2.setNumThreads(cfg.num_threads)
        if cfg.backend == "insightface":
            from workflows.faces.insightface_backend import InsightFaceDetector

            self._detector: Any = InsightFaceDetector(cfg.insightface, num_gpus=cfg.num_gpus,
                                                      det_threshold=cfg.det_score_threshold,
                                                      nms_threshold=cfg.det_nms_threshold)
            has_genderage = "genderage" in self._detector.tasks
        else:
            from workflows.faces.detect import YuNetDetector

            self._detector = YuNetDetector(resolve("yunet", assets_dir), cfg.det_score_threshold,
                                           cfg.det_nms_threshold, cfg.det_max_side, cfg.det_min_face_px)
            has_genderage = False
        if cfg.landmarks:
            from workflows.faces.landmarks import MeshLandmarker

            self._mesh = MeshLandmarker(resolve("face_landmarker", assets_dir), cfg.landmark_box_scale)
        if cfg.attributes and not has_genderage:
            from workflows.faces.attributes import AgeGenderEstimator

            self._attrs = AgeGenderEstimator(resolve("age_onnx", assets_dir), resolve("gender_onnx", assets_dir),
                                             cfg.num_threads)
        if cfg.expression:
            from workflows.faces.expression import FacexClassifier

            self._fer = FacexClassifier(resolve("facex_tflite", assets_dir), cfg.num_threads, cfg.expression_fp32)
        log.info("face extractor (%s) ready in %.1fs", cfg.backend, time.perf_counter() - t0)

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Release the models (MediaPipe holds a native graph)."""
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def __del__(self) -> None:
        # MediaPipe's own finaliser fails noisily at interpreter exit; close while we still can.
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> FaceExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- per video -------------------------------------------------------------------------
    def process_video(self, frames: Iterable[Any]) -> list[FaceRecord]:
        """All faces of one video's sampled frames (``Frame``-like: ``index``, ``timestamp_s``,
        ``image`` HxWx3 uint8 RGB), with ``track_id``/``segment_id`` assigned and AU evidence
        normalised per track. Frames are consumed one at a time and not kept."""
        records, step_times, face_steps = self.extract(frames)
        link_records(records, step_times, face_steps, self.cfg)
        return records

    def extract(self, frames: Iterable[Any]) -> tuple[list[FaceRecord], list[float], list[int]]:
        """The faces of some sampled frames (a video, or a time window of one), not yet linked:
        the records, the timestamp of every sampled frame (frames without faces too: the tracker
        counts gaps in frames) and each record's position in that list. :func:`link_records`
        (or :func:`link_faces` on arrays, for the windows of a video) finishes them."""
        self.video_stats = Counter()
        records: list[FaceRecord] = []
        step_times: list[float] = []
        face_steps: list[int] = []
        for frame in frames:
            recs = self.process_frame(frame)
            face_steps.extend([len(step_times)] * len(recs))
            step_times.append(float(frame.timestamp_s))
            records.extend(recs)
        return records, step_times, face_steps

    # -- per frame -------------------------------------------------------------------------
    def process_frame(self, frame: Any) -> list[FaceRecord]:
        """Faces of one frame, without tracks (``track_id = -1``) and with AU evidence not yet
        normalised (``au_evidence`` = ``au_evidence_raw``). Never raises for image content."""
        from workflows.faces.detect import as_rgb

        self._count("frames")
        try:
            image = as_rgb(frame.image)
        except ValueError as e:
            log.warning("frame %s skipped: %s", getattr(frame, "index", "?"), e)
            self._count("frames_unreadable")
            return []
        h, w = image.shape[:2]
        if h < 16 or w < 16:
            return []
        try:
            dets = self._detector.detect(image)
        except Exception:  # noqa: BLE001 - one undetectable frame must not end the video
            log.exception("face detection failed on frame %s", getattr(frame, "index", "?"))
            self._count("frames_detector_error")
            return []
        cfg = self.cfg
        dets = [d for d in dets if min(d.bbox[2] - d.bbox[0], d.bbox[3] - d.bbox[1]) >= cfg.min_face_px]
        dets = sorted(dets, key=lambda d: -d.size)[:cfg.max_faces]
        out = [self._face(image, frame, d) for d in dets]
        self._count("faces", len(out))
        for r in out:
            for flag in r.flags:
                self._count(flag)
        return out

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] += n
        self.video_stats[key] += n

    def _face(self, image: np.ndarray, frame: Any, det: Any) -> FaceRecord:
        from workflows.faces.au import raw_au_evidence

        cfg = self.cfg
        h, w = image.shape[:2]
        flags: list[str] = []
        bbox = np.asarray(det.bbox, np.float32)
        if min(bbox[2] - bbox[0], bbox[3] - bbox[1]) < cfg.tiny_face_px:
            flags.append(FLAG_TINY)
        if bbox[0] < 1 or bbox[1] < 1 or bbox[2] > w - 1 or bbox[3] > h - 1:
            flags.append(FLAG_BORDER)
        x0, y0 = max(0, int(bbox[0])), max(0, int(bbox[1]))
        x1, y1 = min(w, int(math.ceil(bbox[2]))), min(h, int(math.ceil(bbox[3])))
        if x1 > x0 and y1 > y0 and float(image[y0:y1, x0:x1].mean()) < cfg.dark_mean_luma:
            flags.append(FLAG_DARK)

        mesh = None
        if self._mesh is not None:
            try:
                mesh = self._mesh.run(image, bbox)
            except Exception:  # noqa: BLE001 - per-face failure is a flag
                log.warning("landmarks failed on frame %s", frame.index, exc_info=True)
                flags.append("landmarks_error")
            if mesh is None and "landmarks_error" not in flags:
                flags.append(FLAG_NO_LANDMARKS)
        extras = det.extras or {}
        mesh_xy = mesh.landmarks if mesh is not None else None
        landmarks = mesh_xy if mesh_xy is not None else extras.get("landmarks")
        pose = mesh.pose if mesh is not None else extras.get("pose", np.full(3, np.nan, np.float32))
        if _is_profile(pose, np.asarray(det.kps), cfg.profile_yaw_deg):
            flags.append(FLAG_PROFILE)

        kps = align.kps_from_mesh(mesh_xy) if mesh_xy is not None else np.asarray(det.kps, np.float32)
        crop, _ = align.align_crop(image, kps, align.ARCFACE_TEMPLATE, cfg.crop_size, cfg.crop_padding)

        age = gender = gender_score = None
        if cfg.attributes:
            if "age" in extras:
                age, gender = extras["age"], extras["gender"]
            elif self._attrs is not None:
                try:
                    ag = self._attrs.estimate(image, mesh_xy, det.kps)
                    age, gender, gender_score = ag.age, ag.gender, ag.gender_score
                except Exception:  # noqa: BLE001
                    log.warning("age/gender failed on frame %s", frame.index, exc_info=True)
                    flags.append("attributes_error")
        fe_prior = None
        if self._fer is not None:
            try:
                fe_prior = self._fer.predict(image, bbox, mesh_xy)
            except Exception:  # noqa: BLE001
                log.warning("expression prior failed on frame %s", frame.index, exc_info=True)
                flags.append("expression_error")
        raw = raw_au_evidence(mesh.blendshapes if mesh is not None else None, mesh_xy,
                              mesh.depth if mesh is not None else None, cfg.au.geometry_aus)
        return FaceRecord(
            frame_index=int(frame.index), timestamp_s=float(frame.timestamp_s), bbox=bbox,
            det_score=float(det.score), kps=kps,
            landmarks=None if landmarks is None else np.asarray(landmarks, np.float32), crop=crop,
            pose=np.asarray(pose, np.float32), age=age, gender=gender, gender_score=gender_score,
            blendshapes=mesh.blendshapes if mesh is not None else None, au_evidence=raw.copy(),
            au_evidence_raw=raw, fe_prior=fe_prior, embedding=det.embedding, flags=flags)


def _is_profile(pose: np.ndarray, kps: np.ndarray, max_yaw: float) -> bool:
    yaw = float(pose[0]) if pose is not None and len(pose) else float("nan")
    if math.isfinite(yaw):
        return abs(yaw) > max_yaw
    # No pose: the nose tip's offset from the eye midpoint, in eye distances, grows with yaw
    # (about 0.5 at 50°).
    eye_mid = (kps[0] + kps[1]) / 2
    eye_dist = float(np.linalg.norm(kps[1] - kps[0]))
    if eye_dist <= 0:
        return True
    return abs(float(kps[2, 0] - eye_mid[0])) / eye_dist > 0.5


@dataclasses.dataclass
class Linked:
    """What linking adds to a video's faces: ``track_id`` and ``segment_id`` (int32), AU evidence
    normalised against each track's baseline (float32, faces x AUs) and which faces lack a
    baseline of their own (:data:`FLAG_NO_BASELINE`)."""

    track_id: np.ndarray
    segment_id: np.ndarray
    au_evidence: np.ndarray
    no_baseline: np.ndarray


def link_faces(cfg: FaceConfig, step_times: Sequence[float], face_steps: Sequence[int], frame_index: Sequence[int],
               bbox: Sequence[np.ndarray], kps: Sequence[np.ndarray], embeddings: Sequence[np.ndarray | None] | None,
               au_raw: np.ndarray) -> Linked:
    """Tracks, segments and per-track AU normalisation of one video's faces, given in frame order
    (``face_steps[i]``: the index in ``step_times`` of face i's sampled frame). One function for a
    video read whole and for the concatenated windows of one, so both link identically."""
    from workflows.faces.au import normalise_track
    from workflows.faces.tracking import FaceTracker, assign_segments

    n = len(face_steps)
    track = np.full(n, -1, np.int32)
    tracker = FaceTracker(cfg.track)
    i = 0
    for step, t in enumerate(step_times):
        j = i
        while j < n and face_steps[j] == step:
            j += 1
        embs = list(embeddings[i:j]) if embeddings is not None else []
        track[i:j] = tracker.update(float(t), list(bbox[i:j]), list(kps[i:j]),
                                    embs if any(e is not None for e in embs) else None)
        i = j
    if i != n:
        raise ValueError(f"face_steps must be sorted and within the {len(step_times)} sampled frames")
    segment = np.asarray(assign_segments(track.tolist(), [int(f) for f in frame_index],
                                         cfg.track.segment_max_frames), np.int32).reshape(n)
    au = cfg.au
    norm = np.array(au_raw, np.float32, copy=True).reshape(n, -1)
    no_baseline = np.zeros(n, bool)
    for tid in np.unique(track):
        idx = np.nonzero(track == tid)[0]
        raw = np.asarray(au_raw, np.float32)[idx]
        if au.normalise:
            norm[idx] = normalise_track(raw, au.baseline_percentile, au.prior_frames, au.baseline_cap)
            measured = int(np.isfinite(raw).any(axis=1).sum())
            no_baseline[idx] = 0 < measured < au.prior_frames
    return Linked(track, segment, norm, no_baseline)


def link_records(records: list[FaceRecord], step_times: Sequence[float], face_steps: Sequence[int],
                 cfg: FaceConfig) -> None:
    """:func:`link_faces` on records, in place (``track_id``, ``segment_id``, ``au_evidence``, flags)."""
    if not records:
        return
    linked = link_faces(cfg, step_times, face_steps, [r.frame_index for r in records], [r.bbox for r in records],
                        [r.kps for r in records], [r.embedding for r in records],
                        np.stack([r.au_evidence_raw for r in records]))
    for k, r in enumerate(records):
        r.track_id, r.segment_id = int(linked.track_id[k]), int(linked.segment_id[k])
        r.au_evidence = linked.au_evidence[k].astype(np.float32)
        if linked.no_baseline[k] and FLAG_NO_BASELINE not in r.flags:
            r.flags.append(FLAG_NO_BASELINE)
