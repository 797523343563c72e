"""One long video on two face workers: wall time with time windows (``decode.window_s``) vs without.

    .venv/bin/python -m bench.bench_windows [--copies 9] [--window-s 0,30,60] [--executors ray,local] [--repeats 1] [--json out.json]

The long video is the smiling sample (19.7 s, real faces) remuxed end to end ``--copies`` times
(no re-encoding: the same frames, timestamps shifted), about 3 minutes for 9 copies. Each
setting runs ``mien annotate`` in-process on it into a fresh output, settings alternating within
each repeat; printed: wall seconds, the run's windows, faces, and the speed-up of each window size
over ``window_s=0`` (the whole video on one worker). On 2 cores the goal is >= 1.7x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def long_video(src: Path, dst: Path, copies: int) -> float:
    """``src`` ``copies`` times end to end in one file (packets remuxed, timestamps shifted); its duration."""
    import av

    with av.open(str(src)) as probe:
        s = probe.streams.video[0]
        span = int(s.duration or round(float(probe.duration or 0) / 1e6 / float(s.time_base)))
    with av.open(str(dst), "w") as out:
        ostream = None
        for k in range(copies):
            with av.open(str(src)) as inp:
                istream = inp.streams.video[0]
                if ostream is None:
                    ostream = out.add_stream_from_template(istream)
                for packet in inp.demux(istream):
                    if packet.dts is None:
                        continue
                    packet.pts = packet.pts + k * span if packet.pts is not None else None
                    packet.dts = packet.dts + k * span
                    packet.stream = ostream
                    out.mux(packet)
    with av.open(str(dst)) as check:
        s = check.streams.video[0]
        return float(s.duration * s.time_base) if s.duration else float(check.duration) / 1e6


def run(video_dir: Path, out: Path, window_s: float, executor: str) -> dict:
    import ray

    from workflows.annotate.pipeline import AnnotateConfig, annotate
    from workflows.core.config import load_config

    cfg = load_config(AnnotateConfig, None, ["mlflow.enabled=false", "output.crops=false", f"decode.window_s={window_s}",
                                             f"executor.kind={executor}", "executor.local_workers=2"])
    t0 = time.perf_counter()
    try:
        s = annotate(str(video_dir), str(out), cfg, progress=False)
    finally:
        ray.shutdown()
    return {"wall_s": time.perf_counter() - t0, "windows": s.windows, "faces": s.faces, "ok": s.videos_ok}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=9)
    ap.add_argument("--window-s", default="0,60")
    ap.add_argument("--executors", default="ray,local")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    from workflows.core.assets import resolve

    sizes = [float(x) for x in args.window_s.split(",")]
    executors = args.executors.split(",")
    with tempfile.TemporaryDirectory(prefix="mien-bench-windows-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        duration = long_video(resolve("sample_smiling_video"), root / "in" / "long.mp4", args.copies)
        print(f"one video of {duration:.0f} s ({args.copies} x the smiling sample), sampling fps:2, 2 face workers")
        walls: dict[tuple[str, float], list[float]] = {}
        n = 0
        for _ in range(args.repeats):
            for executor in executors:
                for w in sizes:
                    n += 1
                    r = run(root / "in", root / f"out{n}", w, executor)
                    walls.setdefault((executor, w), []).append(r["wall_s"])
                    print(f"  {executor:5s} window_s={w:g}: {r['wall_s']:.1f} s wall, {r['windows'] or 1} window(s), "
                          f"{r['faces']} faces, {r['ok']} ok", flush=True)
        speedup: dict[str, dict[str, float]] = {}
        for executor in executors:
            base = statistics.median(walls[(executor, sizes[0])])
            for w in sizes[1:]:
                m = statistics.median(walls[(executor, w)])
                speedup.setdefault(executor, {})[f"{w:g}"] = base / m
                print(f"{executor}: window_s={w:g} {m:.1f} s vs window_s={sizes[0]:g} {base:.1f} s = {base / m:.2f}x")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "duration_s": duration, "wall_s": {f"{e} {w:g}": v for (e, w), v in walls.items()},
                "speedup": speedup}, indent=2))


if __name__ == "__main__":
    main()
