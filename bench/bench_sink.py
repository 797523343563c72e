"""The driver's ceiling: how many finished videos per second one annotate driver can fold in.

    .venv/bin/python -m bench.bench_sink [--videos 400] [--faces-per-video 40] [--crops] [--batch 4]

``output.sink=driver``: every finished video crosses the driver once: its faces/tracks tables
(Arrow IPC) are read, counted into the summary and buffered into the Parquet sink, which writes
committed parts every 64 videos (``workflows.annotate.pipeline._consume`` into a real
``AnnotationSink`` on local disk). ``output.sink=workers``: the workers have written each chunk of
``--batch`` videos; the driver gets a status row per video and commits the chunk
(``_commit_chunk``: its videos part). Both are timed, one after the other, with result rows built
by the MLLM stage's own table code; printed: videos and faces per second the driver folds (the
cluster-wide rate above which the driver, not the workers, is the bottleneck: docs/SCALING.md),
driver CPU per face and bytes received per face (the pickled result rows), and the ratios.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
import types
from pathlib import Path
from typing import Any

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


def status_row(row: dict) -> dict:
    """``row`` as a worker that wrote its chunk itself sends it (``output.sink=workers``)."""
    from workflows.annotate.stages import read_ipc

    faces, tracks = read_ipc(row["faces_ipc"]), read_ipc(row["tracks_ipc"])
    out = {k: v for k, v in row.items() if k not in ("faces_ipc", "tracks_ipc")}
    out.update(faces_rows=len(faces), tracks_rows=len(tracks),
               fe_counts=json.dumps(collections.Counter(faces.column("fe_label").to_pylist())),
               au_counts=json.dumps(collections.Counter(a for x in faces.column("au_active").to_pylist() for a in x)),
               part_bytes=0)
    return out


def fold(mode: str, templates: list[dict], videos: int, batch: int, d: Path,
         tables: list[tuple[Any, Any]] | None = None) -> dict:
    """Time the driver folding ``videos`` results in ``mode`` (driver | workers). With ``tables``
    (each template's faces and tracks), the workers' chunk parts are written first, untimed (the
    workers' work), and after the fold the run's compaction (``_Compactor``: every 64 videos) is
    timed on its own: it runs where the data is (a Ray task), not in the driver."""
    import pickle

    import pyarrow as pa

    from workflows.annotate.pipeline import AnnotateSummary, _commit_chunk, _Compactor, _consume
    from workflows.corpus.writer import AnnotationSink, write_part

    sink = AnnotationSink(str(d / mode), "bench-run")
    first_written = 0
    if tables is not None:
        for start in range(0, videos, batch):
            part = f"bench-run-w{start:08d}.parquet"
            for k, name in enumerate(("faces", "tracks")):
                ts = [tables[i % 16][k] for i in range(start, min(videos, start + batch))]
                ts = [t.set_column(0, "video_id", pa.array([f"video-{i:07d}"] * len(t), pa.string()))
                      for i, t in zip(range(start, start + len(ts)), ts, strict=True)]
                first_written += write_part(str(d / mode / name / part), pa.concat_tables(ts))
    summary = AnnotateSummary(run_id="bench-run", output=str(d))
    fe, au = collections.Counter(), collections.Counter()
    received = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for start in range(0, videos, batch):
        rows = [dict(templates[i % 16], video_id=f"video-{i:07d}") for i in range(start, min(videos, start + batch))]
        received += sum(len(pickle.dumps(r)) for r in rows)  # what crosses to the driver
        if mode == "driver":
            for i, row in enumerate(rows, start + 1):
                _consume(row, "bench-run", sink, summary, fe, au, i, videos, time.perf_counter())
        else:
            part = f"bench-run-w{start:08d}.parquet"
            _commit_chunk(part, [dict(r, part=part, part_videos=len(rows)) for r in rows], "bench-run", sink,
                          summary, fe, au)
    sink.flush()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    faces = summary.faces
    out = {"wall_s": wall, "videos_per_s": videos / wall, "faces_per_s": faces / wall,
           "driver_cpu_us_per_face": 1e6 * cpu / faces, "driver_bytes_per_face": received / faces,
           "parquet_bytes_per_face": sink.bytes_written / faces}
    if tables is not None:
        parts_before = len(list((d / mode / "faces").glob("*.parquet")))
        compactor = _Compactor(sink, "bench-run", 64, "local")
        t1 = time.perf_counter()
        for start in range(0, videos, batch):
            compactor.add(f"bench-run-w{start:08d}.parquet", min(batch, videos - start))
        compactor.flush()
        took = time.perf_counter() - t1
        after = list((d / mode / "faces").glob("*.parquet"))
        rewritten = sum(p.stat().st_size for p in after) + sum(
            p.stat().st_size for p in (d / mode / "tracks").glob("*.parquet"))
        out["compaction"] = {"s": took, "us_per_face": 1e6 * took / faces, "faces_parts_before": parts_before,
                             "faces_parts_after": len(after), "write_amplification": (first_written + rewritten)
                             / first_written}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=400)
    ap.add_argument("--faces-per-video", type=int, default=40)
    ap.add_argument("--crops", action="store_true", help="keep JPEG crops in the faces table (output.crops)")
    ap.add_argument("--batch", type=int, default=4, help="videos per chunk a worker writes (ray.mllm.batch_size)")
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    from workflows.annotate.pipeline import AnnotateConfig
    from workflows.core.config import load_config

    cfg = load_config(AnnotateConfig, None, ["mlflow.enabled=false"])
    rng = np.random.default_rng(0)
    # 16 distinct rows reused: building them is the workers' job, not what is timed here.
    templates = [result_row(f"v{i}", a.faces_per_video, a.crops, rng, cfg) for i in range(16)]
    ipc_bytes = np.mean([len(t["faces_ipc"]) + len(t["tracks_ipc"]) for t in templates])
    with tempfile.TemporaryDirectory() as d:
        from workflows.annotate.stages import read_ipc

        tables = [(read_ipc(t["faces_ipc"]), read_ipc(t["tracks_ipc"])) for t in templates]
        modes = {"driver": fold("driver", templates, a.videos, a.batch, Path(d)),
                 "workers": fold("workers", [status_row(t) for t in templates], a.videos, a.batch, Path(d), tables)}
    r = {"videos": a.videos, "faces_per_video": a.faces_per_video, "crops": a.crops, "batch": a.batch,
         "ipc_kib_per_video": ipc_bytes / 1024, **modes["driver"], "sink": modes,
         "ratio_faces_per_s": modes["workers"]["faces_per_s"] / modes["driver"]["faces_per_s"]}
    for mode, m in modes.items():
        print(f"output.sink={mode}: driver folds {m['videos_per_s']:,.0f} videos/s = {m['faces_per_s']:,.0f} faces/s "
              f"({a.faces_per_video} faces/video, crops {'on' if a.crops else 'off'}); driver "
              f"{m['driver_cpu_us_per_face']:.1f} us CPU and {m['driver_bytes_per_face']:,.0f} B received per face")
    print(f"workers / driver: {r['ratio_faces_per_s']:.1f}x the faces/s one driver can take; "
          f"{modes['driver']['driver_bytes_per_face'] / modes['workers']['driver_bytes_per_face']:.0f}x fewer bytes "
          f"per face reach it ({r['ipc_kib_per_video']:.0f} KiB of IPC per video with the driver sink)")
    c = modes["workers"]["compaction"]
    print(f"compaction (workers sink, every 64 videos; in a Ray task next to the data, not the driver): "
          f"{c['faces_parts_before']} chunk parts -> {c['faces_parts_after']} in {c['s']:.2f} s = "
          f"{c['us_per_face']:.1f} us per face; bytes written in all {c['write_amplification']:.2f}x the workers' "
          f"(without crops, the 16 repeating template rows compress across videos in the merged parts)")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
