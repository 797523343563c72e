"""Training throughput of the facial MLLM: tokens/s, samples/s and (on GPU) MFU.

    .venv/bin/python bench/bench_train.py          # tiny model, CPU, one process
    .venv/bin/python bench/bench_train.py --ray    # tiny model via `mien train` (Ray Train x2, ZeRO-2)
    python bench/bench_train.py --gpu              # 7B-shaped random init, bf16, 1 GPU, MFU

One process (default and ``--gpu``): the training step of ``mien train`` - ``collate`` ->
``forward`` (loss on answer tokens) -> backward -> AdamW - under DeepSpeed ZeRO-2 (world size 1)
when DeepSpeed is installed, else plain torch (bf16 weights, torch AdamW); the output says which.
Ray is never needed here. ``--gpu`` builds a Llama-7B-shaped LLM (hidden 4096, 32 layers) with
LoRA, a CLIP ViT-L/14-336-shaped frozen vision tower and Face Info Mining, all random init, and
prints MFU = 6 * N * tokens/s / peak, N = parameters of the LLM (the 6N rule counts a full
backward; with frozen base weights the backward skips weight gradients, so the model FLOPs
actually spent are nearer 4N - both are printed).

Examples are synthetic but shaped like real instruction rows: the FERID category question with
a class answer and the FE<->AU reasoning question with a FEALLM-style answer, half each.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s.
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "A100": 312e12,
             "L40S": 362e12, "A10G": 70e12}


def llama7b_config() -> dict[str, Any]:
    """A 7B-shaped model of the full architecture (random init, nothing downloaded)."""
    from model.tokenizer import builtin_vocabulary

    assert len(builtin_vocabulary()) < 32000
    return {
        "name": "bench-llama7b-clip", "version": "v0",
        "vision": {"enabled": True, "intermediate_layers": [-8, -12, -16],
                   "hf_config": {"model_type": "clip_vision_model", "hidden_size": 1024,
                                 "intermediate_size": 4096, "num_hidden_layers": 24,
                                 "num_attention_heads": 16, "image_size": 336, "patch_size": 14}},
        "face_prior": {"enabled": True, "dim": 512},
        "fim": {"dim": 1024, "heads": 16, "regions": 16, "region_size": 32, "num_visual_tokens": 64,
                "prior_queries": 8},
        "llm": {"hf_config": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
                              "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                              "num_key_value_heads": 32, "max_position_embeddings": 4096,
                              "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 2,
                              "eos_token_id": 3},
                "tokenizer": "builtin:words", "dtype": "bfloat16", "attn_implementation": "sdpa",
                "lora": {"enabled": True, "r": 64, "alpha": 128, "dropout": 0.0,
                         "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
        "prior_weight": 0.0,
    }


def synthetic_rows(n: int, crop: int, seed: int = 0) -> list[dict[str, Any]]:
    from model import prompts
    from model.taxonomy import AU_NAMES, FE_BASIC, FE_PROTOTYPE_AUS

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        fe = FE_BASIC[i % len(FE_BASIC)]
        prior = rng.dirichlet(np.ones(len(FE_BASIC))).astype(np.float32)
        row = {"crop": rng.integers(0, 255, (crop, crop, 3), dtype=np.uint8),
               "au_evidence": rng.random(len(AU_NAMES)).astype(np.float32), "fe_prior": prior,
               "pose": rng.normal(0, 10, 3).astype(np.float32), "age": float(rng.integers(18, 70)),
               "gender": ["female", "male"][i % 2]}
        if i % 2:
            row.update(question=prompts.describe_question(),
                       answer=prompts.reasoning_answer(fe, list(FE_PROTOTYPE_AUS.get(fe, ()))))
        else:
            row.update(question=prompts.fe_question(list(FE_BASIC)), answer=fe)
        rows.append(row)
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrap_optimizer(mllm: Any, lr: float, micro_batch: int, bf16: bool, stage: int) -> tuple[Any, Any, str]:
    """(step function owner, optimizer, backend description): DeepSpeed ZeRO when importable."""
    import torch

    params = [p for _, p in mllm.trainable_parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, foreach=True)
    try:
        import deepspeed
    except ImportError:
        return None, optimizer, "torch (deepspeed not installed: plain AdamW, no ZeRO)"
    try:
        from workflows.training.recipe import skip_cpu_shm_comm_build

        skip_cpu_shm_comm_build()
    except ImportError:
        pass
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    config = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
              "gradient_clipping": 1.0, "bf16": {"enabled": bf16}, "zero_optimization": {"stage": stage},
              "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
    engine, optimizer, _, _ = deepspeed.initialize(model=mllm, optimizer=optimizer, config=config)
    return engine, optimizer, f"deepspeed {deepspeed.__version__} ZeRO-{stage} (world size 1)"


def run_one_process(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from model import build_model
    from model.config import config_from_dict
    from model.tiny import tiny_config_dict

    gpu = args.gpu
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device")
    device = "cuda" if gpu else "cpu"
    cfg_dict = llama7b_config() if gpu else tiny_config_dict()
    if args.lora_r:
        cfg_dict["llm"]["lora"]["r"] = args.lora_r
    cfg = config_from_dict(cfg_dict, source="bench")
    t0 = time.time()
    if gpu:
        with torch.device("cuda"):  # random init on the GPU: seconds instead of minutes on CPU
            mllm = build_model(cfg, device=device)
    else:
        mllm = build_model(cfg, device=device)
    build_s = time.time() - t0
    if args.gradient_checkpointing:
        mllm.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mllm.train()
    n_llm = sum(p.numel() for p in mllm.llm.parameters())
    n_total = sum(p.numel() for p in mllm.parameters())
    n_train = sum(p.numel() for _, p in mllm.trainable_parameters())
    engine, optimizer, backend = wrap_optimizer(mllm, args.lr, args.micro_batch, bf16=gpu, stage=args.zero)
    crop = args.crop or (336 if gpu else 224)
    rows = synthetic_rows(args.micro_batch * (args.steps + args.warmup), crop)
    tokens = {"n": 0}

    def count(module: Any, a: tuple, kw: dict) -> None:
        tokens["n"] += int(kw["attention_mask"].sum())

    hook = mllm.llm.register_forward_pre_hook(count, with_kwargs=True)
    timings, token_counts, losses = [], [], []
    for step in range(args.warmup + args.steps):
        batch_rows = rows[step * args.micro_batch:(step + 1) * args.micro_batch]
        if gpu:
            torch.cuda.synchronize()
        t = time.perf_counter()
        tokens["n"] = 0
        batch = mllm.collate(batch_rows)
        if engine is not None:
            loss = engine(batch).loss
            engine.backward(loss)
            engine.step()
        else:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=gpu):
                loss = mllm(batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in mllm.trainable_parameters()], 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if gpu:
            torch.cuda.synchronize()
        if step >= args.warmup:
            timings.append(time.perf_counter() - t)
            token_counts.append(tokens["n"])
            losses.append(float(loss.detach()))
    hook.remove()
    wall = sum(timings)
    out = {
        "mode": "gpu-7b" if gpu else "cpu-tiny", "backend": backend, "device": device,
        "device_name": torch.cuda.get_device_name(0) if gpu else f"{os.cpu_count()} CPU threads",
        "torch_threads": torch.get_num_threads(), "micro_batch": args.micro_batch, "steps": args.steps,
        "tokens_per_sample": sum(token_counts) / (len(token_counts) * args.micro_batch),
        "samples_per_s": args.micro_batch * len(timings) / wall, "tokens_per_s": sum(token_counts) / wall,
        "step_s": wall / len(timings), "params_llm": n_llm, "params_total": n_total,
        "params_trainable": n_train,
        "build_s": round(build_s, 1), "loss_first": losses[0], "loss_last": losses[-1],
    }
    if gpu:
        peak = args.peak_tflops * 1e12 if args.peak_tflops else _peak(out["device_name"])
        out["peak_tflops"] = peak / 1e12 if peak else None
        if peak:
            out["mfu_6n"] = 6 * n_llm * out["tokens_per_s"] / peak
            out["mfu_4n"] = 4 * n_llm * out["tokens_per_s"] / peak
        out["max_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _peak(name: str) -> float | None:
    for key, value in PEAK_BF16.items():  # most specific names first in the table
        if key in name:
            return value
    return None


def run_ray(args: argparse.Namespace) -> dict[str, Any]:
    """The tiny model through `mien train` (Ray Train, 2 workers, gloo, ZeRO-2) on synthetic colour data."""
    import tempfile

    import pandas as pd
    from PIL import Image

    from workflows.core.config import load_config
    from workflows.training.config import TrainConfig
    from workflows.training.instructions import instructions_from_records, write_instructions
    from workflows.training.ray_train import train

    tmp = Path(tempfile.mkdtemp(prefix="mien-bench-train-"))
    rng = np.random.default_rng(0)
    records = []
    for i in range(160):
        label = ["happiness", "sadness", "surprise", "neutral"][i % 4]
        path = tmp / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        records.append({"id": f"b/{i}", "dataset": "bench", "media": "image", "uri": str(path),
                        "fe_label": label, "au_active": ["AU06", "AU12"] if label == "happiness" else [],
                        "au_labeled": ["AU06", "AU12"]})
    built = instructions_from_records(pd.DataFrame(records), tasks=["fe_category", "fe_au_reasoning"],
                                      embed_images=True)
    write_instructions(built.table, str(tmp / "instructions"))
    cfg = load_config(TrainConfig, ROOT / "jobs/configs/train/tiny_cpu.yaml", [
        f"micro_batch_size={args.micro_batch}", "epochs=1", "evaluate.enabled=false",
        f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", "scaling.cpus_per_worker=0.5", "ray.num_cpus=2"])
    t = time.time()
    result = train(cfg, str(tmp / "instructions"), str(tmp / "model"))
    steady = result.history[2:] or result.history
    return {"mode": "cpu-tiny-ray", "backend": "Ray Train TorchTrainer x2 + DeepSpeed ZeRO-2 (gloo)",
            "steps": result.steps, "micro_batch": args.micro_batch, "world_size": 2,
            "samples_per_s": float(np.mean([h["samples_per_s"] for h in steady])),
            "tokens_per_s": float(np.mean([h["tokens_per_s"] for h in steady])),
            "step_s": float(np.mean([h["step_time_s"] for h in steady])),
            "loss_first": result.history[0]["loss"], "loss_last": result.history[-1]["loss"],
            "wall_s": round(time.time() - t, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="7B-shaped model, bf16, one CUDA GPU")
    p.add_argument("--ray", action="store_true",
                   help="tiny model through `mien train` (Ray Train, 2 CPU workers)")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 20 CPU, 10 GPU)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps first")
    p.add_argument("--micro-batch", type=int, default=None, help="samples per step (default 8 CPU, 16 GPU)")
    p.add_argument("--zero", type=int, default=2, choices=[0, 1, 2, 3],
                   help="ZeRO stage when DeepSpeed is installed")
    p.add_argument("--crop", type=int, default=None, help="face crop side (default 224 CPU, 336 GPU)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lora-r", type=int, default=None)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak of the GPU (default: looked up by name)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; on a busy small box 1 can be much faster)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the result as JSON")
    args = p.parse_args(argv)
    args.steps = args.steps or (10 if args.gpu else 20)
    args.micro_batch = args.micro_batch or (16 if args.gpu else 8)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = run_ray(args) if args.ray else run_one_process(args)
    for k, v in result.items():
        print(f"{k:20s} {v:.4g}" if isinstance(v, float) else f"{k:20s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
