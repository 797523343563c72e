"""No input or setting keeps a face worker busy forever: a per-video deadline ends the video as an
error row of kind ``timeout``, absurd sampling rates are refused at config load, and a fine
sampling rate cannot make the decoder step through billions of sampling times."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.media import render_video
from workflows.annotate.decode import SamplingPolicy, VideoReader
from workflows.annotate.pipeline import AnnotateConfig
from workflows.core.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[3]
TINY_DEADLINE = ["decode.limits.max_wall_s=0.000001", "decode.limits.max_wall_s_per_video_s=0"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    # 3 s at 10 fps.
    return str(render_video(tmp_path_factory.mktemp("v") / "clip.mp4", n_frames=30, fps=10))


def test_a_video_past_its_deadline_is_an_error_row_of_kind_timeout(asset):
    from workflows.annotate.stages import DecodeFacesStage

    clip = str(asset("sample_single_face_video"))
    stage = DecodeFacesStage(load_config(AnnotateConfig, None, ["mlflow.enabled=false", *TINY_DEADLINE]))
    try:
        row = stage.process_video("v1", clip)
        assert row["status"] == "error" and row["error_kind"] == "timeout", row
        assert "decode.limits.max_wall_s" in row["error"] and "max_wall_s=0 for no deadline" in row["error"]
        stage.cfg.decode.limits = AnnotateConfig().decode.limits  # the default deadline: minutes away
        row = stage.process_video("v1", clip)
        assert row["status"] == "ok" and row["n_faces"] > 0, row
    finally:
        stage.extractor.close()


def test_no_deadline_when_max_wall_s_is_0(clip):
    limits = load_config(AnnotateConfig, None, ["decode.limits.max_wall_s=0"]).decode.limits
    with VideoReader(clip, SamplingPolicy.parse("all"), limits) as r:
        assert r.budget_s is None and len(list(r.frames())) == 30


@pytest.mark.parametrize("sampling", ["fps:1000000000", "fps:1000.5"])
def test_absurd_sampling_rates_are_refused_at_config_load(sampling):
    with pytest.raises(ConfigError, match=r"decode\.sampling: .*more than 1000 frames per second; use 'all'"):
        load_config(AnnotateConfig, None, [f"decode.sampling={sampling}"])
    assert load_config(AnnotateConfig, None, ["decode.sampling=fps:1000"]).decode.sampling == "fps:1000"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", [SamplingPolicy("fps", 1e9), SamplingPolicy("uniform", 1e12)])
def test_a_fine_sampling_rate_yields_each_frame_once_without_spinning(clip, policy):
    """Before: the reader stepped through every sampling time between two frames (1e8 of them at
    fps:1e9 and 10 fps): about 14 minutes on this 3 s clip. Built directly: the config
    refuses fps:1e9, but uniform:K has no natural bound."""
    with VideoReader(clip, policy) as r:
        assert [f.index for f in r.frames()] == list(range(30))


def test_mien_annotate_reports_the_timeout_and_goes_on(asset, tmp_path):
    """Through the real CLI: the run completes (exit 0), the video is an error row of kind
    timeout, and the printed summary names it."""
    corpus = tmp_path / "in"
    corpus.mkdir()
    (corpus / "clip.mp4").write_bytes(asset("sample_single_face_video").read_bytes())
    out = tmp_path / "out"
    sets = [x for s in ["mlflow.enabled=false", "output.crops=false", *TINY_DEADLINE] for x in ("--set", s)]
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "annotate", "--input", str(corpus), "--output", str(out),
                        "--no-progress", *sets], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})  # a local run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 error" in r.stdout and "[timeout]" in r.stdout, r.stdout
    videos = pd.read_parquet(out / "videos")
    assert list(videos.error_kind) == ["timeout"] and list(videos.status) == ["error"]
