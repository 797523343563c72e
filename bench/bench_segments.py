"""What per-frame MLLM calls buy over per-segment ones, measured on real video.

    .venv/bin/python -m bench.bench_segments [--sampling fps:2] [--segment-frames 16] [--k 1 2 4]

Runs the face stage and the scoring model (the shipped default unless ``--model``) on the
sample videos, face by face, then asks of every track segment: if only ``k`` evenly spaced
faces were scored and the segment's faces shared the mean of their scores (what
``scoring.faces_per_segment = k`` does with the LLM's part), how many faces would change
label, and how far would their probabilities move (total variation)? The per-face scores
stand in for the LLM's: what the measurement captures is how much a face's expression
differs from its segment neighbours', which is what a per-frame call could add.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from model.annotator import segment_picks

VIDEOS = ["sample_smiling_video", "sample_single_face_video", "sample_no_face_video"]


def per_face_scores(name: str, cfg) -> tuple[np.ndarray, np.ndarray]:
    """(faces, 7) FE probabilities and (faces,) segment keys for one sample video."""
    from workflows.annotate.stages import DecodeFacesStage, MllmStage, unpack_faces
    from workflows.core import assets

    stage, mllm = DecodeFacesStage(cfg), MllmStage(cfg, "bench")
    row = stage.process_video(name, str(assets.resolve(name)))
    stage.extractor.close()
    if not row["n_faces"]:
        return np.zeros((0, 7)), np.zeros(0, np.int64)
    faces = unpack_faces(row["faces_npz"])
    scores = mllm._score(faces, 0)
    keys = (faces["track_id"].astype(np.int64) << 20) + faces["segment_id"].astype(np.int64)
    return scores["fe"].astype(np.float64), keys


def shared(fe: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Each face's probabilities replaced by the mean over k evenly spaced faces of its segment."""
    out = fe.copy()
    for key in np.unique(keys):
        idx = np.flatnonzero(keys == key)
        pick = segment_picks(idx, k)
        if len(pick) == len(idx):  # every face scored: nothing shared (as in the model)
            continue
        m = fe[pick].mean(0)
        out[idx] = m / m.sum()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sampling", default="fps:2")
    ap.add_argument("--segment-frames", type=int, default=16, help="faces.track.segment_max_frames")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--model", default="default")
    ap.add_argument("--confident", type=float, default=0.8, help="a face's top probability counted as confident")
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    from workflows.annotate.pipeline import AnnotateConfig
    from workflows.core.config import load_config

    cfg = load_config(AnnotateConfig, None, ["mlflow.enabled=false", f"decode.sampling={a.sampling}",
                                             f"faces.track.segment_max_frames={a.segment_frames}",
                                             f"model.uri={a.model}"])
    results = {}
    for name in VIDEOS:
        fe, keys = per_face_scores(name, cfg)
        if not len(fe):
            print(f"{name}: no faces")
            continue
        label = fe.argmax(1)
        sure = fe.max(1) >= a.confident
        r = {"faces": len(fe), "segments": len(np.unique(keys)), "confident_faces": int(sure.sum())}
        for k in a.k:
            s = shared(fe, keys, k)
            changed = s.argmax(1) != label
            r[f"k{k}_label_changed"] = float(changed.mean())
            r[f"k{k}_confident_label_changed"] = float(changed[sure].mean()) if sure.any() else float("nan")
            r[f"k{k}_mean_tv"] = float(0.5 * np.abs(s - fe).sum(1).mean())
            r[f"k{k}_llm_calls_saved"] = 1 - sum(len(segment_picks(np.flatnonzero(keys == u), k))
                                                 for u in np.unique(keys)) / len(fe)
        results[name] = r
        cells = "\n  ".join(f"k={k}: {r[f'k{k}_label_changed']:.1%} labels changed "
                          f"({r[f'k{k}_confident_label_changed']:.1%} of the confident), TV {r[f'k{k}_mean_tv']:.3f}, "
                          f"{r[f'k{k}_llm_calls_saved']:.0%} calls saved" for k in a.k)
        print(f"{name}: {r['faces']} faces ({r['confident_faces']} with confidence >= {a.confident}) in "
              f"{r['segments']} segment(s) of <= {a.segment_frames} frames\n  {cells}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
