"""A small, realistic annotate output written directly with the contract schemas.

Two runs: run 1 failed on ``interview.mp4`` (a worker crash) and on ``broken.mp4``; run 2
annotated ``interview.mp4`` (two tracks, one of which leaves half-way) and
``empty_room.mp4`` (no faces). The source videos are real H.264 files rendered with PyAV,
so ``mien render`` can decode them; the faces carry synthetic JPEG crops.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from model.taxonomy import AU_NAMES, FE_BASIC
from tests.media import render_video
from workflows.annotate.decode import SamplingPolicy, VideoReader
from workflows.corpus import schema

RUN1 = "20260101T000000Z-aaaa1111"
RUN2 = "20260102T000000Z-bbbb2222"
MODEL_ID = "mien-default@prior-v1"
ERROR_MESSAGE = "not a decodable media container (Invalid data found when processing input <moov> & 'ftyp')"

# (track_id, box x0,y0,x1,y1, frames sampled with this face, fe label per frame, active AUs per frame)
TRACKS = {
    0: ((40.0, 60.0, 140.0, 180.0), [0, 5, 10, 15, 20, 25],
        ["happiness", "happiness", "happiness", "surprise", "surprise", "surprise"],
        [["AU06", "AU12", "AU25"]] * 3 + [["AU01", "AU02", "AU05", "AU26"]] * 3),
    1: ((190.0, 70.0, 290.0, 190.0), [0, 5, 10],
        ["anger", "anger", "neutral"],
        [["AU04", "AU07"], ["AU04", "AU07", "AU23"], []]),
}


@dataclasses.dataclass
class FixtureOutput:
    """Where the fixture lives and what it holds."""

    root: Path
    video_path: Path  # the annotated source video (interview.mp4)
    video_id: str
    empty_video_id: str
    error_video_id: str
    n_source_frames: int
    n_faces: int


def synthetic_crop(label: str, size: int = 112) -> bytes:
    """A JPEG cartoon face whose mouth shape follows ``label`` (stands in for an aligned crop)."""
    import cv2

    img = np.full((size, size, 3), 235, np.uint8)
    c = size // 2
    cv2.ellipse(img, (c, c), (int(size * 0.36), int(size * 0.45)), 0, 0, 360, (180, 200, 235), -1)
    for dx in (-size // 6, size // 6):
        cv2.circle(img, (c + dx, int(size * 0.4)), max(2, size // 18), (40, 40, 40), -1)
    mouth_y = int(size * 0.7)
    if label == "happiness":
        cv2.ellipse(img, (c, mouth_y - 6), (size // 5, size // 10), 0, 0, 180, (30, 30, 160), 3)
    elif label == "surprise":
        cv2.ellipse(img, (c, mouth_y), (size // 12, size // 8), 0, 0, 360, (30, 30, 120), -1)
    elif label == "anger":
        cv2.line(img, (c - size // 5, mouth_y), (c + size // 5, mouth_y), (30, 30, 120), 3)
        cv2.line(img, (c - size // 4, int(size * 0.3)), (c - size // 12, int(size * 0.35)), (20, 20, 20), 3)
        cv2.line(img, (c + size // 4, int(size * 0.3)), (c + size // 12, int(size * 0.35)), (20, 20, 20), 3)
    else:
        cv2.line(img, (c - size // 6, mouth_y), (c + size // 6, mouth_y), (60, 60, 140), 2)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def _fe_probs(label: str, confidence: float) -> list[tuple[str, float]]:
    rest = (1.0 - confidence) / (len(FE_BASIC) - 1)
    return [(n, confidence if n == label else rest) for n in FE_BASIC]


def _au_probs(active: list[str], seed: int, missing: tuple[str, ...] = ()) -> list[tuple[str, float]]:
    rng = np.random.default_rng(seed)
    out = []
    for a in AU_NAMES:
        if a in missing:
            continue
        p = 0.55 + 0.4 * rng.random() if a in active else 0.45 * rng.random()
        out.append((a, float(np.float32(p))))
    return out


def _write(root: Path, name: str, part: str, rows: list[dict[str, Any]]) -> None:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(schema.table(name, rows), d / part, compression="zstd")


def build_annotated_output(base: Path) -> FixtureOutput:
    """Render the source videos and write videos/faces/tracks parts and runs JSON under ``base/out``."""
    src = base / "corpus"
    src.mkdir(parents=True, exist_ok=True)
    video = render_video(src / "interview.mp4", n_frames=30, fps=10, width=320, height=240)
    empty = render_video(src / "empty_room.mp4", n_frames=10, fps=10, width=160, height=120)
    with VideoReader(str(video), SamplingPolicy.parse("all")) as r:
        probe = r.probe
        times = [f.timestamp_s for f in r.frames()]
    root = base / "out"
    vid, empty_id, broken_id = "a1" + "0" * 18, "b2" + "0" * 18, "c3" + "0" * 18
    finished = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    base_video = {"n_frames": 0, "n_faces": 0, "n_tracks": 0, "sampling": "fps:2", "model_id": MODEL_ID}

    # Run 1: two failures.
    _write(root, "videos", f"{RUN1}-00000.parquet", [
        {**base_video, "video_id": vid, "video_uri": str(video), "status": "error", "run_id": RUN1,
         "error": "worker crashed 3 times while handling this video", "error_kind": "worker_crash",
         "finished_at": finished - dt.timedelta(days=1)},
        {**base_video, "video_id": broken_id, "video_uri": str(src / "broken.mp4"), "status": "error",
         "run_id": RUN1, "error": ERROR_MESSAGE, "error_kind": "invalid_data",
         "finished_at": finished - dt.timedelta(days=1)},
    ])
    _write(root, "faces", f"{RUN1}-00000.parquet", [])
    _write(root, "tracks", f"{RUN1}-00000.parquet", [])

    # Run 2: the interview with faces, and a video without any.
    faces, tracks = [], []
    for tid, (box, frames, labels, actives) in TRACKS.items():
        x0, y0, x1, y1 = box
        for j, (fi, label, active) in enumerate(zip(frames, labels, actives, strict=True)):
            conf = 0.6 + 0.05 * j
            pose = [float("nan")] * 3 if (tid, j) == (1, 2) else [10.0 - 4 * j, -5.0 + j, 2.0 * tid]
            cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
            kps = [cx - w / 5, cy - h / 6, cx + w / 5, cy - h / 6, cx, cy, cx - w / 6, cy + h / 5,
                   cx + w / 6, cy + h / 5]
            faces.append({
                "video_id": vid, "frame_index": fi, "timestamp_s": times[fi], "track_id": tid,
                "segment_id": 0, "bbox": [x0, y0, x1, y1], "det_score": 0.9 - 0.01 * j,
                "landmarks_5": kps, "pose": pose, "age": 31.0 + tid, "gender": "female" if tid else "male",
                "gender_score": 0.8, "fe_label": label, "fe_confidence": conf,
                "fe_probs": _fe_probs(label, conf),
                "au_probs": _au_probs(active, seed=100 * tid + j, missing=("AU43", "AU45") if tid else ()),
                "au_active": active, "au_evidence": _au_probs(active, seed=7 + j), "fe_prior": _fe_probs(label, 0.5),
                "flags": ["profile"] if j == 1 else [],
                "description": f"The person shows {label} <with> visible cues & more." if j == 0 else None,
                "crop_jpeg": synthetic_crop(label), "model_id": MODEL_ID, "run_id": RUN2,
            })
        first, last = times[frames[0]], times[frames[-1]]
        tracks.append({
            "video_id": vid, "track_id": tid, "segment_id": 0, "start_s": first, "end_s": last,
            "n_frames": len(frames), "fe_label": labels[0], "fe_confidence": 0.7,
            "fe_probs": _fe_probs(labels[0], 0.7), "au_probs": _au_probs(actives[0], seed=tid),
            "au_active": actives[0], "description": None, "model_id": MODEL_ID, "run_id": RUN2,
        })
    faces.sort(key=lambda r: (r["frame_index"], r["track_id"]))
    video_row = {
        **base_video, "status": "ok", "run_id": RUN2, "finished_at": finished, "codec": probe.codec,
        "fps": probe.fps, "rotation": probe.rotation, "decode_faces_s": 0.4, "mllm_s": 0.2,
    }
    _write(root, "faces", f"{RUN2}-00000.parquet", faces)
    _write(root, "tracks", f"{RUN2}-00000.parquet", tracks)
    _write(root, "videos", f"{RUN2}-00000.parquet", [
        {**video_row, "video_id": vid, "video_uri": str(video), "n_frames": 6, "n_faces": len(faces),
         "n_tracks": len(tracks), "duration_s": probe.duration_s, "width": probe.width, "height": probe.height},
        {**video_row, "video_id": empty_id, "video_uri": str(empty), "n_frames": 2, "duration_s": 1.0,
         "width": 160, "height": 120},
    ])

    for run_id, counts, wall in ((RUN1, {"videos_total": 3, "videos_ok": 0, "videos_error": 2, "faces": 0}, 3.5),
                                 (RUN2, {"videos_total": 3, "videos_skipped": 0, "videos_ok": 2,
                                         "videos_error": 0, "faces": len(faces), "tracks": len(tracks)}, 7.25)):
        doc = {"run_id": run_id, "input": str(src), "output": str(root), "started_at": run_id.split("-")[0],
               "model_id": MODEL_ID, "config": {"decode": {"sampling": "fps:2"}}, "counts": counts,
               "timings": {"wall_s": wall, "videos_per_s": 2 / wall, "faces_per_s": len(faces) / wall}}
        (root / "runs").mkdir(parents=True, exist_ok=True)
        (root / "runs" / f"{run_id}.json").write_text(json.dumps(doc, indent=2))
    return FixtureOutput(root=root, video_path=video, video_id=vid, empty_video_id=empty_id,
                         error_video_id=broken_id, n_source_frames=len(times), n_faces=len(faces))


@pytest.fixture(scope="session")
def annotated(tmp_path_factory) -> FixtureOutput:
    """The fixture output, built once per test session."""
    return build_annotated_output(tmp_path_factory.mktemp("outputs"))


def faces_frame(root: Path):
    """The fixture's faces table as pandas (for comparing exports with the Parquet values)."""
    import pandas as pd

    return pd.concat([pd.read_parquet(p) for p in sorted((root / "faces").glob("*.parquet"))],
                     ignore_index=True)


def mien(*argv: str) -> int:
    """Run ``mien <argv>`` in this process; returns the exit status."""
    from jobs.cli import main

    return main([str(a) for a in argv])
