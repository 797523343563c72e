"""The whole loop on real Ray and real faces: ``mien annotate`` (the offline default model) →
``mien train`` a tiny model with an LLM on that output → ``mien annotate --model DIR`` with separate
face and MLLM pools, whose MLLM batches hold several videos → every written probability is what
the trained model gives, in this process, for the face's own written inputs, and the output
names that model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.taxonomy import AU_NAMES, FE_BASIC

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
# Real faces: four posed expressions, a still with one face, a group photo, a short clip.
MEDIA = ("posed_anger_jpg", "posed_disgust_jpg", "posed_happy_jpg", "posed_surprise_jpg", "sample_single_face_jpg",
         "sample_multi_face_jpg", "sample_single_face_video")
MLLM_BATCH_VIDEOS = 4


def _cli(*args: str) -> None:
    """`mien ARGS` in its own process (the module behind the `mien` entry point)."""
    p = subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


@pytest.fixture(scope="module")
def loop(tmp_path_factory, asset, local_ray) -> dict:
    from jobs.cli import main

    root = tmp_path_factory.mktemp("loop")
    corpus = root / "corpus"
    corpus.mkdir()
    for name in MEDIA:
        src = asset(name)
        shutil.copyfile(src, corpus / Path(src).name)
    pseudo = root / "pseudo"
    # 1. pseudo-labels from the offline default model; in a process without Ray, so as a small job on
    #    the local executor, as a user's first run
    _cli("annotate", "--input", str(corpus), "--output", str(pseudo), "--no-progress", "--set",
         "mlflow.enabled=false")
    # 2. a tiny model with an LLM trained a few steps on them (Ray Train, 2 workers, DeepSpeed ZeRO-2);
    #    steps 2 and 3 run `mien` in this process, on this module's Ray
    model_dir = root / "model"
    assert main(["train", "--config", str(ROOT / "jobs/configs/train/tiny_cpu.yaml"), "--data", str(pseudo),
                 "--output", str(model_dir), "--set", "max_steps=3", "--set", "evaluate.enabled=false",
                 "--set", "mlflow.enabled=false", "--set", "scaling.cpus_per_worker=0.5",
                 "--set", "checkpoint.every_steps=100", "--set", "data.splits.train=1.0",
                 "--set", "data.splits.val=0.0", "--set", "data.splits.holdout=0.0"]) == 0
    # 3. annotate with it: a face pool and an MLLM pool whose batches span several videos
    out = root / "out"
    assert main(["annotate", "--input", str(corpus), "--output", str(out), "--model", str(model_dir),
                 "--executor", "ray", "--no-progress", "--set", "mlflow.enabled=false",
                 "--set", "ray.fuse_stages=never", "--set", f"ray.mllm.batch_size={MLLM_BATCH_VIDEOS}",
                 "--set", "ray.mllm.concurrency=1", "--set", "ray.faces.concurrency=2",
                 "--set", "ray.faces.num_cpus=0.8"]) == 0
    return {"model_dir": model_dir, "out": out}


def _unpacked(rows: list[dict]) -> dict:
    """One video's written face rows as the face stage's unpacked arrays (``stages.unpack_faces``):
    what the MLLM stage built its model batches from."""
    def vector(key: str, names: tuple[str, ...]) -> np.ndarray:
        out = np.full((len(rows), len(names)), np.nan, np.float32)
        for i, r in enumerate(rows):
            values = dict(r[key] or [])  # a map column: NaN (unmeasured) entries are not written
            out[i] = [values.get(n, np.nan) for n in names]
        return out

    def floats(key: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.array([np.full(shape, np.nan) if r[key] is None else np.reshape(r[key], shape) for r in rows],
                        np.float32)

    return {"frame_index": np.array([r["frame_index"] for r in rows], np.int32),
            "timestamp_s": np.array([r["timestamp_s"] for r in rows], np.float64),
            "bbox": floats("bbox", (4,)), "det_score": floats("det_score", ()), "kps": floats("landmarks_5", (5, 2)),
            "pose": floats("pose", (3,)), "age": floats("age", ()), "gender_score": floats("gender_score", ()),
            "au_evidence": vector("au_evidence", AU_NAMES), "fe_prior": vector("fe_prior", FE_BASIC),
            "blendshapes": floats("blendshapes", (52,)),
            "track_id": np.array([r["track_id"] for r in rows], np.int32),
            "segment_id": np.array([r["segment_id"] for r in rows], np.int32),
            "gender": np.array([r["gender"] or "" for r in rows], dtype="U8"),
            "flags": np.array([",".join(r["flags"] or []) for r in rows], dtype="U512"),
            "crop_jpeg": [r["crop_jpeg"] for r in rows]}


def test_annotating_with_a_trained_model_writes_its_in_process_scores(loop) -> None:
    from model import load_model
    from workflows.annotate.stages import model_batch
    from workflows.corpus.reader import AnnotationOutput

    out = AnnotationOutput(str(loop["out"]))
    (doc,) = out.runs()  # runs/<run_id>.json
    plan = doc["stage_plan"]
    assert not plan["mllm"]["fused"] and plan["mllm"]["batch_size"] == MLLM_BATCH_VIDEOS
    assert plan["mllm"]["concurrency"] == 1 and doc["timings"]["executor"] == "ray"
    assert doc["config"]["model"]["describe"] == "off" and not doc["config"]["model"]["overrides"]

    # the model the MLLM actor loaded (MllmStage: load_model(uri, device, overrides)), here
    model = load_model(str(loop["model_dir"]), device="auto", overrides=[])
    assert model.config.llm.enabled and model.config.uses_llm_for_scores  # the LLM takes part in every score
    assert doc["model_id"] == model.model_id != "default"

    videos = out.read("videos").to_pylist()
    assert len(videos) == len(MEDIA) and {v["status"] for v in videos} == {"ok"}
    assert {v["model_id"] for v in videos} == {model.model_id}
    with_faces = [v["video_id"] for v in videos if v["n_faces"]]
    assert len(with_faces) > MLLM_BATCH_VIDEOS  # one MLLM batch holds faces of several videos

    faces = out.read("faces").to_pylist()  # file order: each video's faces as the MLLM stage scored them
    assert faces and {f["model_id"] for f in faces} == {model.model_id}
    step = doc["config"]["model"]["batch_size"]  # faces per model call (MllmStage._score)
    n_llm_moved = 0
    for video_id in with_faces:
        rows = [f for f in faces if f["video_id"] == video_id]
        unpacked = _unpacked(rows)
        for s in range(0, len(rows), step):
            # video_key 0: the actor used the video's place in its batch; it only keeps track keys apart
            batch = model_batch(unpacked, range(s, min(len(rows), s + step)), 0)
            got = model.annotate(batch)
            prior = model.score_prior(batch)
            for i, row in enumerate(rows[s:s + step]):
                written_fe = dict(row["fe_probs"])
                np.testing.assert_allclose([written_fe[c] for c in FE_BASIC], got["fe_probs"][i], atol=1e-5)
                written_au = dict(row["au_probs"])
                expected_au = {a: float(p) for a, p in zip(AU_NAMES, got["au_probs"][i], strict=True) if p == p}
                assert set(written_au) == set(expected_au), video_id
                np.testing.assert_allclose([written_au[a] for a in expected_au], list(expected_au.values()),
                                           atol=1e-5)
                assert row["fe_label"] == FE_BASIC[int(np.argmax(got["fe_probs"][i]))]
                n_llm_moved += not np.allclose(got["fe_probs"][i], prior.fe_probs[i], atol=1e-3)
    assert n_llm_moved > 0  # the scores are not the face prior alone: the trained LLM's half is in them
