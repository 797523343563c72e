"""The embedded offline default model (``--model default``).

No pretrained facial MLLM can be had offline, and the small LLM that ships in a pip package
(Gemma-3-270M base) does not classify expressions (measured: the same class for every face
under every prompt). So the default's FE/AU probabilities come from the calibrated face
prior (``model/prior.py``), ``prior_weight = 1``, and the LLM is loaded only when
generation is switched on, to phrase descriptions from the prior it is given as text. A
trained checkpoint (LoRA + Face Info Mining over a real vision tower) earns weight over the
prior by beating it on held-out data. See ``model/README.md``.
"""

from __future__ import annotations

from typing import Any

from model.config import (
    GEMMA_ASSET,
    FacePriorConfig,
    FIMConfig,
    GenerationConfig,
    LLMConfig,
    ModelConfig,
    PriorCalibration,
    PromptConfig,
    VisionConfig,
    config_to_dict,
)

DEFAULT_NAME = "mien-default-prior"
DEFAULT_VERSION = "v1"


def default_config() -> ModelConfig:
    """Architecture of the default: calibrated prior for scores, Gemma-3-270M for descriptions."""
    return ModelConfig(
        name=DEFAULT_NAME,
        version=DEFAULT_VERSION,
        vision=VisionConfig(enabled=False),
        face_prior=FacePriorConfig(enabled=False),
        fim=FIMConfig(local_clue=False, prior_queries=0),
        llm=LLMConfig(source=GEMMA_ASSET, dtype="auto"),
        prompt=PromptConfig(prior_as_text=True, attributes=True),
        generation=GenerationConfig(enabled=False, mode="per_track", max_new_tokens=32, few_shot=True,
                                    anchor_label=True),
        prior=PriorCalibration(),
        prior_weight=1.0,
    )


def default_manifest() -> dict[str, Any]:
    """The default model's ``mien_model.json`` (it has no trained parts)."""
    from model.model_dir import FORMAT, FORMAT_VERSION
    from workflows.core.assets import MULTIPART_ASSETS

    cfg = default_config()
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "name": cfg.name, "version": cfg.version,
        "architecture": config_to_dict(cfg),
        "components": {"llm": {"source": GEMMA_ASSET, "sha256": MULTIPART_ASSETS["gemma3_270m_gguf"].sha256}},
        "parts": {},
        "metrics": {},
    }
