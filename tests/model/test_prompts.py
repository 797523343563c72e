"""Prompt texts (FERID / FEALLM formats), attribute sentences, and parsing descriptions back."""

from __future__ import annotations

import numpy as np
import pytest

from model import prompts
from model.taxonomy import AU_NAMES, FE_BASIC


def test_attribute_sentence_and_race_only_on_request():
    assert prompts.attribute_sentence(34.4, "female") == "The person appears to be a 34-year-old woman."
    assert prompts.attribute_sentence(float("nan"), "M") == "The person appears to be a man."
    assert prompts.attribute_sentence(51, None) == "The person appears to be about 51 years old."
    assert prompts.attribute_sentence(float("nan"), None) == ""
    assert "Asian" not in prompts.attribute_sentence(30, "m", race="East Asian")
    assert prompts.attribute_sentence(30, "m", race="East Asian", include_race=True) == (
        "The person appears to be a 30-year-old East Asian man.")


def test_ferid_category_question_lists_options_in_rafdb_order():
    q = prompts.fe_question(FE_BASIC)
    assert ("What is the facial expression of the person in the image? Choose one from the following options: "
            "{surprise, fear, disgust, happiness, sadness, anger, neutral}.") in q
    assert q.endswith(prompts.ASSISTANT)


def test_reasoning_answer_names_fe_and_aus():
    text = prompts.reasoning_answer("happiness", ["AU06", "AU12"])
    assert text.startswith("The person shows happiness, because AU06 Cheek Raiser and AU12 Lip Corner Puller")
    assert "the lip corners are pulled up" in text


def test_prior_sentence_lists_active_aus_and_skips_unavailable():
    au = np.full(len(AU_NAMES), 0.1)
    au[AU_NAMES.index("AU12")] = 0.9
    au[AU_NAMES.index("AU06")] = np.nan
    fe = np.eye(len(FE_BASIC))[1] * 0.8 + 0.2 / 7
    s = prompts.prior_sentence(fe, au)
    assert s == "Facial measurements suggest happiness (83 %); active action units: AU12 Lip Corner Puller."


@pytest.mark.parametrize("text,fe,aus", [
    ("The person is happy, not sad. There is no AU04, AU15 or AU01.", "happiness", ()),
    ("She does not look angry. She looks surprised, with raised brows (AU1, AU2) and a dropped jaw.",
     "surprise", ("AU01", "AU02", "AU26")),
    ("The person shows a neutral expression, because the features are not active.", "neutral", ()),
    ("No sign of anger here.", None, ()),
    ("He seems unhappy; the lip corners are pulled down.", "sadness", ("AU15",)),
    ("", None, ()),
])
def test_parse_description_ignores_negated_clauses(text, fe, aus):
    parsed = prompts.parse_description(text)
    assert parsed.fe_label == fe
    assert parsed.aus == aus


def test_every_reasoning_answer_parses_back_to_its_labels():
    for fe in FE_BASIC:
        aus = prompts.prototype_aus(fe)
        parsed = prompts.parse_description(prompts.reasoning_answer(fe, aus))
        assert parsed.fe_label == fe
        assert set(parsed.aus) == set(aus)


def test_builtin_tokenizer_covers_prompt_words_with_single_tokens():
    from model.tokenizer import build_builtin_tokenizer

    tok = build_builtin_tokenizer()
    unk = tok.unk_token_id
    ids = tok(prompts.prompt_corpus(), add_special_tokens=False).input_ids
    assert unk not in ids
    for word in list(FE_BASIC) + [prompts.YES, prompts.NO]:
        assert len(tok(prompts.answer_text(word), add_special_tokens=False).input_ids) == 1


def test_anchored_opening_names_only_measured_prototype_aus():
    au = np.full(len(AU_NAMES), 0.1)
    au[AU_NAMES.index("AU12")] = 0.9
    au[AU_NAMES.index("AU25")] = 0.95  # active, but no reason for happiness
    au[AU_NAMES.index("AU06")] = np.nan  # prototype, but not measured
    assert prompts.anchored_opening("happiness", prompts.supporting_aus("happiness", au)) == (
        "The person shows happiness, because AU12 Lip Corner Puller is active:")
    assert prompts.anchored_opening("surprise", prompts.supporting_aus("surprise", au)) == "The person shows surprise:"
    assert prompts.anchored_opening("neutral", []) == "The person shows a neutral expression:"
