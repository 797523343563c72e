"""Clip input, LLaMA-VID style: every frame of a track segment becomes two LLM tokens.

LLaMA-VID represents a frame by a *context* token (the frame's visual tokens pooled by an
attention query) and a *content* token (their average), so a clip of K frames costs 2K
tokens instead of K * N. Here the query is learned (LLaMA-VID derives it from the
instruction; ours is a fixed task). :func:`clip_indices` picks the K frames of each face's
track segment from the rows of a batch, so no frame is encoded twice.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class FrameCompressor(nn.Module):
    """(F, N, d) per-frame visual tokens -> (F, 2, d) [context, content] tokens."""

    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.query, std=dim ** -0.5)
        self.key = nn.Linear(dim, dim, bias=False)
        self.context_out = nn.Linear(dim, dim)
        self.content_out = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.to(self.key.weight.dtype)
        attn = torch.softmax((self.query @ self.key(x).transpose(1, 2)) / x.shape[-1] ** 0.5, dim=-1)
        context = self.context_out(attn @ x)
        content = self.content_out(x.mean(dim=1, keepdim=True))
        return torch.cat([context, content], dim=1)


def clip_indices(track_key: np.ndarray, frames: int) -> np.ndarray:
    """(B,) track keys -> (B, K) row indices: K frames spread evenly over the rows of each
    face's track segment (in row order, repeated when the segment has fewer rows)."""
    keys = np.asarray(track_key).reshape(-1)
    out = np.zeros((len(keys), frames), dtype=np.int64)
    for key in np.unique(keys):
        rows = np.flatnonzero(keys == key)
        pick = rows[np.linspace(0, len(rows) - 1, frames).round().astype(np.int64)]
        out[rows] = pick
    return out
