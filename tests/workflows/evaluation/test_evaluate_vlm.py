"""`mien evaluate` on a pretrained VLM checkpoint (zero-shot): it reads the face crops of an annotate
output and reports, like any model directory."""

from __future__ import annotations

import pytest

from tests.outputs.conftest import build_annotated_output


@pytest.fixture(scope="module")
def annotated_with_crops(tmp_path_factory):
    return build_annotated_output(tmp_path_factory.mktemp("annotated"))


def test_evaluate_scores_a_vlm_on_annotate_output_crops(annotated_with_crops, tmp_path):
    from model.vlm.tiny import build_tiny_vlm
    from workflows.core.config import load_config
    from workflows.evaluation.evaluate import EvaluateConfig, evaluate

    base = build_tiny_vlm("idefics3", tmp_path / "idefics3")
    cfg = load_config(EvaluateConfig, None, ["mlflow.enabled=false", "crop_size=112"])
    result = evaluate(str(base), str(annotated_with_crops.root), cfg, output=str(tmp_path / "eval.json"))
    report = result.report
    assert result.model_id.startswith("idefics3-zeroshot+") and report["n_faces"] > 0
    assert report["data"]["dropped_no_crop"] == 0  # the VLM read every face's crop
    assert 0.0 <= report["fe"]["accuracy"] <= 1.0 and (tmp_path / "eval.json").exists()
