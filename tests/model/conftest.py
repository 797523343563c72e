"""Fixtures for the model tests: tiny random MLLMs (no downloads) and synthetic face batches."""

from __future__ import annotations

import numpy as np
import pytest

from model.taxonomy import AU_INDEX, AU_NAMES, FE_BASIC


def face_batch(rows: int = 5, seed: int = 0, size: int = 32, tracks: list[int] | None = None) -> dict:
    """An annotate-style batch with random crops, evidence and a facex-like FE prior."""
    rng = np.random.default_rng(seed)
    au = rng.random((rows, len(AU_NAMES))).astype(np.float32) * 0.6
    au[:, AU_INDEX["AU09"]] = np.nan  # unavailable, like MediaPipe's dead noseSneer
    return {
        "crop": rng.integers(0, 255, (rows, size, size, 3), dtype=np.uint8),
        "au_evidence": au,
        "fe_prior": rng.dirichlet(np.ones(len(FE_BASIC)), rows).astype(np.float32),
        "age": np.where(np.arange(rows) % 3 == 1, np.nan, 20 + 7 * np.arange(rows)).astype(np.float32),
        "gender": [("female", None, "male")[i % 3] for i in range(rows)],
        "track_key": np.asarray(tracks if tracks is not None else np.arange(rows) // 2, dtype=np.int64),
        "blendshapes": rng.random((rows, 52)).astype(np.float32),
        "pose": rng.normal(0, 10, (rows, 3)).astype(np.float32),
    }


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """Tiny models are all overhead: one intra-op thread is ~10x faster than two on a busy CPU
    (OpenMP threads spin against other processes). Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def batch() -> dict:
    return face_batch()


@pytest.fixture(scope="module")
def tiny_mllm():
    """A tiny CLIP + Llama + LoRA MLLM with every part enabled (built once per module)."""
    from model import build_model
    from model.tiny import tiny_config

    return build_model(tiny_config())
