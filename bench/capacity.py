"""Capacity model: hours to annotate a corpus on a given cluster, from measured per-stage rates.

    .venv/bin/python -m bench.capacity [--hours 1e6] [--fps 2] [--faces-per-frame 1]
        [--core-faces-per-s 7.9] [--gpu-faces-per-s 19.5] [--sink workers] [--driver-faces-per-s 23000]
        [--driver-videos-per-s 1300] [--video-s 20] [--segment-frames 16] [--faces-per-segment 2] [--cross-node 1.0]

Every default is a figure measured by a benchmark in this directory (docs/PERFORMANCE.md
names the command); pass your own to re-plan. The pipeline's throughput is the minimum of
its stages' capacities — CPU face extraction (cores x per-core rate x cross-node factor),
GPU scoring (GPUs x faces/s, divided by the share of faces the LLM sees), and the single
driver — and the bottleneck is whichever stage sets it. With ``output.sink=driver`` the driver
folds every face into Parquet (a faces/s ceiling); with ``output.sink=workers`` (the default) it
only commits videos (a videos/s ceiling: faces/s = videos/s x faces per video, which grows with
the videos' length).
"""

from __future__ import annotations

import argparse

SHAPES = [  # (nodes, cores per node, GPUs in all)
    (1, 2, 0), (1, 16, 1), (10, 16, 2), (100, 16, 8), (100, 16, 80), (400, 16, 300), (1000, 16, 800),
]


def plan(nodes: int, cores: int, gpus: int, a: argparse.Namespace, llm_share: float) -> dict:
    cpu = nodes * cores * a.core_faces_per_s * (a.cross_node if nodes > 1 else 1.0)
    # With no GPU the MLLM runs on the CPU pool; the shipped default (prior scoring) costs
    # ~8 ms of CPU per face, already inside the per-core rate.
    gpu = gpus * a.gpu_faces_per_s / llm_share if gpus else float("inf")
    per_video = a.video_s * a.fps * a.faces_per_frame
    driver = a.driver_faces_per_s if a.sink == "driver" else a.driver_videos_per_s * per_video
    stages = {"CPU faces": cpu, "GPU MLLM": gpu, "driver": driver}
    bottleneck = min(stages, key=stages.get)
    rate = stages[bottleneck]
    faces = a.hours * 3600 * a.fps * a.faces_per_frame
    return {"rate": rate, "bottleneck": bottleneck, "hours": faces / rate / 3600, **stages}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=1e6, help="hours of video in the corpus")
    ap.add_argument("--fps", type=float, default=2.0, help="sampled frames per second (fps:N)")
    ap.add_argument("--faces-per-frame", type=float, default=1.0)
    ap.add_argument("--core-faces-per-s", type=float, default=7.9,
                    help="faces/s per CPU core inside the pipeline (bench_pipeline x10: 15.7 faces/s on 2 cores)")
    ap.add_argument("--gpu-faces-per-s", type=float, default=19.5,
                    help="7B-shaped scoring, FE + 23 AUs, per H100 (bench_model --gpu-7b)")
    ap.add_argument("--sink", choices=("workers", "driver"), default="workers", help="output.sink")
    ap.add_argument("--driver-faces-per-s", type=float, default=23000.0,
                    help="output.sink=driver: faces one driver folds into Parquet, no crops (bench_sink)")
    ap.add_argument("--driver-videos-per-s", type=float, default=1300.0,
                    help="output.sink=workers: videos one driver commits (bench_sink: 51,900 faces/s at 40 "
                         "faces per video)")
    ap.add_argument("--video-s", type=float, default=20.0, help="mean video length, seconds (for the driver's "
                                                                  "ceiling with output.sink=workers)")
    ap.add_argument("--cross-node", type=float, default=1.0,
                    help="multi-node rate / single-node rate per core (bench_cluster measures 0.65 on ONE "
                         "2-core host, where 3 nodes' daemons share the cores; on real nodes each has its own)")
    ap.add_argument("--segment-frames", type=int, default=16)
    ap.add_argument("--faces-per-segment", type=int, default=0, help="LLM-scored faces per segment (0 = every face)")
    a = ap.parse_args(argv)
    share = 1.0 if a.faces_per_segment <= 0 else min(1.0, a.faces_per_segment / a.segment_frames)
    faces = a.hours * 3600 * a.fps * a.faces_per_frame
    print(f"{a.hours:.0e} h of video at {a.fps:g} frames/s, {a.faces_per_frame:g} face(s)/frame = {faces:.2e} faces; "
          f"LLM sees {share:.0%} of faces; output.sink={a.sink}"
          + (f", videos of {a.video_s:g} s" if a.sink == "workers" else ""))
    print(f"{'nodes':>6} {'cores':>6} {'GPUs':>5} {'CPU faces/s':>12} {'GPU faces/s':>12} {'driver':>8} "
          f"{'bottleneck':>11} {'hours':>10} {'days':>7}")
    for nodes, cores, gpus in SHAPES:
        p = plan(nodes, cores, gpus, a, share)
        gpu = "-" if p["GPU MLLM"] == float("inf") else f"{p['GPU MLLM']:,.0f}"
        print(f"{nodes:>6} {nodes * cores:>6} {gpus:>5} {p['CPU faces']:>12,.0f} {gpu:>12} "
              f"{p['driver']:>8,.0f} {p['bottleneck']:>11} {p['hours']:>10,.0f} {p['hours'] / 24:>7,.1f}")
    cpu_core_h = faces / a.core_faces_per_s / 3600
    gpu_h = faces * share / a.gpu_faces_per_s / 3600
    print(f"work: {cpu_core_h:,.0f} CPU core-hours of face extraction, {gpu_h:,.0f} GPU-hours of LLM scoring; "
          f"balanced at {a.gpu_faces_per_s / share / a.core_faces_per_s:.1f} cores per GPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
