"""Face Info Mining: turns vision features, face pixels and face-prior tokens into LLM tokens.

* :class:`LocalClueAggregator` (FEALLM): the aligned crop is cut into a grid of local regions
  (16 = 4x4), each goes through its own conv block (a grouped convolution runs all regions
  at once), self-attention relates the regions, and an attention-pooled summary becomes one
  extra LLM token.
* :class:`MultiPerspectiveProjector` (FEALLM): last-layer patch queries cross-attend to the
  concatenated intermediate layers, then to the local features, then self-attention and an
  MLP into the LLM's embedding space. ``build_projector`` also offers LLaVA's ``mlp`` and
  ``linear`` projectors.
* :class:`PriorQFormer` (EMO-LLaMA): a few learned queries aggregate the face-prior tokens,
  the global face token and the local tokens, Q-Former style, into a few LLM tokens.

:class:`FaceInfoMining` composes whichever of these the config enables and returns the
face's tokens in LLM space: ``[patch tokens][local-clue token][prior query tokens]``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from model.config import FIMConfig
from model.vision import VisionFeatures


class _CrossBlock(nn.Module):
    """Pre-norm residual attention of ``x`` over ``memory`` (self-attention when memory is None)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        q = self.norm_q(x)
        kv = q if memory is None else self.norm_kv(memory)
        pad = None if memory_mask is None else ~memory_mask
        out, _ = self.attn(q, kv, kv, key_padding_mask=pad, need_weights=False)
        return x + out


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, mult * dim), nn.GELU(), nn.Linear(mult * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class LocalClueAggregator(nn.Module):
    """(B, 3, H, W) normalised pixels -> local features (B, R, dim) and one summary (B, 1, dim)."""

    def __init__(self, cfg: FIMConfig, channels: int = 32):
        super().__init__()
        self.side = math.isqrt(cfg.regions)
        self.regions = cfg.regions
        self.region_size = cfg.region_size
        r, c = cfg.regions, channels
        # groups=R gives every region its own conv weights in one call.
        self.conv = nn.Sequential(
            nn.Conv2d(3 * r, c * r, 3, stride=2, padding=1, groups=r), nn.GELU(),
            nn.Conv2d(c * r, c * r, 3, stride=2, padding=1, groups=r), nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.channels = c
        self.proj = nn.Linear(c, cfg.dim)
        self.position = nn.Parameter(torch.zeros(1, r, cfg.dim))
        nn.init.normal_(self.position, std=0.02)
        self.self_attn = _CrossBlock(cfg.dim, cfg.heads)
        self.ffn = _FeedForward(cfg.dim)
        self.summary_query = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        nn.init.normal_(self.summary_query, std=0.02)
        self.summary = _CrossBlock(cfg.dim, cfg.heads)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = pixels.shape[0]
        size = self.side * self.region_size
        x = nn.functional.interpolate(pixels.float(), size=(size, size), mode="bilinear", align_corners=False)
        # (B, 3, g*s, g*s) -> (B, g*g*3, s, s): region-major channel blocks.
        x = x.view(b, 3, self.side, self.region_size, self.side, self.region_size)
        x = x.permute(0, 2, 4, 1, 3, 5).reshape(b, self.regions * 3, self.region_size, self.region_size)
        x = x.to(self.proj.weight.dtype)
        feats = self.conv(x).view(b, self.regions, self.channels)
        local = self.proj(feats) + self.position
        local = self.ffn(self.self_attn(local))
        summary = self.summary(self.summary_query.expand(b, -1, -1), local)
        return local, summary


def _pool_grid(x: torch.Tensor, grid: int, out_tokens: int) -> torch.Tensor:
    """(B, grid*grid, D) -> (B, out_tokens, D) by average pooling on the patch grid."""
    if not out_tokens or out_tokens == x.shape[1]:
        return x
    side = math.isqrt(out_tokens)
    b, _, d = x.shape
    img = x.transpose(1, 2).reshape(b, d, grid, grid)
    return nn.functional.adaptive_avg_pool2d(img, side).flatten(2).transpose(1, 2)


class MultiPerspectiveProjector(nn.Module):
    """FEALLM projector: (B, N, Dv) last layer + (B, N, Dv*L) intermediate (+ (B, R, dim)
    local features) -> (B, N', d_llm)."""

    def __init__(self, vision_dim: int, intermediate_dim: int, cfg: FIMConfig, llm_dim: int):
        super().__init__()
        self.num_tokens = cfg.num_visual_tokens
        self.q_in = nn.Linear(vision_dim, cfg.dim)
        self.kv_in = nn.Linear(intermediate_dim, cfg.dim)
        self.to_intermediate = _CrossBlock(cfg.dim, cfg.heads)
        self.to_local = _CrossBlock(cfg.dim, cfg.heads) if cfg.local_clue else None
        self.self_attn = _CrossBlock(cfg.dim, cfg.heads)
        self.ffn = _FeedForward(cfg.dim)
        self.out = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, llm_dim), nn.GELU(),
                                 nn.Linear(llm_dim, llm_dim))

    def forward(self, feats: VisionFeatures, local: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.q_in.weight.dtype
        q = self.q_in(_pool_grid(feats.last, feats.grid, self.num_tokens).to(dtype))
        kv = self.kv_in(_pool_grid(feats.intermediate, feats.grid, self.num_tokens).to(dtype))
        q = self.to_intermediate(q, kv)
        if self.to_local is not None and local is not None:
            q = self.to_local(q, local)
        return self.out(self.ffn(self.self_attn(q)))


class MLPProjector(nn.Module):
    """LLaVA's ``mlp2x_gelu`` on the last layer: (B, N, Dv) -> (B, N', d_llm)."""

    def __init__(self, vision_dim: int, intermediate_dim: int, cfg: FIMConfig, llm_dim: int):
        super().__init__()
        self.num_tokens = cfg.num_visual_tokens
        self.net = nn.Sequential(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))

    def forward(self, feats: VisionFeatures, local: torch.Tensor | None = None) -> torch.Tensor:
        x = _pool_grid(feats.last, feats.grid, self.num_tokens)
        return self.net(x.to(self.net[0].weight.dtype))


class LinearProjector(MLPProjector):
    """LLaVA-1's single linear layer."""

    def __init__(self, vision_dim: int, intermediate_dim: int, cfg: FIMConfig, llm_dim: int):
        nn.Module.__init__(self)
        self.num_tokens = cfg.num_visual_tokens
        self.net = nn.Sequential(nn.Linear(vision_dim, llm_dim))


PROJECTORS: dict[str, type[nn.Module]] = {
    "multi_perspective": MultiPerspectiveProjector,
    "mlp": MLPProjector,
    "linear": LinearProjector,
}


def build_projector(kind: str, vision_dim: int, intermediate_dim: int, cfg: FIMConfig, llm_dim: int) -> nn.Module:
    """Projector by name; raises ValueError naming the known kinds for an unknown one."""
    if kind not in PROJECTORS:
        raise ValueError(f"fim.projector: unknown projector {kind!r}; known: {', '.join(PROJECTORS)}")
    return PROJECTORS[kind](vision_dim, intermediate_dim, cfg, llm_dim)


class PriorQFormer(nn.Module):
    """``n`` learned queries attend to a memory of prior/global/local tokens -> (B, n, d_llm)."""

    def __init__(self, cfg: FIMConfig, llm_dim: int):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(1, cfg.prior_queries, cfg.dim))
        nn.init.normal_(self.queries, std=0.02)
        # Always-present memory slot: rows with no measured prior and no image stay finite.
        self.null_memory = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.layers = nn.ModuleList()
        for _ in range(cfg.qformer_layers):
            self.layers.append(nn.ModuleList([_CrossBlock(cfg.dim, cfg.heads), _CrossBlock(cfg.dim, cfg.heads),
                                              _FeedForward(cfg.dim)]))
        self.out = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, llm_dim))

    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        b = memory.shape[0]
        memory = torch.cat([self.null_memory.expand(b, -1, -1).to(memory.dtype), memory], dim=1)
        memory_mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=memory.device), memory_mask], dim=1)
        q = self.queries.expand(b, -1, -1)
        for self_attn, cross, ffn in self.layers:
            q = ffn(cross(self_attn(q), memory, memory_mask))
        return self.out(q)


@dataclasses.dataclass
class FaceTokens:
    """``patches``: (B, N', d_llm) projected patch tokens or None; ``extra``: (B, E, d_llm) the
    local-clue token and prior query tokens (E may be 0)."""

    patches: torch.Tensor | None
    extra: torch.Tensor

    def all(self) -> torch.Tensor:
        return self.extra if self.patches is None else torch.cat([self.patches, self.extra], dim=1)


class FaceInfoMining(nn.Module):
    """Composition of the local-clue aggregator, the projector and the prior Q-Former."""

    def __init__(self, cfg: FIMConfig, llm_dim: int, vision_dim: int | None, intermediate_dim: int | None,
                 prior_dim: int | None):
        super().__init__()
        self.cfg = cfg
        self.llm_dim = llm_dim
        self.local_clue = LocalClueAggregator(cfg) if cfg.local_clue else None
        self.local_token = nn.Linear(cfg.dim, llm_dim) if cfg.local_clue else None
        self.projector = (build_projector(cfg.projector, vision_dim, intermediate_dim, cfg, llm_dim)
                          if vision_dim else None)
        use_qformer = cfg.prior_queries > 0 and (prior_dim or vision_dim or cfg.local_clue)
        self.qformer = PriorQFormer(cfg, llm_dim) if use_qformer else None
        self.prior_in = nn.Linear(prior_dim, cfg.dim) if (use_qformer and prior_dim) else None
        self.global_in = nn.Linear(vision_dim, cfg.dim) if (use_qformer and vision_dim) else None
        self.register_buffer("_probe", torch.zeros(0), persistent=False)  # device/dtype of the module

    @property
    def num_tokens_extra(self) -> int:
        return (1 if self.local_clue is not None else 0) + (self.cfg.prior_queries if self.qformer is not None else 0)

    def forward(self, vision: VisionFeatures | None, pixels: torch.Tensor | None,
                prior_tokens: torch.Tensor | None, prior_present: torch.Tensor | None, batch: int) -> FaceTokens:
        extra: list[torch.Tensor] = []
        memory: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        local = None
        if self.local_clue is not None and pixels is not None:
            local, summary = self.local_clue(pixels)
            extra.append(self.local_token(summary))
            memory.append(local)
            masks.append(torch.ones(local.shape[:2], dtype=torch.bool, device=local.device))
        patches = self.projector(vision, local) if (self.projector is not None and vision is not None) else None
        if self.qformer is not None:
            if self.prior_in is not None and prior_tokens is not None:
                memory.append(self.prior_in(prior_tokens))
                masks.append(prior_present)
            if self.global_in is not None and vision is not None:
                memory.append(self.global_in(vision.pooled.to(self.global_in.weight.dtype)).unsqueeze(1))
                masks.append(torch.ones(batch, 1, dtype=torch.bool, device=memory[-1].device))
            ref = self.qformer.queries
            mem = torch.cat(memory, 1) if memory else ref.new_zeros(batch, 0, ref.shape[-1])
            mask = torch.cat(masks, 1) if masks else torch.zeros(batch, 0, dtype=torch.bool, device=ref.device)
            extra.append(self.qformer(mem, mask))
        if not extra:
            return FaceTokens(patches=patches, extra=self._probe.new_zeros(batch, 0, self.llm_dim))
        return FaceTokens(patches=patches, extra=torch.cat(extra, dim=1))
