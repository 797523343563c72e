"""Opening a model neither hangs nor loads what the manifest does not describe: FIFOs and other
non-regular files are refused by name, a part whose size differs from the manifest is refused
before it is read, and a model URI that names nothing (MLflow alias or version, S3 bucket, no
credentials) is a ModelDirError that lists what exists or says what to set."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from model import load_model, open_model, verify_model_files
from model.model_dir import MANIFEST, ChecksumError, MissingPartError, ModelDirError
from tests.workflows.annotate.test_ingest import no_aws_credentials  # noqa: F401 - a fixture

# a regression that blocks on a FIFO fails here instead of hanging the suite
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    return d


def _manifest(d: Path) -> dict:
    return json.loads((d / MANIFEST).read_text())


def _fifo_instead_of(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("rel", ["lora.safetensors", "base/llm/model.safetensors", "base/tokenizer/tokenizer.json"])
def test_a_fifo_in_place_of_a_weights_file_is_refused_by_name(model_copy, rel):
    _fifo_instead_of(model_copy / rel)
    with pytest.raises(ModelDirError, match=rf"{Path(rel).name} is a FIFO \(named pipe\), not a regular file"):
        load_model(str(model_copy))


@pytest.mark.timeout(30)
def test_a_fifo_manifest_or_model_path_is_refused_when_opened(model_copy, tmp_path):
    _fifo_instead_of(model_copy / MANIFEST)
    with pytest.raises(ModelDirError, match=f"{MANIFEST} is a FIFO"):
        open_model(str(model_copy))
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(MissingPartError, match="pipe is not a directory"):
        open_model(str(tmp_path / "pipe"))


@pytest.mark.timeout(30)
def test_a_symlinked_part_is_what_it_points_at(model_copy):
    """A symlink inside the directory to a regular file loads; one to a FIFO is refused like the FIFO."""
    (model_copy / "lora.safetensors").rename(model_copy / "lora.real")
    (model_copy / "lora.safetensors").symlink_to("lora.real")
    assert load_model(str(model_copy)).model_id == _manifest(model_copy)["model_id"]
    _fifo_instead_of(model_copy / "lora.real")
    with pytest.raises(ModelDirError, match="lora.real is a FIFO"):
        load_model(str(model_copy))


@pytest.mark.timeout(30)
def test_a_fifo_among_a_plain_checkpoints_files_is_refused_when_opened(tmp_path):
    ckpt = tmp_path / "vlm"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (ckpt / "model-00001-of-00002.safetensors").write_bytes(b"{}")
    os.mkfifo(ckpt / "model-00002-of-00002.safetensors")
    with pytest.raises(ModelDirError, match="model-00002-of-00002.safetensors is a FIFO"):
        open_model(str(ckpt))


def test_a_part_whose_size_differs_from_the_manifest_is_refused_unread(model_copy):
    """An 8 GiB sparse file where a 1 MB part belongs: the size check refuses it before any read."""
    assert _manifest(model_copy)["parts"]["fim"]["size"] == (model_copy / "fim.safetensors").stat().st_size
    os.truncate(model_copy / "fim.safetensors", 8 << 30)
    with pytest.raises(ChecksumError, match=r"part 'fim': fim.safetensors is 8589934592 bytes, the manifest "
                                            r"says \d+ \(size check; not read\)"):
        load_model(str(model_copy))


def test_a_manifest_without_sizes_is_still_verified(model_copy):
    """Directories saved before sizes were recorded load, and their checksums still hold."""
    m = _manifest(model_copy)
    for meta in m["parts"].values():
        del meta["size"]
    (model_copy / MANIFEST).write_text(json.dumps(m))
    assert load_model(str(model_copy)).model_id == m["model_id"]
    data = bytearray((model_copy / "lora.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (model_copy / "lora.safetensors").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="part 'lora': lora.safetensors has sha256"):
        load_model(str(model_copy))


def test_the_driver_check_covers_components_and_names_the_changed_file(model_copy):
    """What load_model checks in every MLLM actor, verify_model_files checks first (no model built)."""
    verify_model_files(*open_model(str(model_copy)))
    cfg = model_copy / "base" / "llm" / "config.json"
    cfg.write_text(cfg.read_text().replace('"hidden_act"', '"hidden_act" ', 1))
    with pytest.raises(ChecksumError, match=r"component 'llm' at bundled:base/llm: .*changed: config.json"):
        verify_model_files(*open_model(str(model_copy)))


def test_the_driver_check_covers_a_vlm_base_where_it_is_on_this_machine(tmp_path):
    """A tuned VLM's base is verified at the architecture's ``vlm.source``; a base path that is not on
    this machine is left to the cluster's workers only when asked (``absent_ok``)."""
    from model import init_from_base
    from model.vlm.tiny import build_tiny_vlm

    base = build_tiny_vlm("llava", tmp_path / "base")
    init_from_base(str(base), str(tmp_path / "m"))
    directory, manifest = open_model(str(tmp_path / "m"))
    verify_model_files(directory, manifest)
    with pytest.raises(MissingPartError, match="not found"):
        verify_model_files(directory, manifest, vlm_source=str(tmp_path / "elsewhere"))
    verify_model_files(directory, manifest, vlm_source=str(tmp_path / "elsewhere"), absent_ok=True)
    gen = base / "generation_config.json"
    gen.write_text(gen.read_text() + " ")
    with pytest.raises(ChecksumError, match=r"component 'vlm' .*changed: generation_config.json"):
        verify_model_files(directory, manifest)


# ------------------------------------------------------------------------------ model URIs


@pytest.mark.parametrize("uri,listed", [
    ("models:/mien-tiny@typo", r"model 'mien-tiny' has aliases: @champion \(version 1\); versions: 1"),
    ("models:/mien-tiny/7", r"model 'mien-tiny' has aliases: @champion \(version 1\); versions: 1"),
    ("models:/nosuch@champion", r"there is no registered model 'nosuch'; registered models: mien-tiny"),
    ("models:/mien-tiny", r"names no version or alias: give models:/mien-tiny@ALIAS"),
])
def test_an_mlflow_uri_that_names_nothing_lists_what_exists(tiny_registry, uri, listed):
    with pytest.raises(MissingPartError, match=listed):
        open_model(uri)
    assert open_model("models:/mien-tiny@champion")[1]["name"] == "mien-tiny"


def test_an_mlflow_store_that_does_not_exist_is_named_not_created(tmp_path, monkeypatch):
    db = tmp_path / "nowhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with pytest.raises(MissingPartError, match=r"there is no MLflow store at sqlite:///\S*nowhere.db \(no such file\); "
                                               "set MLFLOW_TRACKING_URI"):
        open_model("models:/mien-tiny@champion")
    assert not db.exists()


def test_a_run_that_does_not_exist_is_a_model_error(tiny_registry):
    with pytest.raises(MissingPartError, match="runs:/0123456789abcdef/model: MLflow could not fetch it"):
        open_model("runs:/0123456789abcdef/model")


def test_an_s3_model_in_a_missing_bucket_or_prefix_is_named(s3_bucket):
    with pytest.raises(MissingPartError, match=r"model directory not found: s3://mien-no-such-bucket-x/m \(no such "
                                               "bucket, or nothing under that prefix\\)"):
        open_model("s3://mien-no-such-bucket-x/m")
    with pytest.raises(MissingPartError, match="not found"):
        open_model(f"{s3_bucket}/nothing-here")


def test_an_s3_model_without_credentials_says_what_to_set(no_aws_credentials):  # noqa: F811 - the fixture
    with pytest.raises(ModelDirError, match="cannot read s3://bucket/m: no credentials for this object store: "
                                            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        open_model("s3://bucket/m")
