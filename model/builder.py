"""``build_model(cfg)``: compose the facial MLLM from its parts, each frozen or trainable by its flag.

Like torchtune's model builders: plain functions, explicit ``trainable`` flags per part.
The vision tower is frozen (and run under ``no_grad``) unless ``vision.trainable``; the LLM's
base weights are frozen unless ``llm.trainable``; LoRA adapters, the face-prior encoder,
Face Info Mining and the frame compressor follow their own flags. A config with ``vlm.source``
builds the pretrained VLM instead (``model.vlm.facial.build_vlm_model``: base frozen, LoRA on its
language model and the projector by the ``vlm`` section's flags).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from model.config import ModelConfig
from model.face_prior import build_face_prior_encoder
from model.fim import FaceInfoMining
from model.llm import build_llm, resolve_dtype
from model.llm import source_dir as llm_source_dir
from model.mllm import FacialMLLM
from model.tokenizer import load_tokenizer
from model.video import FrameCompressor
from model.vision import build_vision_tower

if TYPE_CHECKING:
    from model.vlm.facial import VLMFacialModel


def build_model(cfg: ModelConfig, device: str = "cpu", llm_dir: str | None = None,
                vision_dir: str | None = None, tokenizer_dir: str | None = None) -> FacialMLLM | VLMFacialModel:
    """A :class:`FacialMLLM` for ``cfg`` on ``device`` (a :class:`VLMFacialModel` around the checkpoint
    at ``vlm.source`` - local, ``s3://`` or MLflow - when it is set).

    ``llm_dir`` / ``vision_dir`` / ``tokenizer_dir`` override where base weights and the
    tokenizer come from (local directories; the model-directory loader passes resolved,
    checksum-verified paths). Without them the
    config's sources are used, and parts with no source are randomly initialised from
    ``hf_config`` with ``cfg.seed``."""
    from model.model_dir import materialize

    if cfg.is_vlm:
        from model.vlm.base import open_base
        from model.vlm.facial import build_vlm_model

        return build_vlm_model(cfg, open_base(cfg.vlm.source), device=device)
    if llm_dir is None and cfg.llm.source:
        llm_dir = llm_source_dir(cfg.llm)
        llm_dir = materialize(llm_dir) if llm_dir else None
    if vision_dir is None and cfg.vision.source:
        vision_dir = materialize(cfg.vision.source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        llm = build_llm(cfg.llm, llm_dir, device=device, seed=cfg.seed)
        tokenizer = load_tokenizer(tokenizer_dir or cfg.llm.tokenizer, llm_dir)
        llm_dim = llm.get_input_embeddings().embedding_dim
        vision = build_vision_tower(cfg.vision, vision_dir)
        face_prior = build_face_prior_encoder(cfg.face_prior)
        fim = None
        if vision is not None or cfg.fim.local_clue or face_prior is not None:
            fim = FaceInfoMining(cfg.fim, llm_dim,
                                 vision_dim=vision.hidden_size if vision else None,
                                 intermediate_dim=vision.intermediate_size if vision else None,
                                 prior_dim=cfg.face_prior.dim if face_prior else None)
            fim.requires_grad_(cfg.fim.trainable)
        frames = None
        if cfg.clip.frames and vision is not None:
            frames = FrameCompressor(llm_dim)
            frames.requires_grad_(cfg.clip.trainable)
    if vision is not None:
        vision.to(resolve_dtype(cfg.llm.dtype, device))
    model = FacialMLLM(cfg, llm, tokenizer, vision=vision, face_prior=face_prior, fim=fim, frames=frames)
    model.to(device)
    model.eval()
    return model
