"""Every shipped annotate config loads and validates, and starts with the command that runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

ANNOTATE = sorted((Path(__file__).resolve().parents[2] / "jobs" / "configs" / "annotate").glob("*.yaml"))
MODEL = sorted((Path(__file__).resolve().parents[2] / "jobs" / "configs" / "model").glob("*.yaml"))


def test_there_are_annotate_configs():
    assert {p.name for p in ANNOTATE} >= {"default.yaml", "gpu_cluster.yaml", "gpu_vlm.yaml"}


@pytest.mark.parametrize("path", ANNOTATE, ids=lambda p: p.name)
def test_annotate_config_validates(path):
    from workflows.annotate.pipeline import AnnotateConfig
    from workflows.core.config import load_config

    cfg = load_config(AnnotateConfig, str(path))
    assert cfg.decode.policy() is not None


@pytest.mark.parametrize("path", [p for p in MODEL if "\nvlm:" in p.read_text()], ids=lambda p: p.name)
def test_vlm_model_configs_name_their_command_and_a_vlm_base(path):
    from model.config import load_model_config

    text = path.read_text()
    assert any(line.lstrip("# ").startswith("mien ") for line in text.splitlines()[:12])
    cfg = load_model_config(str(path))
    assert cfg.is_vlm and cfg.vlm.dtype == "bfloat16"
