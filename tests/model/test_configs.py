"""Every shipped model config loads and validates; bad configs list every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.config import config_from_dict, load_model_config
from model.tiny import tiny_config, tiny_config_dict
from model.tokenizer import builtin_vocabulary
from workflows.core.config import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "jobs" / "configs" / "model").glob("*.yaml"))


def test_there_are_model_configs():
    assert {p.name for p in CONFIGS} >= {"tiny_cpu.yaml", "default_offline.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path):
    cfg = load_model_config(str(path))
    assert cfg.name and cfg.version


def test_tiny_yaml_matches_the_tiny_builder():
    from workflows.core.config import to_dict

    yaml_cfg = load_model_config(str(CONFIGS[[p.name for p in CONFIGS].index("tiny_cpu.yaml")]))
    assert to_dict(yaml_cfg) == to_dict(tiny_config())
    assert yaml_cfg.llm.hf_config["vocab_size"] == len(builtin_vocabulary())


def test_default_yaml_is_the_embedded_default():
    from model.default import default_config
    from workflows.core.config import to_dict

    path = CONFIGS[[p.name for p in CONFIGS].index("default_offline.yaml")]
    assert to_dict(load_model_config(str(path))) == to_dict(default_config())


def test_every_problem_is_reported_with_its_key():
    data = tiny_config_dict()
    data["prior_weight"] = 1.5
    data["fim"]["regions"] = 15
    data["generation"]["fraction"] = 2.0
    data["face_prior"]["inputs"] = ["au_evidence", "race"]
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    text = str(err.value)
    for key in ("prior_weight", "fim.regions", "generation.fraction", "face_prior.inputs"):
        assert key in text
    data = tiny_config_dict()
    data["llm"]["lora"]["rank"] = 8
    with pytest.raises(ConfigError, match="llm.lora.rank: unknown key"):
        config_from_dict(data)
