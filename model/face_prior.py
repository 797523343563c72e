"""Face-prior encoder: features from the face-analysis network -> one token per input group.

EMO-LLaMA conditions its LLM on facial priors from a pretrained face-analysis network.
Here the priors are whatever the face stage measured: AU evidence (per-track normalised,
NaN = unavailable), the expression classifier's FE probabilities, blendshapes, head pose,
age/gender, 5-point landmarks and an identity embedding. Every group is encoded from its
values *and* an availability mask, so "not measured" never looks like "zero".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from model.config import PRIOR_INPUT_DIMS, FacePriorConfig


def _as_array(x: Any, rows: int, width: int) -> np.ndarray:
    if x is None:
        return np.full((rows, width), np.nan, dtype=np.float32)
    a = np.asarray(x, dtype=np.float32).reshape(rows, -1)
    if a.shape[1] != width:
        raise ValueError(f"expected {width} values per face, got {a.shape[1]}")
    return a


def _gender_code(g: Any) -> tuple[float, float]:
    s = str(g).strip().lower() if g is not None else ""
    if s in ("f", "female", "woman"):
        return 1.0, 0.0
    if s in ("m", "male", "man"):
        return 0.0, 1.0
    return float("nan"), float("nan")


def prior_arrays(batch: Mapping[str, Any], names: list[str], rows: int) -> dict[str, np.ndarray]:
    """(B, D) float32 arrays per prior group, NaN where unavailable, scaled to about [-1, 1]."""
    out: dict[str, np.ndarray] = {}
    for name in names:
        width = PRIOR_INPUT_DIMS[name]
        if name == "age_gender":
            age = _as_array(batch.get("age"), rows, 1)[:, 0] / 100.0
            genders = batch.get("gender") or [None] * rows
            codes = np.array([_gender_code(g) for g in genders], dtype=np.float32).reshape(rows, 2)
            out[name] = np.concatenate([age[:, None], codes], axis=1)
        elif name == "pose":
            out[name] = _as_array(batch.get("pose"), rows, width) / 90.0  # degrees
        else:
            out[name] = _as_array(batch.get(name), rows, width)
    return out


class FacePriorEncoder(nn.Module):
    """Per group: MLP([values, mask]) + a learned type embedding -> (B, G, dim) tokens.

    ``forward`` takes ``{group: (B, D) float tensor with NaN}`` and returns ``(tokens, present)``
    with ``present`` (B, G) bool: whether any value of the group was measured."""

    def __init__(self, cfg: FacePriorConfig):
        super().__init__()
        self.cfg = cfg
        self.names = list(cfg.inputs)
        self.mlps = nn.ModuleDict({
            n: nn.Sequential(nn.Linear(2 * PRIOR_INPUT_DIMS[n], cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim))
            for n in self.names
        })
        self.type_embedding = nn.Parameter(torch.zeros(len(self.names), cfg.dim))
        nn.init.normal_(self.type_embedding, std=0.02)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, present = [], []
        for i, name in enumerate(self.names):
            x = features[name]
            mask = torch.isfinite(x)
            x = torch.where(mask, x, torch.zeros_like(x)).clamp(-10, 10)
            mlp = self.mlps[name]
            inp = torch.cat([x, mask.to(x.dtype)], dim=-1).to(mlp[0].weight.dtype)
            tokens.append(mlp(inp) + self.type_embedding[i])
            present.append(mask.any(dim=-1))
        return self.norm(torch.stack(tokens, dim=1)), torch.stack(present, dim=1)


def build_face_prior_encoder(cfg: FacePriorConfig) -> FacePriorEncoder | None:
    if not cfg.enabled:
        return None
    enc = FacePriorEncoder(cfg)
    enc.requires_grad_(cfg.trainable)
    return enc
