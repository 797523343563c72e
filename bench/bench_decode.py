"""Decode throughput on a 720p 30 fps clip: `all` vs `fps:2` vs `keyframes` (one core).

    .venv/bin/python -m bench.bench_decode [--seconds 30] [--gop 60]

Prints frames/s (decoded and sampled), seconds of wall time per video-minute, and ratios.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from tests.media import render_video
from workflows.annotate.decode import SamplingPolicy, VideoReader


def measure(path: str, policy: str) -> dict:
    t0 = time.perf_counter()
    with VideoReader(path, SamplingPolicy.parse(policy)) as r:
        n = sum(1 for _ in r.frames())
        decoded, seeks, dur = r.decoded_frames, r.seeks, r.probe.duration_s
    wall = time.perf_counter() - t0
    return {"policy": policy, "sampled": n, "decoded": decoded, "seeks": seeks, "wall_s": wall,
            "sampled_fps": n / wall, "decoded_fps": decoded / wall, "s_per_video_min": wall / (dur / 60)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--gop", type=int, default=60, help="key frame interval of the rendered clip")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default="", help="also write the rows here")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "720p.mp4")
        t0 = time.perf_counter()
        render_video(path, n_frames=a.seconds * 30, fps=30, width=1280, height=720, gop=a.gop)
        print(f"rendered {a.seconds} s 1280x720 @30 fps (gop {a.gop}) in {time.perf_counter() - t0:.1f} s")
        rows = {}
        for _ in range(a.repeat):  # interleave policies so machine noise hits all alike
            for policy in ("all", "fps:2", "fps:0.5", "keyframes"):
                m = measure(path, policy)
                if policy not in rows or m["wall_s"] < rows[policy]["wall_s"]:
                    rows[policy] = m
    print(f"{'policy':10s} {'sampled':>8s} {'decoded':>8s} {'seeks':>6s} {'wall s':>7s} {'decoded fps':>12s} "
          f"{'s/video-min':>12s} {'speed-up vs all':>16s}")
    base = rows["all"]["wall_s"]
    for p, m in rows.items():
        print(f"{p:10s} {m['sampled']:8d} {m['decoded']:8d} {m['seeks']:6d} {m['wall_s']:7.2f} "
              f"{m['decoded_fps']:12.1f} {m['s_per_video_min']:12.2f} {base / m['wall_s']:15.2f}x")
    if a.json:
        import json

        with open(a.json, "w") as fh:
            json.dump({"threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
