"""Tiny random configurations of the full architecture, for tests, benchmarks and CPU smoke runs.

Every part is present (CLIP or SigLIP vision tower, face-prior encoder, Local Clue
Aggregator, Multi-perspective Projector, prior Q-Former, LoRA on a Llama-shaped LLM) at a
size that builds in well under a second on CPU. Nothing is downloaded: weights are random,
the tokenizer is mien's built-in word-level tokenizer.
"""

from __future__ import annotations

from typing import Any

from model.config import ModelConfig, config_from_dict
from model.tokenizer import builtin_vocabulary


def tiny_llm_config(hidden: int = 64, layers: int = 2, model_type: str = "llama") -> dict[str, Any]:
    return {"model_type": model_type, "vocab_size": len(builtin_vocabulary()), "hidden_size": hidden,
            "intermediate_size": 2 * hidden, "num_hidden_layers": layers, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 1024, "tie_word_embeddings": False,
            "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3,
            # a frozen lm_head at the default 0.02 init caps logits near uniform; LoRA could not
            # move the loss of a 64-wide model
            "initializer_range": 0.1}


def tiny_vision_config(kind: str = "clip", hidden: int = 32, image_size: int = 32, patch: int = 8) -> dict[str, Any]:
    return {"model_type": f"{kind}_vision_model", "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": 4, "num_attention_heads": 4, "image_size": image_size, "patch_size": patch}


def tiny_config_dict(vision: str | None = "clip", lora: bool = True, clip_frames: int = 0,
                     prior_weight: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """A plain-dict tiny config (what a YAML file would hold)."""
    return {
        "name": "mien-tiny", "version": "v0", "seed": seed,
        "vision": ({"enabled": True, "hf_config": tiny_vision_config(vision), "intermediate_layers": [-3, -2]}
                   if vision else {"enabled": False}),
        "face_prior": {"enabled": True, "dim": 32},
        "fim": {"dim": 32, "heads": 4, "regions": 16, "region_size": 8, "num_visual_tokens": 4,
                "prior_queries": 2},
        "clip": {"frames": clip_frames},
        "llm": {"hf_config": tiny_llm_config(), "tokenizer": "builtin:words", "dtype": "float32",
                "attn_implementation": "eager",
                "lora": {"enabled": lora, "r": 4, "alpha": 8, "dropout": 0.0}},
        "generation": {"max_new_tokens": 8, "few_shot": False},
        "prior_weight": prior_weight,
    }


def tiny_config(**kwargs: Any) -> ModelConfig:
    """:class:`ModelConfig` of :func:`tiny_config_dict` (same keyword arguments)."""
    return config_from_dict(tiny_config_dict(**kwargs), source="tiny_config")
