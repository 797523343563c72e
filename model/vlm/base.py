"""Plain Hugging Face VLM directories as models: recognise one, check it, describe it as a manifest.

A directory written by ``save_pretrained`` of an image-text-to-text model (``config.json``,
safetensors weights, processor and tokenizer files) is accepted wherever a mien model directory
is (``--model``: local, ``s3://`` or MLflow). It runs zero-shot: :func:`base_manifest` states it
as a mien manifest whose only component is the checkpoint itself, referenced by URI and sha256
(never copied), with ``prior_weight`` = :data:`ZERO_SHOT_PRIOR_WEIGHT`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Share of the calibrated face prior when a general VLM scores faces zero-shot. General VLMs read
# expressions only moderately before facial tuning (EmoLA/Face-LLaVA report large gains from
# LoRA); the prior is a dedicated expression classifier plus measured AU evidence, so neither
# is trusted alone: an even mix. A LoRA-tuned model directory sets its own value.
ZERO_SHOT_PRIOR_WEIGHT = 0.5

_WEIGHT_SUFFIXES_UNSAFE = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def is_hf_vlm_dir(directory: str | Path) -> bool:
    """A ``save_pretrained`` directory (``config.json``) that is not a mien model directory."""
    from model.model_dir import MANIFEST

    d = Path(directory)
    return (d / "config.json").is_file() and not (d / MANIFEST).exists()


def supported_model_types() -> list[str]:
    """``model_type`` values transformers loads with ``AutoModelForImageTextToText``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def check_base_dir(uri: str, directory: str | Path) -> dict[str, Any]:
    """The checkpoint's ``config.json`` after the checks that make loading it safe and possible:
    safetensors weights only (pickled weights are refused with the conversion command), and an
    architecture transformers loads as image-text-to-text."""
    from model.model_dir import UnsafeCheckpointError

    d = Path(directory)
    files = [p for p in d.rglob("*") if p.is_file()]
    pickled = sorted(p.name for p in files if p.name.lower().endswith(_WEIGHT_SUFFIXES_UNSAFE))
    if pickled:
        raise UnsafeCheckpointError(
            f"{uri} holds pickled weights ({', '.join(pickled[:3])}); mien never unpickles checkpoints. "
            "Convert it once, in an environment you trust: python -c \"from transformers import "
            "AutoModelForImageTextToText as M, AutoProcessor as P; m = M.from_pretrained('SRC'); "
            "m.save_pretrained('DST', safe_serialization=True); P.from_pretrained('SRC').save_pretrained('DST')\" "
            "and delete the .bin files")
    if not any(p.name.endswith(".safetensors") for p in files):
        from model.model_dir import MissingPartError

        raise MissingPartError(f"{uri} has a config.json but no *.safetensors weights")
    config = json.loads((d / "config.json").read_text())
    model_type = config.get("model_type", "")
    supported = supported_model_types()
    if model_type not in supported:
        raise ValueError(f"{uri}: model_type {model_type!r} is not an image-text-to-text architecture "
                         f"transformers can load; supported: {', '.join(supported)}")
    return config


def base_manifest(uri: str, directory: str | Path) -> dict[str, Any]:
    """A mien manifest for running the checkpoint at ``uri`` (materialized at ``directory``) zero-shot."""
    from model.model_dir import FORMAT, FORMAT_VERSION, tree_sha256

    config = check_base_dir(uri, directory)
    name = Path(str(uri).rstrip("/")).name or "vlm"
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "version": "zeroshot",
        "architecture": {"name": name, "llm": {"enabled": False},
                         "vlm": {"source": uri, "family": "auto"},
                         "prior_weight": ZERO_SHOT_PRIOR_WEIGHT},
        # verified as loaded (the materialized copy of ``uri``); ``uri`` is where it came from
        "components": {"vlm": {"source": str(directory), "uri": uri, "sha256": tree_sha256(directory),
                               "model_type": config.get("model_type")}},
        "parts": {},
    }
