"""Model directories from untrusted places: pickles are refused, never unpickled; checksums are
enforced; only safetensors load. Uses the tiny architecture of ``model/tiny.py`` (no downloads)."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.conftest import ROOT

pytestmark = pytest.mark.timeout(300)


class _Payload:
    """Unpickling this creates ``path``: the proof that something unpickled the file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps({"weight": [0.0] * 8, "payload": _Payload(str(marker))})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model saved as a model directory: ``(dir, model_id)``."""
    from model import build_model, save_model
    from model.tiny import tiny_config

    d = tmp_path_factory.mktemp("models") / "tiny"
    model_id = save_model(build_model(tiny_config()), str(d))
    return d, model_id


@pytest.fixture
def model_copy(saved, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(saved[0], d)
    return d


def _manifest(d: Path) -> dict:
    return json.loads((d / "mien_model.json").read_text())


def _write_manifest(d: Path, m: dict) -> None:
    (d / "mien_model.json").write_text(json.dumps(m, indent=2, sort_keys=True))


def _load(d: Path | str):
    from model import load_model

    return load_model(str(d))


def test_safetensors_directory_loads(saved):
    d, model_id = saved
    files = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    assert all(f.endswith((".safetensors", ".json")) for f in files), files
    m = _load(d)
    assert m.model_id == model_id
    _ = m.mllm  # the trained parts and the bundled base weights are really loaded


def test_pickle_only_directory_is_refused(tmp_path):
    from model.model_dir import UnsafeCheckpointError

    marker = tmp_path / "PWNED"
    d = tmp_path / "hf_style"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(_pickle_bytes(marker))
    (d / "config.json").write_text("{}")
    with pytest.raises(UnsafeCheckpointError, match="never unpickles"):
        _load(d)
    with pytest.raises(UnsafeCheckpointError, match="pickled checkpoint"):
        _load(d / "pytorch_model.bin")
    assert not marker.exists()


def test_manifest_part_that_is_a_pickle_is_refused(model_copy, tmp_path):
    from model.model_dir import UnsafeCheckpointError, sha256_bytes

    marker = tmp_path / "PWNED"
    data = _pickle_bytes(marker)
    (model_copy / "fim.bin").write_bytes(data)
    m = _manifest(model_copy)
    m["parts"]["fim"].update(file="fim.bin", sha256=sha256_bytes(data))  # a consistent, signed-off lie
    _write_manifest(model_copy, m)
    with pytest.raises(UnsafeCheckpointError, match="pickled checkpoint"):
        _load(model_copy)
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_is_never_unpickled(model_copy, tmp_path):
    from safetensors import SafetensorError

    from model.model_dir import sha256_bytes

    marker = tmp_path / "PWNED"
    data = _pickle_bytes(marker)
    (model_copy / "fim.safetensors").write_bytes(data)
    m = _manifest(model_copy)
    m["parts"]["fim"].update(sha256=sha256_bytes(data), size=len(data))  # a consistent, signed-off lie
    _write_manifest(model_copy, m)
    with pytest.raises(SafetensorError, match="deserializing"):
        _ = _load(model_copy).mllm
    assert not marker.exists()


def test_sha256_mismatch_is_refused(model_copy):
    from model.model_dir import ChecksumError

    p = model_copy / "lora.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    p.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="part 'lora': lora.safetensors has sha256"):
        _load(model_copy)


def test_tampered_bundled_base_weights_are_refused(model_copy):
    from model.model_dir import ChecksumError

    p = model_copy / "base" / "llm" / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="component 'llm'"):
        _load(model_copy)


def test_pickle_dropped_into_bundled_base_dir_is_refused(model_copy, tmp_path):
    """A pickle added next to the bundled LLM is refused outright (before any checksum); with
    the checksum forged too and the safetensors removed, the loader still refuses."""
    from model.model_dir import UnsafeCheckpointError, tree_sha256

    marker = tmp_path / "PWNED"
    llm = model_copy / "base" / "llm"
    (llm / "pytorch_model.bin").write_bytes(_pickle_bytes(marker))
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin is a pickled checkpoint"):
        _load(model_copy)
    (llm / "model.safetensors").unlink()
    m = _manifest(model_copy)
    m["components"]["llm"]["sha256"] = tree_sha256(llm)
    _write_manifest(model_copy, m)
    with pytest.raises(UnsafeCheckpointError):
        _ = _load(model_copy).mllm
    assert not marker.exists()


def test_stray_pickle_next_to_a_valid_manifest_is_refused(model_copy, tmp_path):
    from model.model_dir import UnsafeCheckpointError

    marker = tmp_path / "PWNED"
    (model_copy / "optimizer.pt").write_bytes(_pickle_bytes(marker))
    try:
        with pytest.raises(UnsafeCheckpointError):
            _load(model_copy)
    finally:
        assert not marker.exists()  # ignored or refused, it is never unpickled


def test_cli_refuses_a_pickled_model_before_starting_ray(tmp_path, asset):
    """The driver checks the model directory first: a one-line message and exit code 2 within
    seconds, not a traceback from every MLLM actor on the cluster."""
    marker = tmp_path / "PWNED"
    d = tmp_path / "evil"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(_pickle_bytes(marker))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copyfile(asset("sample_single_face_jpg"), corpus / "face.jpg")
    args = ["annotate", "--input", str(corpus), "--output", str(tmp_path / "out"), "--model", str(d),
            "--no-progress", "--set", "mlflow.enabled=false"]
    r = subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"mien annotate: model {d}" in r.stderr and "never unpickles" in r.stderr
    assert "Traceback" not in r.stderr and not marker.exists()


@pytest.mark.parametrize("file", ["../outside.safetensors", "{abs}", "sub/../../outside.safetensors",
                                  "link.safetensors"])
def test_part_paths_are_confined_to_the_model_directory(model_copy, tmp_path, file):
    """A manifest may only name files inside its own directory: '..', absolute paths and
    symlinks out are refused before anything is read, even with a matching checksum."""
    from model.model_dir import UnsafeCheckpointError, sha256_bytes

    outside = tmp_path / "outside.safetensors"
    shutil.copyfile(model_copy / "fim.safetensors", outside)
    (model_copy / "sub").mkdir()
    (model_copy / "link.safetensors").symlink_to(outside)
    m = _manifest(model_copy)
    m["parts"]["fim"].update(file=file.format(abs=outside), sha256=sha256_bytes(outside.read_bytes()))
    _write_manifest(model_copy, m)
    with pytest.raises(UnsafeCheckpointError, match="not a path inside the model directory"):
        _load(model_copy)


def test_bundled_component_paths_are_confined_to_the_model_directory(model_copy, tmp_path):
    from model.model_dir import UnsafeCheckpointError, tree_sha256

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(model_copy / "base" / "llm", elsewhere)
    m = _manifest(model_copy)
    m["components"]["llm"].update(source="bundled:../elsewhere", sha256=tree_sha256(elsewhere))
    _write_manifest(model_copy, m)
    with pytest.raises(UnsafeCheckpointError, match="component 'llm'.*not a path inside"):
        _ = _load(model_copy).mllm
