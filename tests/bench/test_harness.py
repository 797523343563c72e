"""The benchmark harness's own logic: capacity arithmetic, the one-run summary, the driver bench."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from bench import capacity, run
from bench.bench_segments import shared


def _args(**kw) -> argparse.Namespace:
    base = {"hours": 1e6, "fps": 2.0, "faces_per_frame": 1.0, "core_faces_per_s": 8.0, "gpu_faces_per_s": 20.0,
            "driver_faces_per_s": 20000.0, "cross_node": 1.0, "sink": "driver", "driver_videos_per_s": 1300.0,
            "video_s": 20.0}
    return argparse.Namespace(**{**base, **kw})


def test_capacity_bottleneck_moves_from_gpu_to_cpu_to_driver():
    a = _args()
    assert capacity.plan(1, 16, 1, a, 1.0)["bottleneck"] == "GPU MLLM"  # 128 CPU vs 20 GPU faces/s
    assert capacity.plan(1, 16, 1, a, 1 / 8)["bottleneck"] == "CPU faces"  # 160 GPU faces/s
    big = capacity.plan(1000, 16, 800, a, 1 / 8)
    assert big["bottleneck"] == "driver" and big["rate"] == 20000.0
    assert big["hours"] == pytest.approx(1e6 * 3600 * 2 / 20000 / 3600)
    assert capacity.plan(1, 2, 0, a, 1.0)["GPU MLLM"] == float("inf")  # no GPU: MLLM on the CPUs
    # output.sink=workers: the driver commits videos; its faces/s ceiling grows with their length
    workers = capacity.plan(1000, 16, 800, _args(sink="workers"), 1 / 8)
    assert workers["driver"] == pytest.approx(1300 * 20 * 2) and workers["bottleneck"] == "driver"
    assert capacity.plan(1000, 16, 800, _args(sink="workers", video_s=600), 1 / 8)["bottleneck"] != "driver"


def test_summary_rows_skip_missing_scripts_and_report_ratios():
    assert run.summary_rows({}) == []
    sink = {"videos_per_s": 500.0, "faces_per_s": 20000.0}
    rows = dict(run.summary_rows({"sink": sink, "decode": {}}))
    assert rows == {"driver ceiling (results folded + Parquet)": "500 videos/s, 20,000 faces/s"}


def test_segment_sharing_keeps_fully_scored_segments():
    fe = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    keys = np.array([1, 1, 1, 2])
    out = shared(fe, keys, 2)  # segment 1: faces 0 and 2 scored, mean shared; segment 2: whole
    np.testing.assert_allclose(out[:3], np.tile([0.75, 0.25], (3, 1)))
    np.testing.assert_allclose(out[3], fe[3])


def test_driver_bench_folds_real_results_into_parquet(tmp_path, capsys):
    from bench import bench_sink

    out = tmp_path / "sink.json"
    assert bench_sink.main(["--videos", "20", "--faces-per-video", "5", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["videos"] == 20 and r["faces_per_s"] > 0 and r["parquet_bytes_per_face"] > 0
    assert "driver folds" in capsys.readouterr().out


def test_summary_reports_the_paired_end_to_end_ratio():
    seq = {"videos": 12, "faces": 100, "wall_s": 10.0, "bytes_per_face": 15000.0}
    big = {"videos": 120, "faces": 1000, "wall_s": 60.0, "first_s": 5.0, "peak_rss": 2**31}
    p = {"scale": 10, "sequential": seq, "pipeline_big": big, "pipeline": {"peak_rss": 2**31},
         "speedup": 0.8, "speedup_big": 1.67, "seek_speedup": 1.0, "fused_speedup": 1.0,
         "decode_ceiling_ratio": 0.09, "memory_ratio": 1.0, "one_file_auto": {"wall_s": 2.5},
         "one_file_two_actors": {"wall_s": 3.0},
         "paired": [{"ratio": 1.5}, {"ratio": 1.7}, {"ratio": 1.6}], "paired_median": 1.6}
    rows = dict(run.summary_rows({"pipeline": p}))
    assert rows["  (a) paired runs, median (min)"] == "1.60x (1.50x) over 3 pairs"
    assert rows["  (a) vs sequential loop, x1 / x10"] == "0.80x / 1.67x"
    del p["paired"]
    assert "  (a) paired runs, median (min)" not in dict(run.summary_rows({"pipeline": p}))


def test_largest_first_scheduling_reaches_the_bound_where_listing_order_does_not():
    from bench.bench_order import makespan, simulate

    d = np.array([1.0, 1.0, 1.0, 1.0, 4.0])  # the long video listed last
    assert makespan(d, 2) == 6.0  # it starts after the short ones: 2 + 4
    assert makespan(np.sort(d)[::-1], 2) == 4.0  # first: the bound max(8 / 2, 4)
    r = simulate(128, 50, 1.0)
    assert r["largest_first"] < 1.01 < r["listing"]


def test_summary_reports_the_dispatch_order_figure():
    order = {"speedup": 1.24, "simulated": [
        {"workers": 2, "listing": 1.0, "largest_first": 1.0},
        {"workers": 128, "listing": 1.59, "largest_first": 1.0}]}
    rows = dict(run.summary_rows({"order": order}))
    assert rows == {"largest file first vs listing order (skewed corpus)":
                    "1.24x; simulated worst tail 1.59x the bound (128 actors) vs 1.00x"}


def test_summary_reports_detection_cost_and_the_smallest_face_fully_found():
    rows = [{"frame": "1280x720", "det_max_side": side, "face_px": px, "ms": ms, "recall": rec}
            for side, ms in ((1280, 100.0), (640, 25.0))
            for px, rec in ((16, 1.0 if side == 1280 else 0.3), (24, 1.0), (48, 1.0))]
    out = dict(run.detect_rows({"rows": rows, "default_detect_side": {"1280x720": 640, "3840x2160": 1280}}))
    assert out == {"detection 1280x720, default at 640 px vs 1280 px":
                   "25 vs 100 ms/frame (4.0x); every face >= 24 px found"}
