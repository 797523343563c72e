"""The driver's ceiling: how many finished videos per second one annotate driver can fold in.

    .venv/bin/python -m bench.bench_sink [--videos 400] [--faces-per-video 40] [--crops]

Every finished video crosses the driver once: its faces/tracks tables (Arrow IPC) are read,
counted into the summary and buffered into the Parquet sink, which writes committed parts
every 64 videos. This times exactly that path (``workflows.annotate.pipeline._consume`` into a real
``AnnotationSink`` on local disk) with result rows built by the MLLM stage's own table code,
so the figure is the cluster-wide rate above which the driver, not the workers, is the
bottleneck (docs/SCALING.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
import types
from pathlib import Path

import numpy as np


def result_row(video_id: str, n_faces: int, crops: bool, rng: np.random.Generator, cfg) -> dict:
    """A finished video as the MLLM stage emits it, with random but well-formed values."""
    from model.taxonomy import AU_NAMES, FE_BASIC
    from workflows.annotate.stages import MllmStage, _ipc

    tracks = max(1, n_faces // 16)
    f = {
        "frame_index": np.arange(n_faces, dtype=np.int32), "timestamp_s": np.arange(n_faces) / 2.0,
        "track_id": (np.arange(n_faces) % tracks).astype(np.int32), "segment_id": np.zeros(n_faces, np.int32),
        "bbox": rng.random((n_faces, 4), np.float32) * 500, "det_score": rng.random(n_faces, np.float32),
        "kps": rng.random((n_faces, 5, 2), np.float32) * 500, "pose": rng.normal(0, 10, (n_faces, 3)),
        "age": rng.uniform(18, 70, n_faces), "gender": np.array(["female"] * n_faces),
        "gender_score": rng.random(n_faces), "au_evidence": rng.random((n_faces, len(AU_NAMES)), np.float32),
        "fe_prior": rng.dirichlet(np.ones(len(FE_BASIC)), n_faces), "flags": np.array([""] * n_faces),
        "blendshapes": rng.random((n_faces, 52), np.float32),
        "crop_jpeg": [rng.bytes(15_000) for _ in range(n_faces)],
    }
    s = {"fe": rng.dirichlet(np.ones(len(FE_BASIC)), n_faces).astype(np.float32),
         "au": rng.random((n_faces, len(AU_NAMES)), np.float32), "description": [None] * n_faces}
    cfg.output.crops = crops
    stage = types.SimpleNamespace(cfg=cfg, model_id="bench-model", run_id="bench-run")
    faces_t, tracks_t = MllmStage._tables(stage, video_id, f, s)
    return {"video_id": video_id, "video_uri": f"s3://bench/{video_id}.mp4", "status": "ok", "error": None,
            "error_kind": None, "n_frames": n_faces, "n_faces": n_faces, "n_tracks": tracks, "duration_s": 20.0,
            "width": 1280, "height": 720, "fps": 30.0, "codec": "h264", "rotation": 0, "sampling": "fps:2",
            "decode_faces_s": 1.0, "mllm_s": 0.1, "model_id": "bench-model",
            "faces_ipc": _ipc(faces_t), "tracks_ipc": _ipc(tracks_t)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=400)
    ap.add_argument("--faces-per-video", type=int, default=40)
    ap.add_argument("--crops", action="store_true", help="keep JPEG crops in the faces table (output.crops)")
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    from workflows.annotate.pipeline import AnnotateConfig, AnnotateSummary, _consume
    from workflows.core.config import load_config
    from workflows.corpus.writer import AnnotationSink

    cfg = load_config(AnnotateConfig, None, ["mlflow.enabled=false"])
    rng = np.random.default_rng(0)
    # 16 distinct rows reused: building them is the workers' job, not what is timed here.
    templates = [result_row(f"v{i}", a.faces_per_video, a.crops, rng, cfg) for i in range(16)]
    ipc_bytes = np.mean([len(t["faces_ipc"]) + len(t["tracks_ipc"]) for t in templates])
    with tempfile.TemporaryDirectory() as d:
        sink = AnnotationSink(str(Path(d) / "out"), "bench-run")
        summary = AnnotateSummary(run_id="bench-run", output=d)
        fe, au = collections.Counter(), collections.Counter()
        t0 = time.perf_counter()
        for i in range(a.videos):
            row = dict(templates[i % 16], video_id=f"video-{i:07d}")
            _consume(row, "bench-run", sink, summary, fe, au, i + 1, a.videos, time.perf_counter())
        sink.flush()
        wall = time.perf_counter() - t0
        written = sink.bytes_written
    r = {"videos": a.videos, "faces_per_video": a.faces_per_video, "crops": a.crops, "wall_s": wall,
         "videos_per_s": a.videos / wall, "faces_per_s": a.videos * a.faces_per_video / wall,
         "ipc_kib_per_video": ipc_bytes / 1024, "parquet_bytes_per_face": written / (a.videos * a.faces_per_video)}
    print(f"driver folds {r['videos_per_s']:.0f} videos/s = {r['faces_per_s']:,.0f} faces/s "
          f"({a.faces_per_video} faces/video, crops {'on' if a.crops else 'off'}); "
          f"{r['ipc_kib_per_video']:.0f} KiB in per video, {r['parquet_bytes_per_face']:.0f} B of Parquet per face")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
