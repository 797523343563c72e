"""Licences made explicit: recorded in mien_model.json, shown by `mien model inspect`, carried by the run
JSON, the HTML report and the registered MLflow version, and a warning for a non-commercial component."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from jobs.cli import main

pytestmark = pytest.mark.timeout(600)

NC_CARD = "---\nlicense: cc-by-nc-4.0\npipeline_tag: image-text-to-text\n---\n# A research-only VLM\n"


def _inspect(capsys, uri: str) -> dict:
    capsys.readouterr()
    assert main(["model", "inspect", uri]) == 0
    return json.loads(capsys.readouterr().out)


def _by_component(entries: list[dict]) -> dict[str, dict]:
    return {e["component"]: e for e in entries}


def _non_commercial_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "does not allow commercial use" in r.getMessage()]


@pytest.fixture(scope="module")
def nc_base(tmp_path_factory) -> Path:
    """A tiny LLaVA checkpoint whose model card says it is licensed CC-BY-NC-4.0."""
    from model.vlm.tiny import build_tiny_vlm

    base = build_tiny_vlm("llava", tmp_path_factory.mktemp("bases") / "llava-nc")
    (base / "README.md").write_text(NC_CARD)
    return base


def test_a_saved_model_records_its_licences_and_inspect_shows_them(tiny_model_dir, capsys, caplog):
    manifest = json.loads((tiny_model_dir / "mien_model.json").read_text())
    recorded = _by_component(manifest["licences"])
    # the face models every run uses, the random-init bases mien built, and each trained part
    assert {"yunet", "face_landmarker", "age_onnx", "gender_onnx", "facex_tflite", "llm", "tokenizer", "vision",
            "face_prior", "fim", "lora"} <= set(recorded)
    assert recorded["yunet"]["licence"] == "BSD-2/MIT" and recorded["llm"]["commercial"] == "yes"
    assert recorded["lora"]["source"] == "trained: lora.safetensors, on llm"
    summary = _inspect(capsys, str(tiny_model_dir))
    assert summary["commercial_use"] == "yes"
    assert summary["licences"] == manifest["licences"]
    assert not _non_commercial_warnings(caplog)


def test_the_default_model_is_usable_under_the_gemma_terms(capsys):
    summary = _inspect(capsys, "default")
    assert _by_component(summary["licences"])["llm"] == {
        "component": "llm", "source": "asset:gemma3_270m", "licence": "Gemma terms of use", "commercial": "conditions"}
    assert summary["commercial_use"] == "conditions"


def test_a_directory_saved_before_licences_were_recorded_still_gets_them(tiny_model_dir, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    manifest = json.loads((old / "mien_model.json").read_text())
    recorded = manifest.pop("licences")
    (old / "mien_model.json").write_text(json.dumps(manifest))
    assert _inspect(capsys, str(old))["licences"] == recorded


def test_a_non_commercial_base_is_recorded_and_warned_about(nc_base, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    zero_shot = _inspect(capsys, str(nc_base))  # the plain checkpoint, run zero-shot
    assert zero_shot["commercial_use"] == "no"
    assert _by_component(zero_shot["licences"])["vlm"]["licence"] == "cc-by-nc-4.0"
    [warning] = _non_commercial_warnings(caplog)
    assert "vlm" in warning and "cc-by-nc-4.0" in warning

    caplog.clear()
    out = tmp_path / "lora"
    assert main(["model", "init", "--base", str(nc_base), "--output", str(out), "--set", "vlm.lora.enabled=true"]) == 0
    [warning] = _non_commercial_warnings(caplog)  # the base, and the adapters that inherit its licence
    assert "vlm (" in warning and "lora (trained: not trained yet, on vlm, licensed 'cc-by-nc-4.0')" in warning
    recorded = _by_component(json.loads((out / "mien_model.json").read_text())["licences"])
    assert recorded["vlm"]["commercial"] == "no"
    assert recorded["lora"] == {"component": "lora", "source": "trained: not trained yet, on vlm",
                                "licence": "cc-by-nc-4.0", "commercial": "no"}
    # the base is now somewhere else, without its card: the licence recorded at init still holds
    assert _inspect(capsys, str(out))["commercial_use"] == "no"


def test_annotate_warns_and_records_the_licences_in_the_run_json(nc_base, asset, tmp_path, caplog):
    out = tmp_path / "out"
    code = main(["annotate", "--input", str(asset("sample_single_face_jpg")), "--output", str(out),
                 "--model", str(nc_base), "--limit", "0", "--set", "mlflow.enabled=false", "--no-progress"])
    assert code == 0
    assert any("cc-by-nc-4.0" in w for w in _non_commercial_warnings(caplog))
    doc = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert _by_component(doc["licences"])["vlm"]["commercial"] == "no"


def test_a_local_annotate_run_and_its_report_state_the_licences(asset, tmp_path):
    from workflows.outputs.report import build_report

    out = tmp_path / "out"
    assert main(["annotate", "--input", str(asset("sample_single_face_jpg")), "--output", str(out),
                 "--set", "mlflow.enabled=false", "--set", "executor.kind=local", "--no-progress"]) == 0
    doc = json.loads(next((out / "runs").glob("*.json")).read_text())
    entries = _by_component(doc["licences"])
    assert entries["facex_tflite"]["licence"] == "MIT" and entries["llm"]["commercial"] == "conditions"
    report = build_report(str(out))
    assert 'id="licences"' in report and "Gemma terms of use" in report
    assert "Commercial use under the licensor&#x27;s terms: read the terms of llm." in report


def test_the_registered_version_is_tagged_with_its_licences(tiny_registry):
    from workflows.core.tracking import Registry

    tags = Registry(tiny_registry).version("mien-tiny", "1").tags
    assert tags["mien.commercial_use"] == "yes"
    assert tags["mien.licence.yunet"] == "BSD-2/MIT" and tags["mien.licence.lora"].startswith("mien's own")
