"""Every command that takes a model turns an unusable one into one line and exit status 2, before
Ray starts: a tampered component, an MLflow alias or model that does not exist, an S3 bucket that
does not exist or cannot be read without credentials."""

from __future__ import annotations

import shutil

import pytest

from jobs.cli import main
from tests.workflows.annotate.test_ingest import no_aws_credentials  # noqa: F401 - a fixture

pytestmark = pytest.mark.timeout(300)


def _one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"mien {command}:")]
    assert len(lines) == 1, err
    return lines[0]


def _annotate(asset, tmp_path, model: str) -> int:
    image = asset("sample_single_face_jpg")
    return main(["annotate", "--input", str(image), "--output", str(tmp_path / "out"), "--model", model,
                 "--set", "mlflow.enabled=false", "--no-progress"])


def _ray_started() -> bool:
    import sys

    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def test_annotate_refuses_a_tampered_component_on_the_driver(asset, tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = model / "base" / "llm" / "config.json"
    cfg.write_text(cfg.read_text().replace('"hidden_act"', '"hidden_act" ', 1))
    assert _annotate(asset, tmp_path, str(model)) == 2
    line = _one_line(capsys, "annotate")
    assert "component 'llm'" in line and "changed: config.json" in line, line
    assert not _ray_started()
    assert not (tmp_path / "out" / "videos").exists()


def test_annotate_names_a_missing_alias_and_lists_the_aliases(asset, tiny_registry, tmp_path, capsys):
    assert _annotate(asset, tmp_path, "models:/mien-tiny@typo") == 2
    line = _one_line(capsys, "annotate")
    assert "has aliases: @champion (version 1); versions: 1" in line, line
    assert not _ray_started()


def test_annotate_names_a_missing_bucket(asset, s3_server, tmp_path, capsys):
    assert _annotate(asset, tmp_path, "s3://mien-no-such-bucket-x/m") == 2
    assert "no such bucket" in _one_line(capsys, "annotate")


def test_annotate_without_s3_credentials_says_what_to_set(asset, no_aws_credentials, tmp_path,  # noqa: F811
                                                          capsys):
    assert _annotate(asset, tmp_path, "s3://mien-models/m") == 2
    assert "no credentials for this object store: set AWS_ACCESS_KEY_ID" in _one_line(capsys, "annotate")


def test_evaluate_names_a_missing_version(tiny_registry, tmp_path, capsys):
    assert main(["evaluate", "--model", "models:/mien-tiny/7", "--data", str(tmp_path / "data"),
                 "--set", "mlflow.enabled=false"]) == 2
    assert "versions: 1" in _one_line(capsys, "evaluate")


def test_train_names_a_missing_init_from_model(tiny_registry, tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "m"),
                 "--set", "init_from=models:/nosuch@champion", "--set", "mlflow.enabled=false"]) == 2
    assert "there is no registered model 'nosuch'; registered models: mien-tiny" in _one_line(capsys, "train")
    assert not _ray_started()
