"""The insightface adapter, through the real insightface 2.1 code, without a real model pack.

A real buffalo_l pack cannot be downloaded here; ``fake_pack`` writes ONNX graphs with its
input/output signatures. See ``workflows/faces/insightface_backend.py`` for what still needs a
real pack.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.workflows.faces.fake_pack import write_pack
from workflows.annotate.decode import Frame
from workflows.faces import FaceConfig, FaceExtractor, InsightFaceConfig
from workflows.faces.insightface_backend import (
    InsightFaceDetector,
    InsightFaceError,
    resolve_pack,
    select_providers,
)
from workflows.faces.tracking import box_iou

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

FACE = (178.0, 63.0, 268.0, 176.0)
KPS = np.array([[201.5, 101.2], [246.1, 100.5], [221.9, 124.5], [203.6, 146.1], [241.2, 145.6]], np.float32)


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return write_pack(tmp_path_factory.mktemp("insightface") / "buffalo_fake", (512, 512), FACE, KPS)


def _cfg(pack, **kw) -> FaceConfig:
    return FaceConfig(backend="insightface", insightface=InsightFaceConfig(pack=str(pack)), **kw)


def test_cuda_requested_without_cuda_provider_is_an_error():
    with pytest.raises(InsightFaceError, match="onnxruntime-gpu"):
        select_providers("cuda", 0, available=["CPUExecutionProvider"])
    with pytest.raises(InsightFaceError, match="num_gpus=1"):
        select_providers("auto", 1, available=["AzureExecutionProvider", "CPUExecutionProvider"])
    assert select_providers("auto", 0, available=["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert select_providers("auto", 0.5, available=["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider"]
    assert select_providers("cpu", 1, available=["CUDAExecutionProvider"]) == ["CPUExecutionProvider"]


def test_stage_with_gpus_fails_fast_on_a_cpu_only_onnxruntime(pack):
    # this venv's onnxruntime is the CPU build
    with pytest.raises(InsightFaceError, match="CUDA"):
        FaceExtractor(_cfg(pack, num_gpus=1))


def test_silent_cpu_fallback_is_caught(pack, monkeypatch):
    # onnxruntime claims CUDA but cannot create it: sessions fall back to CPU with only a
    # warning. The adapter checks what each session really runs on.
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(InsightFaceError, match="not CUDA"):
        InsightFaceDetector(InsightFaceConfig(pack=str(pack)), num_gpus=1)


def test_missing_or_empty_pack_errors(tmp_path):
    with pytest.raises(InsightFaceError, match="does not exist"):
        resolve_pack(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InsightFaceError, match="no .onnx files"):
        resolve_pack(str(tmp_path / "empty"))
    with pytest.raises(InsightFaceError, match="pack is empty"):
        resolve_pack("")
    only_rec = tmp_path / "norec"
    only_rec.mkdir()
    import onnx

    from tests.workflows.faces.fake_pack import arcface_graph

    onnx.save(arcface_graph(), str(only_rec / "w600k_r50.onnx"))
    with pytest.raises(InsightFaceError, match="no face detector"):
        InsightFaceDetector(InsightFaceConfig(pack=str(only_rec)))


def test_adapter_runs_the_real_insightface_pipeline(pack, astronaut):
    with FaceExtractor(_cfg(pack)) as ex:
        assert ex._detector.providers == ["CPUExecutionProvider"]
        recs = ex.process_video([Frame(0, 0.0, astronaut), Frame(5, 0.5, astronaut), Frame(9, 0.9, np.zeros_like(astronaut))])
    # the constant detector fires on every frame, the black one included
    assert len(recs) == 3
    r = recs[0]
    assert np.allclose(r.bbox, FACE, atol=0.5)  # SCRFD anchor decoding landed exactly
    assert np.allclose(r.kps, KPS, atol=8)  # mesh-derived points agree with the planted ones
    assert r.det_score == pytest.approx(0.9)
    assert r.embedding.shape == (512,) and np.linalg.norm(r.embedding) == pytest.approx(1.0, abs=1e-5)
    assert r.age == 35 and r.gender == "male"  # genderage graph output [0.1, 0.9, 0.35]
    assert r.landmarks.shape == (478, 2) and np.isfinite(r.au_evidence_raw).sum() > 15  # mesh on top
    assert box_iou(r.bbox, np.array(FACE)) > 0.99
    # same crop → same embedding → one track; a different crop (black frame) → cosine veto
    assert recs[0].track_id == recs[1].track_id == 0
    assert np.allclose(recs[0].embedding, recs[1].embedding)


def test_s3_pack_is_copied_once(pack, s3_bucket, tmp_path, monkeypatch):
    from workflows.core import storage

    for f in sorted(pack.glob("*.onnx")):
        storage.write_bytes(f"{s3_bucket}/packs/buffalo/{f.name}", f.read_bytes())
    monkeypatch.setenv("MIEN_CACHE_DIR", str(tmp_path / "cache"))
    local = resolve_pack(f"{s3_bucket}/packs/buffalo")
    assert sorted(p.name for p in local.glob("*.onnx")) == sorted(p.name for p in pack.glob("*.onnx"))
    assert str(local).startswith(str(tmp_path / "cache"))
    assert resolve_pack(f"{s3_bucket}/packs/buffalo/") == local  # cached, same place
    with pytest.raises(InsightFaceError, match="not found"):
        resolve_pack(f"{s3_bucket}/packs/missing")
