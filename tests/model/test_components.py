"""Each component on its own: shapes, frozen/trainable flags, factories, masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import FacePriorConfig, FIMConfig, VisionConfig
from model.face_prior import FacePriorEncoder, prior_arrays
from model.fim import (
    FaceInfoMining,
    LocalClueAggregator,
    MultiPerspectiveProjector,
    PriorQFormer,
    build_projector,
)
from model.tiny import tiny_vision_config
from model.video import FrameCompressor, clip_indices
from model.vision import build_vision_tower
from tests.model.conftest import face_batch


@pytest.mark.parametrize("kind,has_cls", [("clip", True), ("siglip", False)])
def test_vision_tower_multi_layer_features_and_frozen(kind, has_cls):
    cfg = VisionConfig(enabled=True, hf_config=tiny_vision_config(kind), intermediate_layers=[-3, -2])
    tower = build_vision_tower(cfg)
    assert tower.has_cls is has_cls
    assert not any(p.requires_grad for p in tower.parameters())
    crops = torch.from_numpy(face_batch(3, size=48)["crop"])
    pixels = tower.preprocess(crops)
    assert pixels.shape == (3, 3, 32, 32)
    with torch.enable_grad():
        feats = tower(pixels)
    assert feats.last.shape == (3, 16, 32)  # 4x4 patches, class token dropped
    assert feats.intermediate.shape == (3, 16, 64)  # two layers concatenated
    assert feats.pooled.shape == (3, 32) and feats.grid == 4
    assert not feats.last.requires_grad  # frozen tower runs without autograd


def test_vision_tower_rejects_layer_out_of_range():
    cfg = VisionConfig(enabled=True, hf_config=tiny_vision_config(), intermediate_layers=[-9])
    with pytest.raises(ValueError, match="intermediate_layers"):
        build_vision_tower(cfg)


def test_local_clue_aggregator_16_regions_each_own_conv():
    cfg = FIMConfig(dim=32, heads=4, regions=16, region_size=8)
    lca = LocalClueAggregator(cfg)
    conv = lca.conv[0]
    assert conv.groups == 16 and conv.in_channels == 48  # one conv block per region
    local, summary = lca(torch.randn(2, 3, 40, 40))
    assert local.shape == (2, 16, 32) and summary.shape == (2, 1, 32)
    # a change inside one region moves that region's feature before attention mixes them
    x = torch.randn(1, 3, 32, 32)
    y = x.clone()
    y[:, :, :8, :8] += 5.0  # region 0 of the 4x4 grid
    feats = [lca.conv(lca_regions(lca, t)).flatten(1).view(16, -1) for t in (x, y)]
    changed = (feats[0] - feats[1]).abs().sum(1) > 1e-6
    assert changed[0] and not changed[1:].any()


def lca_regions(lca: LocalClueAggregator, pixels: torch.Tensor) -> torch.Tensor:
    b, s = pixels.shape[0], lca.region_size
    x = torch.nn.functional.interpolate(pixels, size=(lca.side * s, lca.side * s), mode="bilinear")
    x = x.view(b, 3, lca.side, s, lca.side, s).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, lca.regions * 3, s, s)


def test_multi_perspective_projector_attends_to_layers_and_local():
    from model.vision import VisionFeatures

    cfg = FIMConfig(dim=32, heads=4, num_visual_tokens=4)
    proj = build_projector("multi_perspective", 24, 48, cfg, llm_dim=64)
    assert isinstance(proj, MultiPerspectiveProjector)
    feats = VisionFeatures(last=torch.randn(2, 16, 24), intermediate=torch.randn(2, 16, 48),
                           pooled=torch.randn(2, 24), grid=4)
    local = torch.randn(2, 16, 32)
    out = proj(feats, local)
    assert out.shape == (2, 4, 64)  # pooled from 16 patches to 4 tokens
    assert not torch.allclose(out, proj(feats, local + 1.0))  # local features matter
    changed = VisionFeatures(feats.last, feats.intermediate + 1.0, feats.pooled, 4)
    assert not torch.allclose(out, proj(changed, local))  # intermediate layers matter


def test_projector_factory_rejects_unknown():
    with pytest.raises(ValueError, match="unknown projector 'qformer9'.*multi_perspective"):
        build_projector("qformer9", 8, 8, FIMConfig(), 16)


def test_face_prior_encoder_masks_unavailable_groups():
    cfg = FacePriorConfig(enabled=True, dim=16)
    enc = FacePriorEncoder(cfg)
    batch = face_batch(3)
    batch["fe_prior"][1] = np.nan  # expression classifier failed on face 1
    batch["age"][:] = np.nan
    batch["gender"] = [None, None, None]
    feats = {k: torch.from_numpy(v) for k, v in prior_arrays(batch, enc.names, 3).items()}
    tokens, present = enc(feats)
    assert tokens.shape == (3, len(cfg.inputs), 16) and torch.isfinite(tokens).all()
    names = enc.names
    assert present[:, names.index("au_evidence")].all()
    assert present[:, names.index("fe_prior")].tolist() == [True, False, True]
    assert not present[:, names.index("age_gender")].any()


def test_prior_qformer_survives_rows_without_any_memory():
    cfg = FIMConfig(dim=32, heads=4, prior_queries=3)
    qf = PriorQFormer(cfg, llm_dim=48)
    memory = torch.randn(2, 5, 32)
    mask = torch.tensor([[True] * 5, [False] * 5])
    out = qf(memory, mask)
    assert out.shape == (2, 3, 48) and torch.isfinite(out).all()


def test_face_info_mining_token_layout():
    cfg = FIMConfig(dim=32, heads=4, num_visual_tokens=4, prior_queries=2)
    fim = FaceInfoMining(cfg, llm_dim=64, vision_dim=None, intermediate_dim=None, prior_dim=16)
    out = fim(None, torch.randn(2, 3, 32, 32), torch.randn(2, 4, 16), torch.ones(2, 4, dtype=torch.bool), 2)
    assert out.patches is None and out.extra.shape == (2, 1 + 2, 64)  # local-clue token + 2 queries


def test_frame_compressor_and_clip_indices():
    fc = FrameCompressor(64)
    assert fc(torch.randn(5, 9, 64)).shape == (5, 2, 64)
    idx = clip_indices(np.array([7, 7, 7, 9, 7]), frames=3)
    assert idx[0].tolist() == [0, 2, 4] and idx[4].tolist() == [0, 2, 4]  # spread over track 7
    assert idx[3].tolist() == [3, 3, 3]  # a one-face segment repeats its only frame
