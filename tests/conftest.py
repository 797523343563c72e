"""Shared fixtures: a real S3 endpoint (moto server on 127.0.0.1), rendered media, assets."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("MIEN_CACHE_DIR", str(ROOT / ".cache" / "mien"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLCONFIGDIR", str(ROOT / ".cache" / "matplotlib"))


@contextlib.contextmanager
def environ(**values: str | None) -> Iterator[None]:
    """Set (``None``: unset) environment variables for the block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP endpoint on 127.0.0.1; yields its URL. Environment points s3fs at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    with environ(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                 AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1"):
        yield url
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket; yields ``s3://name``."""
    import uuid

    import boto3

    name = f"mien-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    import fsspec

    fsspec.filesystem("s3").invalidate_cache()
    return f"s3://{name}"


@pytest.fixture(scope="session")
def asset():
    """``asset(name) -> Path`` of a pinned file (fetched by `make test` into the cache)."""
    from workflows.core.assets import resolve

    return resolve


@pytest.fixture(scope="module")
def three_clips(tmp_path_factory) -> Path:
    """A corpus of three real clips (two copies of the smiling sample, one single face), one per
    module; read-only."""
    import shutil

    from workflows.core.assets import resolve

    d = tmp_path_factory.mktemp("clips")
    for name, asset in (("a_smile.mp4", "sample_smiling_video"), ("b_single.mp4", "sample_single_face_video"),
                        ("c_smile.mp4", "sample_smiling_video")):
        shutil.copyfile(resolve(asset), d / name)
    return d


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny composed model (``model.tiny.tiny_config``), built once per module; read-only."""
    from model import build_model, save_model
    from model.tiny import tiny_config

    out = tmp_path_factory.mktemp("models") / "tiny"
    save_model(build_model(tiny_config()), str(out))
    return out


@pytest.fixture
def tiny_registry(tiny_model_dir, tmp_path, monkeypatch) -> Iterator[str]:
    """A sqlite MLflow store holding ``mien-tiny`` version 1 (``tiny_model_dir``) at alias ``champion``,
    set as MLFLOW_TRACKING_URI for the test; yields its URI."""
    import mlflow

    from workflows.core.tracking import Tracker

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    with Tracker.start(tracking, "mien-tiny-registry", artifact_location=str(tmp_path / "artifacts")) as run:
        run.log_model_dir(str(tiny_model_dir), registered_model_name="mien-tiny", alias="champion")
    yield tracking
    mlflow.set_tracking_uri(None)
