"""End-to-end annotate throughput vs a sequential single-process loop, and memory vs corpus size.

    .venv/bin/python -m bench.bench_pipeline [--copies 3] [--scale 10] [--sampling fps:2]

Prints, from one run on one machine (noisy machines: compare the ratios, not the absolutes):
- sequential loop (same stages and models, one process): videos/min, faces/s;
- the Ray pipeline (decode+faces actors overlapping with the MLLM actor): videos/min, faces/s,
  and the speed-up over the sequential loop;
- the same pipeline with seeking disabled (every frame decoded; sampled ones converted);
- the x``scale`` corpus with the MLLM in its own pool instead of inside the face actors;
- bytes per face that cross the object store between stages (the packed npz blob);
- peak memory (PSS) of driver + Ray processes for the corpus x1 and x``scale``;
- with ``--pairs K``: K back-to-back (sequential, pipeline) pairs on the x``scale`` corpus, each
  pair's ratio and the median (the end-to-end figure least disturbed by the machine's drift).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

from workflows.core import assets

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
    """Samples the memory of this process and every descendant (Ray's raylet, GCS, workers)
    every 0.5 s. Counts PSS where the OS has it: Ray's object store is shared memory mapped
    into every worker, and summing RSS would count the same pages once per process."""

    def __init__(self) -> None:
        self.peak = 0
        self.at_peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _mem(p: psutil.Process) -> int:
        try:
            return p.memory_full_info().pss
        except (AttributeError, psutil.AccessDenied):
            return p.memory_info().rss

    @staticmethod
    def _kind(p: psutil.Process, me: psutil.Process) -> str:
        if p.pid == me.pid:
            return "driver"
        name = " ".join(p.cmdline()[:1])
        for key in ("FusedStage", "DecodeFacesStage", "MllmStage", "raylet", "gcs_server"):
            if key in name:
                return key
        return "other"

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            by_kind: dict[str, int] = {}
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    k = self._kind(p, me)
                    by_kind[k] = by_kind.get(k, 0) + self._mem(p)
            total = sum(by_kind.values())
            if total > self.peak:
                self.peak, self.at_peak = total, by_kind
            time.sleep(0.5)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *a: object) -> None:
        self._stop.set()
        self._t.join()


def sequential(corpus: Path, cfg) -> dict:
    from workflows.annotate.ingest import discover
    from workflows.annotate.stages import DecodeFacesStage, MllmStage

    t_load = time.perf_counter()
    faces_stage, mllm = DecodeFacesStage(cfg), MllmStage(cfg, "bench")
    t0 = time.perf_counter()
    load_s = t0 - t_load
    sources = discover(str(corpus)).sources
    n_faces, n_frames, blob_bytes = 0, 0, 0
    for i, s in enumerate(sources):
        row = faces_stage.process_video(s.video_id, s.uri)
        blob_bytes += len(row["faces_npz"] or b"")
        n_faces += row["n_faces"]
        n_frames += row["n_frames"]
        mllm.process_video(row, i)
    wall = time.perf_counter() - t0
    faces_stage.extractor.close()
    return {"videos": len(sources), "faces": n_faces, "frames": n_frames, "wall_s": wall, "load_s": load_s,
            "bytes_per_face": blob_bytes / max(n_faces, 1)}


def decode_only(corpus: Path, cfg) -> dict:
    """The decode-only ceiling: the same files, sampling and reader, no face work (one process)."""
    from workflows.annotate.decode import DecodeError, VideoReader
    from workflows.annotate.ingest import discover

    sources = discover(str(corpus)).sources
    policy = cfg.decode.policy()
    t0 = time.perf_counter()
    frames = decoded = 0
    for s in sources:
        with contextlib.suppress(DecodeError), VideoReader(s.uri, policy, cfg.decode.limits,
                                                           seek_min_gap_s=cfg.decode.seek_min_gap_s,
                                                           threads=cfg.decode.threads) as r:
            frames += sum(1 for _ in r.frames())
            decoded += r.decoded_frames
    return {"frames": frames, "decoded": decoded, "wall_s": time.perf_counter() - t0}


def pipeline(corpus: Path, cfg, out: Path) -> dict:
    from workflows.annotate.pipeline import annotate

    with PeakRSS() as rss:
        t0 = time.perf_counter()
        s = annotate(str(corpus), str(out), cfg, progress=False)
        wall = time.perf_counter() - t0
    return {"videos": s.videos_ok + s.videos_error, "faces": s.faces, "wall_s": wall, "peak_rss": rss.peak,
            "peak_by_process": {k: round(v / 2**20) for k, v in sorted(rss.at_peak.items())},
            "first_s": s.first_result_s, "util": s.utilisation(), "plan": s.plan, "pools": s.pools_line(),
            "cpu_share": s.decode_faces_cpu_s / s.decode_faces_s if s.decode_faces_s else None}


def paired_runs(corpus: Path, cfg, d: Path, pairs: int) -> list[dict]:
    """``pairs`` back-to-back (sequential loop, pipeline) runs on the same corpus: each ratio
    compares two runs a minute apart, so slow drifts of the machine cancel within a pair."""
    out = []
    for i in range(pairs):
        seq = sequential(corpus, cfg)
        par = pipeline(corpus, cfg, d / f"out-pair{i}")
        out.append({"seq_s": seq["wall_s"], "pipe_s": par["wall_s"], "ratio": seq["wall_s"] / par["wall_s"],
                    "util": par["util"], "cpu_share": par["cpu_share"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=3, help="copies of the sample media in the x1 corpus")
    ap.add_argument("--scale", type=int, default=10, help="the large corpus is this many times the x1 corpus")
    ap.add_argument("--sampling", default="fps:2")
    ap.add_argument("--pairs", type=int, default=0,
                    help="then alternate the sequential loop and the pipeline on the large corpus this many "
                         "times and report each pair's ratio and the median (the machine's speed drifts)")
    ap.add_argument("--json", default="", help="also write every figure here")
    a = ap.parse_args()
    import ray

    from workflows.annotate.pipeline import AnnotateConfig
    from workflows.core.config import load_config

    # The Ray pipeline's figures, as before the local executor existed; the local executor (what
    # auto picks for jobs up to executor.local_max_videos) is compared with it on the large corpus.
    base = ["mlflow.enabled=false", f"decode.sampling={a.sampling}", "executor.kind=ray"]
    cfg = load_config(AnnotateConfig, None, base)
    noseek = load_config(AnnotateConfig, None, [*base, "decode.seek_min_gap_s=1e9"])
    threaded = load_config(AnnotateConfig, None, [*base, f"faces.num_threads={os.cpu_count()}"])
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        small = build_corpus(d / "x1", a.copies)
        big = build_corpus(d / "x10", a.copies * a.scale)
        sequential(build_corpus(d / "warm", 1), cfg)  # page cache and first-call costs, not timed
        seq_mt = sequential(small, threaded)
        seq = sequential(small, cfg)
        dec = decode_only(small, cfg)
        ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
        # Warm-up run: Ray's worker pool and the OS page cache; actor start-up and model loads
        # are still paid once per job (reported as "first video after").
        pipeline(d / "warm", cfg, d / "out-warm")
        par = pipeline(small, cfg, d / "out1")
        par_noseek = pipeline(small, noseek, d / "out1b")
        par_big = pipeline(big, cfg, d / "out10")
        # The same with the MLLM in its own actor pool (what fusing saves, side by side).
        par_big_two = pipeline(big, load_config(AnnotateConfig, None, [*base, "ray.fuse_stages=never"]),
                               d / "out10b")
        # A one-file job: the pool sized to the work (1 face actor) vs a fixed 2-actor pool.
        one = d / "one"
        one.mkdir()
        shutil.copyfile(assets.resolve("posed_happy_jpg"), one / "a.jpg")
        one_auto = pipeline(one, cfg, d / "out-one-a")
        one_fixed = pipeline(one, load_config(AnnotateConfig, None, [*base, "ray.faces.concurrency=2"]),
                             d / "out-one-b")
        paired = paired_runs(big, cfg, d, a.pairs)
        ray.shutdown()
        local_cfg = load_config(AnnotateConfig, None, [*base, "executor.kind=local"])
        par_big_local = pipeline(big, local_cfg, d / "out10-local")
        # The machine's speed drifts over minutes: time the sequential loop again after the
        # pipeline runs and compare against the mean of both.
        seq_after = sequential(small, cfg)
        seq = {**seq, "wall_s": (seq["wall_s"] + seq_after["wall_s"]) / 2,
               "wall_s_before": seq["wall_s"], "wall_s_after": seq_after["wall_s"]}

    def rate(r: dict) -> str:
        return f"{r['videos'] / r['wall_s'] * 60:8.1f} videos/min {r['faces'] / r['wall_s']:7.1f} faces/s"

    def pools(r: dict) -> str:
        return f"{r['pools']}; face actors got {r['cpu_share'] or 0:.0%} of a CPU while busy"

    cpus = os.cpu_count() or 1
    print(f"corpus x1: {seq['videos']} media files ({a.copies} copies of {len(MEDIA)}), {seq['frames']} sampled "
          f"frames, sampling {a.sampling}, {cpus} CPUs")
    print(f"sequential loop     {rate(seq)}   wall {seq['wall_s']:.1f} s = mean of {seq['wall_s_before']:.1f} s "
          f"before and {seq['wall_s_after']:.1f} s after the pipeline runs (1 thread per model, as in an actor)")
    print(f"  same, {cpus} threads  {rate(seq_mt)}   wall {seq_mt['wall_s']:.1f} s (library thread pools on every core)")
    print(f"ray pipeline        {rate(par)}   wall {par['wall_s']:.1f} s   "
          f"speed-up {seq['wall_s'] / par['wall_s']:.2f}x vs sequential "
          f"({seq_mt['wall_s'] / par['wall_s']:.2f}x vs threaded)\n    pools: {pools(par)}")
    print(f"pipeline, no seek   {rate(par_noseek)}   wall {par_noseek['wall_s']:.1f} s   "
          f"seek speed-up {par_noseek['wall_s'] / par['wall_s']:.2f}x")
    big_speedup = (par_big["videos"] / par_big["wall_s"]) / (seq["videos"] / seq["wall_s"])
    print(f"ray pipeline x{a.scale:<4d}{rate(par_big)}   wall {par_big['wall_s']:.1f} s   "
          f"speed-up {big_speedup:.2f}x vs sequential\n    pools: {pools(par_big)}")
    print(f"  same, 2 pools   {rate(par_big_two)}   wall {par_big_two['wall_s']:.1f} s   "
          f"fused/2 pools {par_big_two['wall_s'] / par_big['wall_s']:.2f}x\n    pools: {pools(par_big_two)}")
    print(f"local executor x{a.scale:<2d}{rate(par_big_local)}   wall {par_big_local['wall_s']:.1f} s   "
          f"ray/local {par_big['wall_s'] / par_big_local['wall_s']:.2f}x (Ray already started for the Ray run)")
    ceiling = dec["frames"] / dec["wall_s"] * cpus
    staged = seq["frames"] * a.scale / par_big["wall_s"]
    print(f"decode-only ceiling {dec['frames'] / dec['wall_s']:8.1f} sampled frames/s per core ({dec['decoded']} decoded "
          f"for {dec['frames']} sampled), x{cpus} cores = {ceiling:.0f}/s; decode+faces+MLLM x{a.scale}: "
          f"{staged:.1f} sampled frames/s = {staged / ceiling:.3f}x the ceiling")
    print(f"one-file job: {one_auto['wall_s']:.1f} s with the pool sized to it (1 face actor), "
          f"{one_fixed['wall_s']:.1f} s with 2 face actors ({one_fixed['wall_s'] / one_auto['wall_s']:.2f}x)")
    print(f"object store: {seq['bytes_per_face'] / 1024:.1f} KiB per face between stages (JPEG crop + arrays)")
    print(f"peak memory (PSS) driver+Ray: x1 {par['peak_rss'] / 2**30:.2f} GiB, x{a.scale} "
          f"{par_big['peak_rss'] / 2**30:.2f} GiB (ratio {par_big['peak_rss'] / par['peak_rss']:.2f})")
    print(f"    MiB at the peak, x1: {par['peak_by_process']}\n    x{a.scale}: {par_big['peak_by_process']}")
    if paired:
        ratios = [p["ratio"] for p in paired]
        print(f"paired on the x{a.scale} corpus ({par_big['videos']} files), sequential then pipeline, "
              f"{len(paired)} time(s): " + ", ".join(f"{p['seq_s']:.1f}/{p['pipe_s']:.1f} s = {p['ratio']:.2f}x"
                                                     for p in paired)
              + f"; median {statistics.median(ratios):.2f}x, min {min(ratios):.2f}x")
    if a.json:
        import json

        doc = {"cpus": cpus, "scale": a.scale, "sampling": a.sampling, "sequential": seq,
               "sequential_threaded": seq_mt, "decode_only": dec, "pipeline": par, "pipeline_noseek": par_noseek,
               "pipeline_big": par_big, "speedup": seq["wall_s"] / par["wall_s"], "speedup_big": big_speedup,
               "seek_speedup": par_noseek["wall_s"] / par["wall_s"], "decode_ceiling_ratio": staged / ceiling,
               "memory_ratio": par_big["peak_rss"] / par["peak_rss"], "one_file_auto": one_auto,
               "one_file_two_actors": one_fixed, "pipeline_big_two_pools": par_big_two,
               "pipeline_big_local": par_big_local,
               "fused_speedup": par_big_two["wall_s"] / par_big["wall_s"], "paired": paired,
               "paired_median": statistics.median([p["ratio"] for p in paired]) if paired else None}
        Path(a.json).write_text(json.dumps(doc, indent=2, default=str))


if __name__ == "__main__":
    main()
