"""Licence texts classified for commercial use, model-card licences read, registry tags."""

from __future__ import annotations

import pytest

from workflows.core import licences
from workflows.core.assets import ASSETS, MULTIPART_ASSETS
from workflows.core.licences import Component, card_licence, classify, most_restrictive, registry_tags


@pytest.mark.parametrize("text,answer", [
    ("cc-by-nc-4.0", "no"), ("CC-BY-NC-SA-4.0", "no"), ("cc-by-nc-nd-4.0", "no"),
    ("Non-commercial use only", "no"), ("for research only", "no"), ("academic use", "no"),
    ("Qwen RESEARCH LICENSE AGREEMENT", "no"),
    ("Gemma terms of use", "conditions"), ("gemma", "conditions"), ("llama2", "conditions"),
    ("llama3.1", "conditions"), ("creativeml-openrail-m", "conditions"), ("gpl-3.0", "conditions"),
    ("cc-by-sa-4.0", "conditions"),
    ("MIT", "yes"), ("BSD-2/MIT", "yes"), ("bsd-3-clause", "yes"), ("Apache-2.0", "yes"), ("apache_2.0", "yes"),
    ("CC0", "yes"), ("cc-by-4.0", "yes"), (licences.OWN, "yes"),
    ("", "unknown"), ("other", "unknown"), ("proprietary", "unknown"), ("example licence", "unknown"),
])
def test_classification(text, answer):
    assert classify(text) == answer


def test_every_shipped_model_has_a_licence_with_a_known_answer():
    for spec in ASSETS.values():
        assert classify(spec.licence) != "unknown", spec.name
    assert licences.asset_licence("gemma3_270m_gguf") == "Gemma terms of use"
    faces = {c.component: c.commercial for c in licences.face_components()}
    assert faces == {"yunet": "yes", "face_landmarker": "yes", "age_onnx": "yes", "gender_onnx": "yes",
                     "facex_tflite": "yes"}
    assert not set(faces) & set(MULTIPART_ASSETS["gemma3_270m_gguf"].parts)  # the LLM is the model's, not the faces'


@pytest.mark.parametrize("card,expected", [
    ("---\nlicense: cc-by-nc-4.0\nlanguage: en\n---\n# Model\n", "cc-by-nc-4.0"),
    ("---\nlicense:\n- apache-2.0\n- mit\n---\n", "apache-2.0, mit"),
    ("---\nlicense: other\nlicense_name: llama3\n---\ntext", "llama3"),
    ("# A card without front matter\nlicense: mit\n", ""),
    ("---\nlicense: [unclosed\n---\n", ""),
])
def test_model_card_licence(tmp_path, card, expected):
    (tmp_path / "README.md").write_text(card)
    assert card_licence(tmp_path) == expected


def test_no_model_card_is_no_licence(tmp_path):
    assert card_licence(tmp_path) == ""
    assert card_licence(tmp_path / "missing") == ""


def test_the_most_restrictive_answer_tags_the_version():
    assert most_restrictive(["yes", "conditions"]) == "conditions"
    assert most_restrictive(["yes", "unknown", "conditions"]) == "unknown"
    assert most_restrictive(["yes", "no", "unknown"]) == "no"
    assert most_restrictive([]) == "unknown"
    tags = registry_tags([Component("yunet", "asset:yunet", "BSD-2/MIT"), Component("vlm", "/b", "cc-by-nc-4.0"),
                          Component("lora", "trained", "")])
    assert tags == {"mien.licence.yunet": "BSD-2/MIT", "mien.licence.vlm": "cc-by-nc-4.0",
                    "mien.licence.lora": "unknown", "mien.commercial_use": "no"}


def test_a_recorded_answer_is_classified_again():
    old = {"component": "vlm", "source": "/b", "licence": "cc-by-nc-4.0", "commercial": "yes"}
    assert licences.from_dicts([old])[0].commercial == "no"
