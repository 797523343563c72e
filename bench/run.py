"""Every benchmark in one run, then one table of the figures that matter (``make bench``).

    .venv/bin/python -m bench.run [--quick] [--gemma] [--json bench.json]

Runs, one after another (each in its own process so one's memory does not colour the next):
decode (``bench_decode``), face extraction (``bench_faces``), the model in scoring and
generation mode (``bench_model``), pretrained VLMs with and without prefix reuse
(``bench_vlm``), the end-to-end pipeline against a sequential loop and
a no-seek pipeline (``bench_pipeline``), detection cost vs small-face recall (``bench_detect``), the driver's ceiling (``bench_sink``) and what
per-segment LLM calls change on real video (``bench_segments``) and what dispatching the
largest files first does to a job's tail (``bench_order``), the driver's memory planning 10k vs 100k
inputs (``bench_plan``), and one long video on two workers with and without time windows (``bench_windows``). ``bench_cluster`` (a multi-node
``Cluster``) and the GPU runs of ``bench_model``/``bench_train`` are run alone. Each script's
own output is printed as it runs; the table at the end collects the headline figures and
ratios. The machine is noisy: compare the ratios printed within one run, not absolutes across
runs; the end-to-end ratio is also taken over back-to-back pairs. ``--quick`` shrinks every
input (minutes instead of ~25 min on 2 cores); ``--gemma`` also loads the shipped Gemma-3-270M.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _run(name: str, args: list[str], out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", f"bench.{name}", *args, "--json", str(out)]
    print(f"\n=== {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=sys.stdout, stderr=subprocess.DEVNULL, check=False)
    if proc.returncode != 0 or not out.exists():
        print(f"!!! {name} failed (exit {proc.returncode}); rerun it alone to see its log", flush=True)
        return {}
    print(f"--- {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads(out.read_text())


def detect_rows(det: dict[str, Any]) -> list[tuple[str, str]]:
    """Per frame size: detection ms at the full frame vs at the default's scale, and the
    smallest face size the default still finds every face of."""
    import statistics

    out = []
    for frame, side in det["default_detect_side"].items():
        rows = [x for x in det["rows"] if x["frame"] == frame]
        if not rows:
            continue
        full = max(x["det_max_side"] for x in rows)

        def ms(s: int, rows: list = rows) -> float:
            return statistics.median(x["ms"] for x in rows if x["det_max_side"] == s)

        at = [x for x in rows if x["det_max_side"] == side]
        if not at:
            continue
        full_recall = sorted(x["face_px"] for x in at if x["recall"] >= 1.0)
        out.append((f"detection {frame}, default at {side} px vs {full} px",
                    f"{ms(side):.0f} vs {ms(full):.0f} ms/frame ({ms(full) / ms(side):.1f}x); every face "
                    f">= {full_recall[0]:g} px found" if full_recall else "no size fully found"))
    return out


def summary_rows(r: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(figure, value) pairs from the scripts' JSON; a missing script leaves its rows out."""
    rows: list[tuple[str, str]] = []
    dec = r.get("decode", {}).get("rows", {})
    if dec:
        rows.append(("decode all frames, 720p30", f"{dec['all']['decoded_fps']:.0f} frames/s"))
        rows.append(("decode fps:2 (sampled / decoded)", f"{dec['fps:2']['sampled_fps']:.0f} / "
                     f"{dec['fps:2']['decoded_fps']:.0f} frames/s, {dec['all']['wall_s'] / dec['fps:2']['wall_s']:.2f}x "
                     f"vs all"))
    faces = r.get("faces", {})
    for run in faces.get("runs", []):
        for clip, c in run["clips"].items():
            rows.append((f"faces {run.get('variant', '-')}, {clip}",
                         f"{c['faces_per_s']:.1f} faces/s/core, {c['ms_per_frame']:.0f} ms/frame"))
    det = r.get("detect", {})
    if det:
        rows += detect_rows(det)
    m = r.get("model", {})
    for key, label in (("tiny_scoring_faces_per_s", "MLLM tiny, scoring"),
                       ("tiny_generation_faces_per_s", "MLLM tiny, generation"),
                       ("tiny_prefix_reuse_speedup", "MLLM tiny, prefix reuse speed-up"),
                       ("default_prior_scoring_faces_per_s", "default model (prior), scoring"),
                       ("default_gemma_scoring_faces_per_s", "default Gemma-270M, scoring"),
                       ("default_gemma_generation_faces_per_s", "default Gemma-270M, generation")):
        if key in m:
            unit = "x" if key.endswith("speedup") else " faces/s"
            rows.append((label, f"{m[key]:,.1f}{unit}"))
    vlm = r.get("vlm", {})
    for name, v in vlm.get("measured", {}).items():
        rows.append((f"VLM {name}, prefix reuse vs none", f"{v['reuse_faces_per_s']:.1f} vs "
                     f"{v['no_reuse_faces_per_s']:.1f} faces/s ({v['reuse_speedup']:.2f}x)"
                     + ("" if v["scores_agree"] else f"; SCORES DIFFER by {v['max_abs_diff']:.1e}")))
    for f in vlm.get("flops", {}).values():
        rows.append((f"{f['name']} scoring, analytic", f"{f['reuse_flops'] / 1e12:.1f} TFLOP/face "
                     f"({f['analytic_reuse_speedup']:.1f}x less than no reuse); H100 ceiling "
                     f"{f['reuse_h100_peak_faces_per_s']:.0f} faces/s, {f['reuse_h100_at_mfu_faces_per_s']:.0f} "
                     f"at {vlm['mfu']:.0%} MFU"))
    p = r.get("pipeline", {})
    if p:
        seq, big = p["sequential"], p["pipeline_big"]
        rows += [
            ("sequential loop (1 process)", f"{seq['videos'] / seq['wall_s'] * 60:.1f} videos/min, "
                                            f"{seq['faces'] / seq['wall_s']:.1f} faces/s"),
            (f"pipeline x{p['scale']} corpus", f"{big['videos'] / big['wall_s'] * 60:.1f} videos/min, "
                                               f"{big['faces'] / big['wall_s']:.1f} faces/s"),
            ("  (a) vs sequential loop, x1 / x" + str(p["scale"]), f"{p['speedup']:.2f}x / {p['speedup_big']:.2f}x"),
            *([("  (a) paired runs, median (min)", f"{p['paired_median']:.2f}x "
                                                 f"({min(x['ratio'] for x in p['paired']):.2f}x) over "
                                                 f"{len(p['paired'])} pairs")] if p.get("paired") else []),
            ("  (b) seeking vs decoding every frame", f"{p['seek_speedup']:.2f}x"),
            ("  MLLM fused into face actors vs own pool", f"{p['fused_speedup']:.2f}x"),
            ("  decode+faces+MLLM vs decode-only ceiling", f"{p['decode_ceiling_ratio']:.3f}x"),
            ("  first video after (actor start-up)", f"{big['first_s']:.1f} s"),
            ("  one-file job, pool sized to it / 2 actors", f"{p['one_file_auto']['wall_s']:.1f} s / "
                                                          f"{p['one_file_two_actors']['wall_s']:.1f} s"),
            *([(f"  local executor x{p['scale']} vs Ray", f"{big['wall_s'] / p['pipeline_big_local']['wall_s']:.2f}x "
                                                         f"faster")] if p.get("pipeline_big_local") else []),
            ("object store per face", f"{seq['bytes_per_face'] / 1024:.1f} KiB"),
            (f"peak memory x1 -> x{p['scale']}", f"{p['pipeline']['peak_rss'] / 2**30:.2f} -> "
                                                 f"{big['peak_rss'] / 2**30:.2f} GiB ({p['memory_ratio']:.2f}x)"),
        ]
    sink = r.get("sink", {})
    if sink:
        rows.append(("driver ceiling (results folded + Parquet)", f"{sink['videos_per_s']:.0f} videos/s, "
                                                               f"{sink['faces_per_s']:,.0f} faces/s"))
        workers = sink.get("sink", {}).get("workers")
        if workers:
            rows.append(("driver ceiling, output.sink=workers", f"{workers['faces_per_s']:,.0f} faces/s "
                         f"({sink['ratio_faces_per_s']:.1f}x), {workers['driver_bytes_per_face']:.0f} B/face in"))
    plan = r.get("plan", {})
    if plan:
        sizes = sorted(plan["peak_rss_kb"], key=int)
        rows.append((f"driver peak RSS, {sizes[0]} -> {sizes[-1]} entries", ", ".join(
            f"{mode} {plan['peak_rss_kb'][sizes[-1]][mode] / 1024:.0f} MiB ({ratio:.2f}x)"
            for mode, ratio in plan["ratio"].items())))
    win = r.get("windows", {})
    if win:
        rows.append((f"one {win['duration_s']:.0f}-s video on 2 workers, time windows vs none", ", ".join(
            f"{executor} {ratio:.2f}x (window_s={w})" for executor, by in win["speedup"].items()
            for w, ratio in by.items())))
    seg = r.get("segments", {}).get("sample_smiling_video", {})
    if seg:
        rows.append(("LLM on 2 faces per 16-frame segment", f"{seg['k2_llm_calls_saved']:.0%} calls saved, "
                     f"{seg['k2_label_changed']:.0%} labels changed "
                     f"({seg['k2_confident_label_changed']:.0%} of confident ones)"))
    small = r.get("small", {})
    if small:
        import statistics

        def med(key: str) -> float:
            return statistics.median(x["wall_s"] for x in small["runs"][key])

        rows += [("one clip, whole mien process: local / Ray", f"{med('one_local'):.1f} s / {med('one_ray'):.1f} s"),
                 (f"{small['clips']} clips: mien / hand-written Ray Data / sequential",
                  f"{med('many_mien'):.1f} / {med('many_script'):.1f} / {med('many_sequential'):.1f} s")]
    order = r.get("order", {})
    if order:
        worst = max(order["simulated"], key=lambda x: x["listing"])
        rows.append(("largest file first vs listing order (skewed corpus)",
                     f"{order['speedup']:.2f}x; simulated worst tail {worst['listing']:.2f}x the bound "
                     f"({worst['workers']} actors) vs {worst['largest_first']:.2f}x"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small inputs: a smoke run of every benchmark")
    ap.add_argument("--gemma", action="store_true", help="also score and generate with the shipped Gemma-3-270M")
    ap.add_argument("--json", default="", help="write every script's figures here as one document")
    a = ap.parse_args(argv)
    q = a.quick
    plan = {
        "decode": ("bench_decode", ["--seconds", "6" if q else "20", "--repeat", "1" if q else "2"]),
        "faces": ("bench_faces", ["--frames", "8" if q else "48", *(["--variant", "default"] if q else [])]),
        "model": ("bench_model", [*([] if a.gemma else ["--skip-gemma"]), "--reps", "1" if q else "3"]),
        "vlm": ("bench_vlm", ["--reps", "1" if q else "5", *(["--families", "llava,qwen2_5_vl"] if q else [])]),
        "detect": ("bench_detect", ["--reps", "1" if q else "3", *(["--sizes", "16,24,48"] if q else [])]),
        "pipeline": ("bench_pipeline", ["--copies", "1" if q else "2", "--scale", "2" if q else "10",
                                        "--pairs", "1" if q else "3"]),
        "sink": ("bench_sink", ["--videos", "100" if q else "400"]),
        "segments": ("bench_segments", []),
        "order": ("bench_order", ["--short", "2" if q else "4", "--loops", "2" if q else "6", "--repeat", "1" if q else "2"]),
        "small": ("bench_small", ["--pairs", "1" if q else "3", "--clips", "4" if q else "16"]),
        "plan": ("bench_plan", ["--sizes", *(["2000", "20000"] if q else ["10000", "100000"])]),
        "windows": ("bench_windows", ["--copies", "3" if q else "9", "--window-s", "0,20" if q else "0,60",
                                      "--executors", "local" if q else "ray,local"]),
    }
    results: dict[str, dict[str, Any]] = {}
    env_note = f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
    with tempfile.TemporaryDirectory(prefix="mien-bench-") as d:
        for key, (script, args) in plan.items():
            results[key] = _run(script, args, Path(d) / f"{key}.json")
    rows = summary_rows(results)
    width = max(len(k) for k, _ in rows) if rows else 0
    print(f"\n=== summary ({env_note}; load average now {os.getloadavg()[0]:.1f})")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2, default=str))
    failed = [k for k, v in results.items() if not v]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
