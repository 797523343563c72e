"""FaceConfig: defaults, dotted overrides through the project's loader, all problems at once."""

from __future__ import annotations

import pytest

from workflows.core.config import ConfigError, load_config
from workflows.faces import FaceConfig, FaceExtractor


def test_defaults_are_offline_and_private():
    cfg = FaceConfig()
    assert cfg.backend == "offline" and cfg.crop_size == 224 and cfg.attributes
    assert not any("race" in f for f in cfg.__dataclass_fields__)  # nothing to switch race on
    assert cfg.track.segment_max_frames > 0 and cfg.track.iou_threshold > 0


def test_dotted_overrides():
    cfg = load_config(FaceConfig, overrides=["crop_size=336", "attributes=false", "track.segment_max_frames=8",
                                             "au.geometry_aus=[AU06,AU09]"])
    assert cfg.crop_size == 336 and cfg.attributes is False and cfg.track.segment_max_frames == 8
    assert cfg.au.geometry_aus == ["AU06", "AU09"]


def test_every_problem_reported_by_the_extractor():
    cfg = FaceConfig(crop_size=8, backend="insightface")
    cfg.track.iou_threshold = 2.0
    cfg.au.geometry_aus = ["AU12"]
    with pytest.raises(ConfigError) as e:
        FaceExtractor(cfg)
    text = str(e.value)
    for key in ("faces.crop_size", "faces.insightface.pack", "faces.track.iou_threshold", "faces.au.geometry_aus"):
        assert key in text


def test_offline_backend_refuses_gpus():
    with pytest.raises(ConfigError, match="num_gpus"):
        load_config(FaceConfig, overrides=["num_gpus=1"])
