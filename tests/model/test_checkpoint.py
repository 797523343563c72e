"""The model directory: save -> load round trips (local, S3, MLflow), and every refusal."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from model import build_model, load_model, save_model
from model.annotator import FacialAnnotator
from model.model_dir import (
    MANIFEST,
    ArchitectureMismatchError,
    ChecksumError,
    MissingPartError,
    UnsafeCheckpointError,
)
from model.tiny import tiny_config
from tests.model.conftest import face_batch
from workflows.core.config import ConfigError


@pytest.fixture(scope="module")
def trained():
    """A tiny model whose trainable weights (LoRA B included) are no longer at their init."""
    m = build_model(tiny_config(clip_frames=2, prior_weight=0.3))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in m.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    m.cfg.generation.max_new_tokens = 6
    return m


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny"
    save_model(trained, str(out), metrics={"holdout_uar": 0.5})
    return out


def _outputs(ann: FacialAnnotator, batch: dict) -> dict:
    g = ann.config.generation
    g.enabled, g.mode = True, "all"
    try:
        return ann.annotate(batch)
    finally:
        g.enabled = False


def test_directory_layout(saved):
    manifest = json.loads((saved / MANIFEST).read_text())
    assert manifest["format"] == "mien-model" and manifest["metrics"] == {"holdout_uar": 0.5}
    assert set(manifest["parts"]) == {"face_prior", "fim", "frames", "lora"}
    assert manifest["components"]["llm"]["source"] == "bundled:base/llm"  # random base: bundled
    assert manifest["components"]["tokenizer"]["source"] == "bundled:base/tokenizer"
    files = {p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file()}
    assert {"fim.safetensors", "lora.safetensors", "base/llm/model.safetensors",
            "base/tokenizer/tokenizer.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]


def test_round_trip_gives_identical_outputs(trained, saved):
    batch = face_batch(5, seed=11)
    before = _outputs(FacialAnnotator.from_mllm(trained), batch)
    loaded = load_model(str(saved))
    assert loaded.llm_loaded  # prior_weight < 1: built at load
    assert loaded.model_id == json.loads((saved / MANIFEST).read_text())["model_id"]
    assert loaded.model_id.startswith("mien-tiny-v0+")
    after = _outputs(loaded, batch)
    np.testing.assert_array_equal(before["fe_probs"], after["fe_probs"])
    np.testing.assert_array_equal(before["au_probs"], after["au_probs"])
    assert before["description"] == after["description"]


def test_overrides_at_load_change_runtime_not_id(saved):
    from model.model_dir import base_model_id

    base = load_model(str(saved))
    gen = load_model(str(saved), overrides=["generation.enabled=true"])
    # the same scores (the hash), but rows with descriptions say so
    assert gen.config.generation.enabled and gen.model_id == f"{base.model_id}+describe:per_track/6tok"
    assert base_model_id(gen.model_id) == base.model_id
    mixed = load_model(str(saved), overrides={"prior_weight": 0.9})
    assert mixed.model_id != base.model_id
    with pytest.raises(ConfigError, match="generation.enabeld"):
        load_model(str(saved), overrides=["generation.enabeld=true"])


def _copy(saved: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(saved, dst)
    return dst


def test_missing_part_is_named(saved, tmp_path):
    d = _copy(saved, tmp_path)
    (d / "fim.safetensors").unlink()
    with pytest.raises(MissingPartError, match="part 'fim': fim.safetensors is missing"):
        load_model(str(d))


def test_checksum_mismatch_is_named(saved, tmp_path):
    d = _copy(saved, tmp_path)
    data = bytearray((d / "lora.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (d / "lora.safetensors").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="part 'lora'"):
        load_model(str(d))


def test_bundled_base_checksum_is_verified(saved, tmp_path):
    d = _copy(saved, tmp_path)
    cfg_file = d / "base" / "llm" / "config.json"
    cfg_file.write_text(cfg_file.read_text().replace('"hidden_act"', '"hidden_act" ', 1))
    with pytest.raises(ChecksumError, match="component 'llm'"):
        load_model(str(d))


def test_architecture_mismatch_is_named(saved, tmp_path):
    d = _copy(saved, tmp_path)
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["architecture"]["fim"]["dim"] = 48
    (d / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArchitectureMismatchError, match="part 'face_prior'|part 'fim'"):
        load_model(str(d))
    manifest["architecture"]["fim"]["dim"] = 32
    manifest["architecture"]["llm"]["lora"]["r"] = 8
    (d / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArchitectureMismatchError, match="part 'lora'.*shape"):
        load_model(str(d))


class _Boom:
    """Unpickling this writes a marker file: proof that something unpickled it."""

    marker = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled"))


def test_pickles_are_refused_never_loaded(saved, tmp_path):
    boom = _Boom()
    boom.marker = str(tmp_path / "UNPICKLED")
    payload = pickle.dumps(boom)
    (tmp_path / "model.pt").write_bytes(payload)
    with pytest.raises(UnsafeCheckpointError, match="never unpickles"):
        load_model(str(tmp_path / "model.pt"))
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin"):
        load_model(str(hf_dir))
    d = _copy(saved, tmp_path)
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["parts"]["fim"]["file"] = "fim.pt"
    (d / "fim.pt").write_bytes(payload)
    (d / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UnsafeCheckpointError):
        load_model(str(d))
    assert not (tmp_path / "UNPICKLED").exists()


def test_not_a_model_directory(tmp_path):
    with pytest.raises(MissingPartError, match="no mien_model.json"):
        load_model(str(tmp_path))
    with pytest.raises(MissingPartError, match="not found"):
        load_model(str(tmp_path / "nowhere"))


def test_s3_round_trip(trained, saved, s3_bucket):
    uri = f"{s3_bucket}/models/tiny"
    model_id = save_model(trained, uri)
    assert model_id == json.loads((saved / MANIFEST).read_text())["model_id"]
    loaded = load_model(uri)
    batch = face_batch(3, seed=2)
    np.testing.assert_array_equal(FacialAnnotator.from_mllm(trained).annotate(batch)["fe_probs"],
                                  loaded.annotate(batch)["fe_probs"])


def test_mlflow_models_alias_round_trip(saved, tmp_path, monkeypatch):
    import mlflow

    from workflows.core.tracking import Tracker

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    mlflow.set_tracking_uri(tracking)
    with Tracker.start(tracking, "mien-model-test", artifact_location=str(tmp_path / "artifacts")) as run:
        uri = run.log_model_dir(str(saved), registered_model_name="mien-tiny", alias="champion").uri
    assert uri == "models:/mien-tiny@champion"
    loaded = load_model(uri)
    assert loaded.model_id == json.loads((saved / MANIFEST).read_text())["model_id"]
    # an earlier job in the same process pointed MLflow's global URI elsewhere, then the user set
    # MLFLOW_TRACKING_URI: the environment wins (DESIGN.md section 6)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'other.db'}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    assert load_model(uri).model_id == loaded.model_id
    mlflow.set_tracking_uri(tracking)
