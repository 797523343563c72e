"""Dispatch order and the job's tail: largest file first vs listing order.

    .venv/bin/python -m bench.bench_order [--short 24] [--loops 6] [--repeat 2]

A job ends when its last video does. If a long video is listed last, it starts when the other
videos are done and runs alone while every other actor idles. ``annotate`` hands videos to
the actors largest file first (``workflows.annotate.plan.largest_first``). This bench measures both
orders on one skewed corpus, alternating them (A B A B ...) so the machine's drift hits both:
``--short`` copies of the short sample media plus one long clip (the smiling clip looped
``--loops`` times), named so that it sorts last. It then simulates list scheduling on
``W`` actors with lognormal video durations (heavy-tailed like real corpora) and prints the
makespan of each order against the lower bound ``max(total / W, longest)``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_pipeline import build_corpus


def render_looped(src: Path, dst: Path, loops: int) -> Path:
    """``src`` played ``loops`` times in a row, re-encoded as H.264 (a long single-face video)."""
    import av

    with av.open(str(src)) as inp:
        s_in = inp.streams.video[0]
        rate = s_in.average_rate
        frames = [f.to_ndarray(format="rgb24") for f in inp.decode(s_in)]
    with av.open(str(dst), "w") as out:
        s = out.add_stream("libx264", rate=rate)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        s.options = {"crf": "23", "preset": "veryfast"}
        for _ in range(loops):
            for img in frames:
                out.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(s.encode())
    return dst


def makespan(durations: np.ndarray, workers: int) -> float:
    """Greedy list scheduling: each video goes to the worker that frees up first."""
    free = [0.0] * workers
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + float(d))
    return max(free)


def simulate(workers: int, per_worker: int, sigma: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    d = rng.lognormal(0.0, sigma, workers * per_worker)
    bound = max(d.sum() / workers, d.max())
    listing = makespan(d, workers)  # listing order is unrelated to duration: a random order
    lpt = makespan(np.sort(d)[::-1], workers)
    return {"workers": workers, "videos": len(d), "sigma": sigma, "listing": float(listing / bound),
            "largest_first": float(lpt / bound)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", type=int, default=4, help="copies of the six sample media files (short work)")
    ap.add_argument("--loops", type=int, default=6, help="the long clip is the 19.7 s smiling clip this many times")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each order, alternating")
    ap.add_argument("--json", default="", help="also write every figure here")
    a = ap.parse_args(argv)
    import ray

    import workflows.annotate.plan as annotate_mod
    from workflows.annotate.pipeline import AnnotateConfig, annotate
    from workflows.core import assets
    from workflows.core.config import load_config

    cfg = load_config(AnnotateConfig, None, ["mlflow.enabled=false"])
    runs: dict[str, list[dict]] = {"largest_first": [], "listing": []}
    with tempfile.TemporaryDirectory(prefix="mien-bench-order-") as d:
        d = Path(d)
        corpus = build_corpus(d / "corpus", a.short)
        long_clip = render_looped(Path(assets.resolve("sample_smiling_video")), corpus / "zzz_long.mp4", a.loops)
        warm = build_corpus(d / "warm", 1)
        ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
        annotate(str(warm), str(d / "out-warm"), cfg, progress=False)
        keep = annotate_mod.largest_first
        for i in range(a.repeat):
            for order in ("largest_first", "listing"):
                annotate_mod.largest_first = keep if order == "largest_first" else list
                try:
                    t0 = time.perf_counter()
                    s = annotate(str(corpus), str(d / f"out-{order}-{i}"), cfg, progress=False)
                    runs[order].append({"wall_s": time.perf_counter() - t0, "util": s.utilisation()["faces"],
                                        "videos": s.videos_ok + s.videos_error})
                finally:
                    annotate_mod.largest_first = keep
        ray.shutdown()
        n_files = len(list(corpus.iterdir()))
        long_mib = long_clip.stat().st_size / 2**20
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    print(f"corpus: {n_files} files, the long clip ({a.loops}x 19.7 s, {long_mib:.1f} MiB) listed last; "
          f"{a.repeat} run(s) of each order, alternating")
    for order, rs in runs.items():
        print(f"  {order:<14} wall " + ", ".join(f"{r['wall_s']:.1f} s ({r['util']:.0%} busy)" for r in rs)
              + f"; median {med[order]:.1f} s")
    print(f"  largest first is {med['listing'] / med['largest_first']:.2f}x faster (median vs median)")
    sims = [simulate(w, per, sigma) for w, per in ((2, 50), (16, 50), (128, 50), (1024, 50), (1024, 1000))
            for sigma in (0.5, 1.0, 1.5)]
    print("simulated list scheduling, lognormal durations (sigma of log duration); makespan / lower bound:")
    for r in sims:
        print(f"  {r['workers']:5d} actors {r['videos']:8d} videos  sigma {r['sigma']:.1f}   listing "
              f"{r['listing']:.2f}   largest first {r['largest_first']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": runs, "median_s": med,
                                            "speedup": med["listing"] / med["largest_first"],
                                            "simulated": sims}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
