"""Descriptions agree with the scores written beside them, and the model id says they were made.

A generated description may name any expression or AU (a small or untrained LLM does); what it
says that the scores deny is dropped (``prompts.consistent_description``), falling back to the
template reasoning answer of the scores. The guarantee is checked on injected texts and end to
end with a tiny random LLM, whose free text names AUs and expressions at random.
"""

from __future__ import annotations

import numpy as np
import pytest

from model import prompts
from model.annotator import FacialAnnotator, describe_cost
from model.config import GenerationConfig
from model.model_dir import base_model_id
from model.taxonomy import AU_NAMES, FE_BASIC
from tests.model.conftest import face_batch


def _aus(**probs: float) -> np.ndarray:
    v = np.full(len(AU_NAMES), 0.1)
    for name, p in probs.items():
        v[AU_NAMES.index(name)] = p
    return v


HAPPY = _aus(AU06=0.8, AU12=0.9, AU43=0.1)
OPENING = prompts.anchored_opening("happiness", ["AU12", "AU06"])


@pytest.mark.parametrize("generated,kept", [
    # the case: closed eyes stated while AU43 is scored 0.10
    (f"{OPENING} the lip corners are pulled up. The eyes are closed.",
     f"{OPENING} the lip corners are pulled up."),
    # another expression named, an active AU denied, an unmeasured AU claimed
    (f"{OPENING} the cheeks are raised. She also looks sad.", f"{OPENING} the cheeks are raised."),
    (f"{OPENING} the cheeks are raised. The lip corners are not pulled up.", f"{OPENING} the cheeks are raised."),
    (f"{OPENING} the cheeks are raised. The nose is wrinkled.", f"{OPENING} the cheeks are raised."),
    # what agrees with the scores stays as written, denials of inactive AUs included
    (f"{OPENING} a broad smile. The eyes are not closed.", f"{OPENING} a broad smile. The eyes are not closed."),
])
def test_sentences_that_contradict_the_scores_are_dropped(generated, kept):
    au = HAPPY.copy()
    au[AU_NAMES.index("AU09")] = np.nan  # not measured: no description may claim it
    assert prompts.consistent_description(generated, "happiness", au, opening=OPENING) == kept


def test_nothing_consistent_left_gives_the_template_of_the_scores():
    template = prompts.reasoning_answer("happiness", ["AU12", "AU06"])
    for generated in (f"{OPENING} the eyes are closed, sad and angry.", f"{OPENING}", "The person is not happy."):
        assert prompts.consistent_description(generated, "happiness", HAPPY, opening=OPENING) == template
    neutral = prompts.consistent_description("frown frown au10", "neutral", _aus())
    assert neutral == prompts.reasoning_answer("neutral", ())
    assert not prompts.contradicts(neutral, "neutral", set())


@pytest.mark.parametrize("anchor", [False, True])
def test_descriptions_of_a_random_llm_never_contradict_the_scores(tiny_mllm, anchor):
    """Without the check, this tiny model's text named another expression or a below-threshold AU for
    10 of these 12 faces (6 of 12 with the anchored opening)."""
    ann = FacialAnnotator.from_mllm(tiny_mllm)
    g = ann.config.generation
    g.enabled, g.mode, g.max_new_tokens, g.anchor_label = True, "all", 24, anchor
    try:
        out = ann.annotate(face_batch(12, seed=1))
    finally:
        g.enabled, g.mode, g.max_new_tokens, g.anchor_label = False, "per_track", 8, False
    for text, fe_probs, au_probs, fe, aus in zip(out["description"], out["fe_probs"], out["au_probs"],
                                                 out["description_fe"], out["description_aus"], strict=True):
        top = FE_BASIC[int(fe_probs.argmax())]
        active = {a for a, p in zip(AU_NAMES, au_probs, strict=True) if p >= 0.5}
        parsed = prompts.parse_description(text)
        assert set(parsed.fe_mentions) <= {top} and fe in (top, None), text
        assert set(aus) <= active, text
        assert not prompts.contradicts(text, top, active), text
        if anchor:
            assert text.startswith(f"The person shows {prompts.fe_phrase(top)}")


def test_model_id_names_the_description_settings():
    from model import load_model

    m = load_model("default")  # generation off: nothing loaded
    plain = m.model_id
    g = m.config.generation
    g.enabled = True
    assert m.model_id == f"{plain}+describe:per_track/32tok" and not m.llm_loaded
    g.mode, g.fraction, g.max_new_tokens = "fraction", 0.25, 16
    assert m.model_id == f"{plain}+describe:fraction=0.25/16tok"
    assert base_model_id(m.model_id) == plain == m.base_model_id and base_model_id(plain) == plain


def test_the_cost_of_descriptions_is_stated_in_decodes():
    g = GenerationConfig(enabled=True, mode="per_track", max_new_tokens=32)
    assert describe_cost(g, 32).startswith("one LLM decode of up to 32 new tokens for each track in every "
                                           "batch of 32 faces")
    g.mode, g.fraction = "fraction", 0.1
    assert "for each track of about 10% of the tracks" in describe_cost(g, 32)
    g.mode = "all"
    assert describe_cost(g, 32) == "one LLM decode of up to 32 new tokens for every face"


def _video_row(faces: int, seed: int) -> dict:
    """One decoded video of ``faces`` face-stage records (two tracks), as the MLLM stage receives it."""
    from workflows.annotate.stages import pack_faces
    from workflows.faces.stage import FaceRecord

    rng = np.random.default_rng(seed)
    records = [FaceRecord(
        frame_index=i, timestamp_s=i / 10, bbox=np.array([10, 10, 90, 90], np.float32), det_score=0.9,
        kps=np.zeros((5, 2), np.float32), landmarks=None, crop=rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
        pose=rng.normal(0, 10, 3).astype(np.float32), age=30.0, gender="female", gender_score=0.8,
        blendshapes=None, au_evidence=(au := (rng.random(len(AU_NAMES)) * 0.6).astype(np.float32)),
        au_evidence_raw=au, fe_prior=rng.dirichlet(np.ones(len(FE_BASIC))).astype(np.float32), embedding=None,
        track_id=i % 2, segment_id=0) for i in range(faces)]
    return {"video_id": "vid", "video_uri": "/corpus/vid.mp4", "status": "ok", "error": None, "n_frames": faces,
            "n_faces": faces, "n_tracks": 2, "faces_npz": pack_faces(records, 90)}


def test_descriptions_state_an_au_active_from_the_runs_au_threshold(tiny_mllm, tmp_path):
    """A run's ``model.au_threshold`` decides ``au_active``; the description written beside it states an
    AU as active from the same threshold: at 0.3 an AU scored 0.3-0.5 may be described, at 0.7 one
    scored 0.5-0.7 may not (both were judged at a fixed 0.5, so descriptions contradicted au_active)."""
    from model import save_model
    from workflows.annotate.pipeline import AnnotateConfig, ModelRef
    from workflows.annotate.stages import MllmStage

    uri = str(tmp_path / "tiny")
    save_model(tiny_mllm, uri)
    row = _video_row(12, seed=1)
    stated = {}
    for threshold in (0.3, 0.7):
        cfg = AnnotateConfig(model=ModelRef(uri=uri, au_threshold=threshold, describe="all",
                                            overrides=["generation.anchor_label=true", "generation.max_new_tokens=24"]))
        out = MllmStage(cfg, "run").process_video(row, video_key=0)
        assert out["status"] == "ok", out.get("error")
        faces = out["faces"].to_pylist()
        assert all(f["description"] for f in faces)
        stated[threshold] = []
        for f in faces:
            described = prompts.parse_description(f["description"]).aus
            assert set(described) <= set(f["au_active"]), (threshold, f["description"], f["au_active"])
            assert not prompts.contradicts(f["description"], f["fe_label"], set(f["au_active"])), f["description"]
            stated[threshold] += [dict(f["au_probs"])[a] for a in described]
    assert any(0.3 <= p < 0.5 for p in stated[0.3])  # active for this run, described
    assert all(p >= 0.7 for p in stated[0.7])
