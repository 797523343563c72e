"""`mien annotate --model <plain Hugging Face VLM dir>` end to end: real face media, a real local Ray,
tiny random checkpoints of three families (built offline), the output contract checked."""

from __future__ import annotations

import shutil

import pandas as pd
import pyarrow.dataset as pads
import pytest

from tests.integration.test_annotate import _cfg, _check_contract
from workflows.annotate.pipeline import annotate

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def face_corpus(corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("faces")
    for name in ("smiling.mp4", "single_face.jpg"):
        shutil.copyfile(corpus / name, d / name)
    return d


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3"])
def test_annotate_with_a_pretrained_vlm(family, face_corpus, tmp_path, local_ray):
    from model import load_model
    from model.vlm.tiny import build_tiny_vlm

    base = build_tiny_vlm(family, tmp_path / family)
    out = tmp_path / "out"
    describe = ["model.describe=all", "model.overrides=[generation.max_new_tokens=6]"] if family == "llava" else []
    summary = annotate(str(face_corpus), str(out), _cfg(tmp_path, f"model.uri={base}", "decode.sampling=uniform:4",
                                                         *describe), progress=False)
    assert summary.videos_ok == 2 and summary.videos_error == 0
    _check_contract(out)
    faces = pads.dataset(out / "faces", format="parquet").to_table().to_pandas()
    videos = pads.dataset(out / "videos", format="parquet").to_table().to_pandas()
    expected = load_model(str(base)).model_id + ("+describe:all/6tok" if describe else "")  # says descriptions on
    assert len(faces) >= 2 and set(faces.model_id) == {expected} and set(videos.model_id) == {expected}
    assert (videos.mllm_s > 0).all()
    sums = pd.Series([sum(v for _, v in p) for p in faces.fe_probs])
    assert ((sums - 1).abs() < 1e-3).all()
    # descriptions are a run-time option: on for the llava run only, a text on every face then
    assert faces.description.notna().all() if describe else faces.description.isna().all()
