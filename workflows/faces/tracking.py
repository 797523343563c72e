"""Linking detections across the sampled frames of one video into tracks, and tracks into segments.

Frames are sparse samples (often 1-5 fps), so motion models buy little; a detection joins the
track it matches best (Hungarian assignment) by box overlap, by 5-point landmark displacement
relative to face size, and, where the backend gives identity embeddings, by cosine similarity
(which can also veto a match, or re-link a face after a gap). Segments cut each track into
clips of at most ``segment_max_frames`` frames for clip-level (dynamic) expression recognition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from workflows.faces.config import TrackConfig

_INVALID = 1e6


@dataclasses.dataclass
class _Track:
    track_id: int
    last_step: int
    last_t: float
    bbox: np.ndarray
    kps: np.ndarray
    embedding: np.ndarray | None
    n: int = 1


def _assign(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The minimum-cost matching of ``cost``'s rows (tracks) to its columns (detections), as scipy's
    ``linear_sum_assignment`` gives it. With one track or one detection (every frame of a one-face
    clip) that is the cheapest entry, the first of equal ones as scipy picks it: solved here, the
    worker process is spared importing ``scipy.optimize`` (0.35 s of CPU)."""
    if cost.shape[0] == 1:
        return np.zeros(1, np.intp), np.array([np.argmin(cost[0])])
    if cost.shape[1] == 1:
        return np.array([np.argmin(cost[:, 0])]), np.zeros(1, np.intp)
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(cost)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (4,) x0, y0, x1, y1 boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = max(0.0, (a[2] - a[0]) * (a[3] - a[1])) + max(0.0, (b[2] - b[0]) * (b[3] - b[1])) - inter
    return float(inter / union) if union > 0 else 0.0


def _size(box: np.ndarray) -> float:
    return float(np.sqrt(max(box[2] - box[0], 1e-6) * max(box[3] - box[1], 1e-6)))


class FaceTracker:
    """Online tracker over the sampled frames of one video; call :meth:`update` once per frame
    in presentation order (frames without faces too, so gaps are counted)."""

    def __init__(self, cfg: TrackConfig | None = None):
        self.cfg = cfg or TrackConfig()
        self._active: list[_Track] = []
        self._next_id = 0
        self._step = -1

    def update(self, timestamp_s: float, bboxes: Sequence[np.ndarray], kps: Sequence[np.ndarray],
               embeddings: Sequence[np.ndarray | None] | None = None) -> list[int]:
        """Track ids for this frame's detections (``bboxes``: (4,) source px each, ``kps``:
        (5, 2), ``embeddings``: L2-normalised vectors or None)."""
        self._step += 1
        step, cfg = self._step, self.cfg
        self._active = [t for t in self._active
                        if step - t.last_step - 1 <= cfg.max_gap_frames and timestamp_s - t.last_t <= cfg.max_gap_s]
        n = len(bboxes)
        embs = list(embeddings) if embeddings is not None else [None] * n
        ids = [-1] * n
        if n and self._active:
            cost = np.full((len(self._active), n), _INVALID)
            for i, t in enumerate(self._active):
                for j in range(n):
                    cost[i, j] = self._cost(t, np.asarray(bboxes[j]), np.asarray(kps[j]), embs[j])
            rows, cols = _assign(cost)
            for i, j in zip(rows, cols, strict=True):
                if cost[i, j] < _INVALID:
                    ids[j] = self._active[i].track_id
                    self._refresh(self._active[i], step, timestamp_s, bboxes[j], kps[j], embs[j])
        for j in range(n):
            if ids[j] < 0:
                t = _Track(self._next_id, step, timestamp_s, np.asarray(bboxes[j], np.float32),
                           np.asarray(kps[j], np.float32), _unit(embs[j]))
                self._next_id += 1
                self._active.append(t)
                ids[j] = t.track_id
        return ids

    def _cost(self, t: _Track, box: np.ndarray, kps: np.ndarray, emb: np.ndarray | None) -> float:
        cfg = self.cfg
        s_t, s_d = _size(t.bbox), _size(box)
        if max(s_t, s_d) / max(min(s_t, s_d), 1e-6) > cfg.max_size_ratio:
            return _INVALID
        cos = None
        if emb is not None and t.embedding is not None:
            cos = float(np.dot(_unit(emb), t.embedding))
            if cos < cfg.embedding_threshold:
                return _INVALID
        iou = box_iou(t.bbox, box)
        shift = float(np.linalg.norm(kps - t.kps, axis=1).mean()) / ((s_t + s_d) / 2)
        ok = iou >= cfg.iou_threshold or shift <= cfg.max_landmark_shift or (cos is not None and cos >= cfg.reid_threshold)
        if not ok:
            return _INVALID
        score = iou + max(0.0, 1.0 - shift / cfg.max_landmark_shift) + (cos if cos is not None else 0.0)
        return -score

    @staticmethod
    def _refresh(t: _Track, step: int, ts: float, box: np.ndarray, kps: np.ndarray, emb: np.ndarray | None) -> None:
        t.last_step, t.last_t = step, ts
        t.bbox, t.kps = np.asarray(box, np.float32), np.asarray(kps, np.float32)
        if emb is not None:
            # running mean of unit embeddings: one blurry frame cannot swap the identity
            e = _unit(emb)
            t.embedding = e if t.embedding is None else _unit(t.embedding * t.n + e)
        t.n += 1


def _unit(v: np.ndarray | None) -> np.ndarray | None:
    if v is None:
        return None
    v = np.asarray(v, np.float32).ravel()
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def assign_segments(track_ids: Sequence[int], frame_order: Sequence[int], segment_max_frames: int) -> list[int]:
    """Segment id per detection: each track's detections, in frame order, cut every
    ``segment_max_frames`` frames. Ids are unique within the video, numbered by segment start
    (ties by track id), so ``segment_id`` alone identifies a clip and ``(track_id,
    segment_id)`` reads naturally."""
    n = len(track_ids)
    per_track: dict[int, list[int]] = {}
    for k in sorted(range(n), key=lambda k: (frame_order[k], track_ids[k])):
        per_track.setdefault(track_ids[k], []).append(k)
    local = [0] * n
    starts: dict[tuple[int, int], int] = {}
    for tid, ks in per_track.items():
        for pos, k in enumerate(ks):
            local[k] = pos // segment_max_frames
            starts.setdefault((tid, local[k]), frame_order[k])
    order = sorted(starts, key=lambda key: (starts[key], key[0], key[1]))
    gid = {key: i for i, key in enumerate(order)}
    return [gid[(track_ids[k], local[k])] for k in range(n)]
