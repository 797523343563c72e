"""Tracks and segments on synthetic detections (boxes, keypoints, embeddings)."""

from __future__ import annotations

import numpy as np

from workflows.faces.config import TrackConfig
from workflows.faces.tracking import FaceTracker, assign_segments


def _face(x: float, y: float, s: float = 100.0):
    box = np.array([x, y, x + s, y + s], np.float32)
    kps = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], np.float32) * s + [x, y]
    return box, kps


def _update(tr, t, faces, embs=None):
    return tr.update(t, [f[0] for f in faces], [f[1] for f in faces], embs)


def test_two_people_keep_their_ids_while_moving():
    tr = FaceTracker()
    ids = [_update(tr, i * 0.5, [_face(100 + 10 * i, 100), _face(500 - 10 * i, 120)]) for i in range(10)]
    assert all(f == [0, 1] for f in ids)


def test_detection_order_does_not_matter():
    tr = FaceTracker()
    _update(tr, 0.0, [_face(100, 100), _face(500, 100)])
    assert _update(tr, 0.5, [_face(505, 100), _face(95, 100)]) == [1, 0]


def test_fast_motion_between_sparse_samples_links_by_landmarks():
    tr = FaceTracker()
    _update(tr, 0.0, [_face(100, 100)])
    assert _update(tr, 1.0, [_face(150, 100)]) == [0]  # IoU 0.33 / shift 0.5 face sizes
    assert _update(tr, 2.0, [_face(400, 100)]) == [1]  # jumped 2.5 face sizes: someone else


def test_gap_limits():
    cfg = TrackConfig(max_gap_frames=2, max_gap_s=10.0)
    tr = FaceTracker(cfg)
    _update(tr, 0.0, [_face(100, 100)])
    _update(tr, 0.5, [])
    _update(tr, 1.0, [])
    assert _update(tr, 1.5, [_face(100, 100)]) == [0]  # missed 2 frames: still the same track
    for t in (2.0, 2.5, 3.0):
        _update(tr, t, [])
    assert _update(tr, 3.5, [_face(100, 100)]) == [1]  # missed 3: a new track
    tr = FaceTracker(TrackConfig(max_gap_s=1.0))
    _update(tr, 0.0, [_face(100, 100)])
    assert _update(tr, 5.0, [_face(100, 100)]) == [1]  # sparse samples 5 s apart: no continuity


def test_embeddings_veto_and_reidentify():
    a, b = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    tr = FaceTracker()
    _update(tr, 0.0, [_face(100, 100)], [a])
    assert _update(tr, 0.5, [_face(102, 100)], [b]) == [1]  # same place, different person
    assert _update(tr, 1.0, [_face(600, 300)], [a * 0.9 + b * 0.1]) == [0]  # far away, same person


def test_segments_are_unique_per_video_and_bounded():
    track_ids = [0, 1, 0, 1, 0, 1, 0, 0]
    frames = [0, 0, 1, 1, 2, 2, 3, 4]
    segs = assign_segments(track_ids, frames, segment_max_frames=2)
    by_key = {}
    for t, s in zip(track_ids, segs, strict=True):
        by_key.setdefault(s, set()).add(t)
    assert all(len(v) == 1 for v in by_key.values())  # a segment belongs to one track
    assert segs == [0, 1, 0, 1, 2, 3, 2, 4]


def test_a_one_face_video_is_linked_without_importing_scipy(asset):
    """Every worker process links its videos' faces; importing scipy's assignment solver for the
    one-track-one-face frames of a one-face clip cost each worker 0.35 s of CPU."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from workflows.annotate.decode import SamplingPolicy, VideoReader\n"
            "from workflows.faces import FaceConfig, FaceExtractor\n"
            f"with VideoReader({str(asset('sample_single_face_video'))!r}, SamplingPolicy.parse('fps:2')) as r:\n"
            "    recs = FaceExtractor(FaceConfig()).process_video(r.frames())\n"
            "print(len(recs), sorted({x.track_id for x in recs}), 'scipy.optimize' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[-2] == "5 [0] False"


def test_one_track_or_one_face_is_matched_as_scipy_matches_it():
    """The solver is skipped only where its answer is the cheapest entry; ties go where scipy puts them."""
    from scipy.optimize import linear_sum_assignment

    from workflows.faces.tracking import _INVALID, _assign

    rng = np.random.default_rng(0)
    for k in range(400):
        n = int(rng.integers(1, 6))
        cost = rng.integers(0, 3, (1, n) if k % 2 else (n, 1)).astype(np.float64)  # small integers: many ties
        cost[cost == 2] = _INVALID if k % 4 < 2 else 2.0
        got, want = _assign(cost), linear_sum_assignment(cost)
        assert [a.tolist() for a in got] == [a.tolist() for a in want], cost
