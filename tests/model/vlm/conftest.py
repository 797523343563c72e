"""Fixtures for the pretrained-VLM tests: tiny random checkpoints of each HF family, built offline."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_vlms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{family: checkpoint dir}`` for every family of ``model.vlm.tiny.TINY_FAMILIES`` (seed 0),
    built once per session; load with ``AutoModelForImageTextToText.from_pretrained(dir)`` and
    ``model.vlm.processors.load_processor(dir)``. Treat the directories as read-only."""
    from model.vlm.tiny import TINY_FAMILIES, build_tiny_vlm

    root = tmp_path_factory.mktemp("tiny_vlms")
    return {family: build_tiny_vlm(family, root / family) for family in TINY_FAMILIES}
