"""End-to-end annotate throughput vs a sequential single-process loop, and memory vs corpus size.

    .venv/bin/python -m bench.bench_pipeline [--copies 3] [--scale 10] [--sampling fps:2]

Prints, from one run on one machine (noisy machines: compare the ratios, not the absolutes):
- sequential loop (same stages and models, one process): videos/min, faces/s;
- the Ray pipeline (decode+faces actors overlapping with the MLLM actor): videos/min, faces/s,
  and the speed-up over the sequential loop;
- the same pipeline with seeking disabled (every frame decoded; sampled ones converted);
- bytes per face that cross the object store between stages (the packed npz blob);
- peak RSS of driver + Ray workers for the corpus x1 and x``scale``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil

from workflows import assets

MEDIA = ["sample_smiling_video", "sample_single_face_video", "sample_no_face_video", "sample_single_face_jpg",
         "sample_multi_face_jpg", "posed_happy_jpg"]


def build_corpus(dest: Path, copies: int) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for c in range(copies):
        for name in MEDIA:
            src = assets.resolve(name)
            shutil.copyfile(src, dest / f"{c:03d}_{src.name}")
    return dest


class PeakRSS:
    """Samples the RSS of this process and every descendant (Ray's raylet, workers) every 0.2 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *a: object) -> None:
        self._stop.set()
        self._t.join()


def sequential(corpus: Path, cfg) -> dict:
    from workflows.ingest import discover
    from workflows.stages import DecodeFacesStage, MllmStage

    t_load = time.perf_counter()
    faces_stage, mllm = DecodeFacesStage(cfg), MllmStage(cfg, "bench")
    t0 = time.perf_counter()
    load_s = t0 - t_load
    sources, _ = discover(str(corpus))
    n_faces, blob_bytes = 0, 0
    for i, s in enumerate(sources):
        row = faces_stage.process_video(s.video_id, s.uri)
        blob_bytes += len(row["faces_npz"] or b"")
        n_faces += row["n_faces"]
        mllm.process_video(row, i)
    wall = time.perf_counter() - t0
    return {"videos": len(sources), "faces": n_faces, "wall_s": wall, "load_s": load_s,
            "bytes_per_face": blob_bytes / max(n_faces, 1)}


def pipeline(corpus: Path, cfg, out: Path) -> dict:
    from workflows.annotate import annotate

    with PeakRSS() as rss:
        t0 = time.perf_counter()
        s = annotate(str(corpus), str(out), cfg, progress=False)
        wall = time.perf_counter() - t0
    return {"videos": s.videos_ok + s.videos_error, "faces": s.faces, "wall_s": wall, "peak_rss": rss.peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=3, help="copies of the sample media in the x1 corpus")
    ap.add_argument("--scale", type=int, default=10, help="the large corpus is this many times the x1 corpus")
    ap.add_argument("--sampling", default="fps:2")
    a = ap.parse_args()
    import ray

    from workflows.annotate import AnnotateConfig
    from workflows.config import load_config

    base = ["mlflow.enabled=false", f"decode.sampling={a.sampling}"]
    cfg = load_config(AnnotateConfig, None, base)
    noseek = load_config(AnnotateConfig, None, [*base, "decode.seek_min_gap_s=1e9"])
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        small = build_corpus(d / "x1", a.copies)
        seq = sequential(small, cfg)
        ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
        # Warm-up run: actor start-up and model loads are paid once per job, not per video.
        pipeline(build_corpus(d / "warm", 1), cfg, d / "out-warm")
        par = pipeline(small, cfg, d / "out1")
        par_noseek = pipeline(small, noseek, d / "out1b")
        big = build_corpus(d / "x10", a.copies * a.scale)
        par_big = pipeline(big, cfg, d / "out10")
        ray.shutdown()

    def rate(r: dict) -> str:
        return f"{r['videos'] / r['wall_s'] * 60:8.1f} videos/min {r['faces'] / r['wall_s']:7.1f} faces/s"

    print(f"corpus x1: {seq['videos']} media files ({a.copies} copies of {len(MEDIA)}), sampling {a.sampling}, "
          f"{os.cpu_count()} CPUs")
    print(f"sequential loop     {rate(seq)}   wall {seq['wall_s']:.1f} s (+{seq['load_s']:.1f} s model load)")
    print(f"ray pipeline        {rate(par)}   wall {par['wall_s']:.1f} s   "
          f"speed-up {seq['wall_s'] / par['wall_s']:.2f}x vs sequential")
    print(f"pipeline, no seek   {rate(par_noseek)}   wall {par_noseek['wall_s']:.1f} s   "
          f"seek speed-up {par_noseek['wall_s'] / par['wall_s']:.2f}x")
    print(f"object store: {seq['bytes_per_face'] / 1024:.1f} KiB per face between stages (JPEG crop + arrays)")
    print(f"peak RSS driver+workers: x1 {par['peak_rss'] / 2**30:.2f} GiB, x{a.scale} "
          f"{par_big['peak_rss'] / 2**30:.2f} GiB (ratio {par_big['peak_rss'] / par['peak_rss']:.2f}); "
          f"x{a.scale} {rate(par_big)}")


if __name__ == "__main__":
    main()
