"""Vision tower: any HF CLIP / SigLIP vision encoder, frozen, multi-layer features.

FEALLM feeds its projector two views of the encoder: the last layer ``F_s`` and the
concatenation of several intermediate layers ``F_L``. :class:`VisionTower` returns both
(patch tokens only; CLIP's class token becomes the global ``pooled`` feature).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from model.config import VisionConfig


@dataclasses.dataclass
class VisionFeatures:
    """``last``: (B, N, Dv) last-layer patch tokens; ``intermediate``: (B, N, Dv * L) the
    concatenated intermediate layers; ``pooled``: (B, Dv) a global face feature; ``grid``: the
    patch grid side (N = grid**2)."""

    last: torch.Tensor
    intermediate: torch.Tensor
    pooled: torch.Tensor
    grid: int


class VisionTower(nn.Module):
    """Wraps an HF vision model. Input: (B, 3, H, W) pixels normalised by :meth:`preprocess`."""

    def __init__(self, encoder: nn.Module, cfg: VisionConfig):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        ecfg = encoder.config
        self.hidden_size: int = ecfg.hidden_size
        self.image_size: int = ecfg.image_size
        self.grid: int = ecfg.image_size // ecfg.patch_size
        self.num_layers: int = ecfg.num_hidden_layers
        self.has_cls: bool = ecfg.model_type.startswith("clip")
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)
        for idx in cfg.intermediate_layers:
            if not -self.num_layers <= idx < self.num_layers:
                raise ValueError(f"vision.intermediate_layers: {idx} is outside the encoder's "
                                 f"{self.num_layers} layers")

    @property
    def intermediate_size(self) -> int:
        return self.hidden_size * len(self.cfg.intermediate_layers)

    def preprocess(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) uint8 RGB -> (B, 3, image_size, image_size) normalised float."""
        x = crops.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                          align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def forward(self, pixels: torch.Tensor) -> VisionFeatures:
        grad = self.cfg.trainable and self.training
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            dtype = next(self.encoder.parameters()).dtype
            out = self.encoder(pixel_values=pixels.to(dtype), output_hidden_states=True)
        hidden = out.hidden_states  # embeddings + one per layer
        start = 1 if self.has_cls else 0
        last = out.last_hidden_state[:, start:]
        inter = torch.cat([hidden[i if i < 0 else i + 1][:, start:] for i in self.cfg.intermediate_layers], dim=-1)
        pooled = out.pooler_output if out.pooler_output is not None else last.mean(1)
        n = last.shape[1]
        grid = math.isqrt(n)
        return VisionFeatures(last=last, intermediate=inter, pooled=pooled, grid=grid)


def build_vision_tower(cfg: VisionConfig, source_dir: str | None = None) -> VisionTower | None:
    """A frozen :class:`VisionTower` from ``source_dir`` (HF directory, safetensors only) or
    from ``cfg.hf_config`` with random weights; None when the tower is disabled."""
    if not cfg.enabled:
        return None
    from transformers import AutoConfig, AutoModel

    if source_dir:
        hf_cfg = AutoConfig.from_pretrained(source_dir, local_files_only=True)
        vision_cfg = getattr(hf_cfg, "vision_config", None) or hf_cfg
        cls = AutoModel._model_mapping[type(vision_cfg)]  # the class without building random weights
        encoder = cls.from_pretrained(source_dir, config=vision_cfg, use_safetensors=True, local_files_only=True)
    else:
        kwargs = dict(cfg.hf_config)
        encoder = AutoModel.from_config(AutoConfig.for_model(kwargs.pop("model_type"), **kwargs))
    tower = VisionTower(encoder, cfg)
    tower.requires_grad_(cfg.trainable)
    if not cfg.trainable:
        tower.eval()
    return tower
