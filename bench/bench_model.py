"""Model benchmark: faces/s in scoring vs generation mode, prefix-reuse speed-up, FLOPs per face.

    .venv/bin/python bench/bench_model.py                 # tiny + default (Gemma) on CPU
    .venv/bin/python bench/bench_model.py --skip-gemma    # tiny + prior-only default (seconds)
    .venv/bin/python bench/bench_model.py --device cuda --skip-gemma --gpu-7b   # + random 7B-shaped model

Measured: the tiny random model (every part enabled), the offline default's calibrated
prior (its scoring path), and the default's Gemma-3-270M when it is made to score
(``prior_weight=0.5``) and to describe. Analytic: FLOPs per face for a LLaVA-1.5-7B-shaped
config (CLIP ViT-L/14-336, 576 visual tokens) with and without prefix reuse.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def face_batch(rows: int, size: int, seed: int = 0, per_track: int = 4) -> dict[str, Any]:
    from model.taxonomy import AU_NAMES, FE_BASIC

    rng = np.random.default_rng(seed)
    return {
        "crop": rng.integers(0, 255, (rows, size, size, 3), dtype=np.uint8),
        "au_evidence": (rng.random((rows, len(AU_NAMES))) * 0.7).astype(np.float32),
        "fe_prior": rng.dirichlet(np.ones(len(FE_BASIC)), rows).astype(np.float32),
        "age": rng.uniform(18, 70, rows).astype(np.float32),
        "gender": [("female", "male")[i % 2] for i in range(rows)],
        "track_key": (np.arange(rows) // per_track).astype(np.int64),
    }


def timed(fn: Callable[[], Any], reps: int) -> float:
    """Median seconds of ``reps`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_tiny(device: str, rows: int, reps: int) -> dict[str, float]:
    from model import build_model
    from model.annotator import FacialAnnotator
    from model.tiny import tiny_config

    mllm = build_model(tiny_config(), device=device)
    batch = face_batch(rows, 32)
    faces = mllm.face_inputs(batch)
    out: dict[str, float] = {}
    reuse = timed(lambda: mllm.score(faces, reuse_prefix=True), reps)
    full = timed(lambda: mllm.score(faces, reuse_prefix=False), reps)
    out["tiny_scoring_faces_per_s"] = rows / reuse
    out["tiny_scoring_no_reuse_faces_per_s"] = rows / full
    out["tiny_prefix_reuse_speedup"] = full / reuse
    ann = FacialAnnotator.from_mllm(mllm)
    out["tiny_annotate_faces_per_s"] = rows / timed(lambda: ann.annotate(batch), reps)
    mllm.cfg.generation.max_new_tokens = 16
    out["tiny_generation_faces_per_s"] = rows / timed(lambda: mllm.generate(faces), reps)
    return out


def bench_default(device: str, rows: int, reps: int, gemma: bool, gemma_rows: int) -> dict[str, float]:
    from model import load_model

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    m = load_model("default", device=device)
    out["default_prior_load_s"] = time.perf_counter() - t0  # no LLM: the face prior only
    big = face_batch(4096, 224)
    out["default_prior_scoring_faces_per_s"] = len(big["au_evidence"]) / timed(lambda: m.annotate(big), reps)
    if not gemma:
        return out
    t0 = time.perf_counter()
    scored = load_model("default", device=device, overrides={"prior_weight": 0.5})
    out["default_gemma_load_s"] = time.perf_counter() - t0
    mllm = scored.mllm
    batch = face_batch(gemma_rows, 224)
    faces = mllm.face_inputs(batch)
    reuse = timed(lambda: mllm.score(faces, reuse_prefix=True), max(1, reps // 2))
    full = timed(lambda: mllm.score(faces, reuse_prefix=False), 1)
    out["default_gemma_scoring_faces_per_s"] = gemma_rows / reuse
    out["default_gemma_scoring_no_reuse_faces_per_s"] = gemma_rows / full
    out["default_gemma_prefix_reuse_speedup"] = full / reuse
    scored.config.generation.enabled, scored.config.generation.mode = True, "all"
    scored.config.prior_weight = 1.0
    gen_batch = face_batch(min(gemma_rows, 4), 224)
    out["default_gemma_generation_faces_per_s"] = len(gen_batch["age"]) / timed(lambda: scored.annotate(gen_batch), 1)
    return out


def config_7b() -> Any:
    """LLaVA-1.5-7B-shaped config with random weights: CLIP ViT-L/14-336 (576 patches), 7B LLaMA."""
    from model.config import config_from_dict
    from model.tiny import tiny_config_dict

    data = tiny_config_dict()
    data["name"] = "mien-7b-random"
    data["vision"] = {"enabled": True, "intermediate_layers": [-8, -5, -2], "hf_config": {
        "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
        "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14}}
    data["face_prior"] = {"enabled": True, "dim": 1024}
    data["fim"] = {"dim": 1024, "heads": 16, "regions": 16, "region_size": 32, "num_visual_tokens": 0,
                   "prior_queries": 4}
    data["llm"].update(dtype="bfloat16", attn_implementation="sdpa", hf_config={
        "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
        "max_position_embeddings": 4096, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3})
    data["llm"]["lora"] = {"enabled": True, "r": 64, "alpha": 128, "dropout": 0.0}
    data["scoring"] = {"kv_budget_mb": 16384, "micro_batch": 64}
    return config_from_dict(data)


def bench_7b(device: str, rows: int, peak_tflops: float) -> dict[str, float]:
    """Measured scoring throughput of the 7B-shaped model (random weights; GPU only)."""
    import torch

    from model import build_model
    from model.flops import flops_per_face

    torch.set_default_device(device)  # initialise the random weights on the GPU directly
    try:
        mllm = build_model(config_7b(), device=device)
    finally:
        torch.set_default_device("cpu")
    batch = face_batch(rows, 336)
    faces = mllm.face_inputs(batch)
    tokens = mllm.encode_faces(faces).shape[1]

    def run(reuse: bool) -> None:
        mllm.score(faces, reuse_prefix=reuse)
        torch.cuda.synchronize()

    reuse_s = timed(lambda: run(True), 3)
    full_s = timed(lambda: run(False), 1)
    flops = flops_per_face(batch=rows)["total"]
    fps = rows / reuse_s
    return {"7b_face_tokens": float(tokens), "7b_scoring_faces_per_s": fps,
            "7b_scoring_no_reuse_faces_per_s": rows / full_s, "7b_prefix_reuse_speedup": full_s / reuse_s,
            "7b_scoring_mfu": fps * flops / (peak_tflops * 1e12),
            "7b_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30}


def flops_table() -> dict[str, float]:
    from model.flops import flops_per_face

    reuse = flops_per_face(reuse_prefix=True)
    full = flops_per_face(reuse_prefix=False)
    return {
        "7b_576tok_gflops_per_face_vision": reuse["vision"] / 1e9,
        "7b_576tok_gflops_per_face_fim": reuse["fim"] / 1e9,
        "7b_576tok_gflops_per_face_llm": reuse["llm"] / 1e9,
        "7b_576tok_gflops_per_face_total": reuse["total"] / 1e9,
        "7b_576tok_gflops_per_face_total_no_reuse": full["total"] / 1e9,
        "7b_576tok_analytic_reuse_speedup_llm": full["llm"] / reuse["llm"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", type=int, default=16, help="faces per tiny-model batch")
    ap.add_argument("--gemma-rows", type=int, default=8, help="faces per Gemma scoring batch")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-gemma", action="store_true", help="do not load Gemma (prior-only default)")
    ap.add_argument("--json", help="also write the numbers to this file")
    ap.add_argument("--gpu-7b", action="store_true", help="also measure a random 7B-shaped model (CUDA)")
    ap.add_argument("--rows-7b", type=int, default=16)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak for MFU (H100 SXM)")
    args = ap.parse_args(argv)

    import torch

    results: dict[str, Any] = {"device": args.device, "torch_threads": torch.get_num_threads()}
    results.update(bench_tiny(args.device, args.rows, args.reps))
    results.update(bench_default(args.device, args.rows, args.reps, not args.skip_gemma, args.gemma_rows))
    if args.gpu_7b:
        results.update(bench_7b(args.device, args.rows_7b, args.peak_tflops))
    results.update(flops_table())
    width = max(len(k) for k in results)
    for k, v in results.items():
        print(f"{k:<{width}}  {v:,.2f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
