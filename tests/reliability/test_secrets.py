"""Secrets in the environment (AWS keys, a Ray token, MLflow credentials) never reach outputs,
run JSON, MLflow params/tags/artifacts, logs (ours and Ray's) or a Ray job submission."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.reliability.conftest import ROOT
from workflows.core import storage

pytestmark = pytest.mark.timeout(420)


def _secret_env() -> dict[str, str]:
    """Random values that cannot occur anywhere by chance. (MLFLOW_TRACKING_USERNAME is set too,
    but it is an identity, not a secret: MLflow records it as the run's ``mlflow.user``.)"""
    return {
        "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
        "AWS_SESSION_TOKEN": secrets.token_urlsafe(40),
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(24),
        "MLFLOW_TRACKING_TOKEN": secrets.token_urlsafe(24),
        "HF_TOKEN": "hf_" + secrets.token_hex(16),
    }


def _scan(paths: list[Path], values: dict[str, str]) -> list[str]:
    """``file: NAME`` for every file under ``paths`` that holds a secret value (raw bytes)."""
    hits = []
    needles = {k: v.encode() for k, v in values.items()}
    for root in paths:
        if root.is_file():
            files = [root]
        else:
            files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        for f in files:
            try:
                data = f.read_bytes()
            except OSError:
                continue
            hits += [f"{f}: {k}" for k, n in needles.items() if n in data]
    return hits


def test_no_secret_reaches_outputs_logs_or_mlflow(s3_server, s3_bucket, asset, tmp_path):
    values = _secret_env()
    storage.write_bytes(f"{s3_bucket}/in/face.jpg", asset("sample_single_face_jpg").read_bytes())
    storage.write_bytes(f"{s3_bucket}/in/broken.mp4", b"not a video")
    work = tmp_path / "cwd"  # the CLI's working dir: MLflow's default artifact root lands here
    work.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths must fit
    db = tmp_path / "mlflow.db"
    env = dict(os.environ, **values, MLFLOW_TRACKING_USERNAME="annotator",
               MLFLOW_TRACKING_URI=f"sqlite:///{db}", RAY_TMPDIR=str(ray_tmp), PYTHONPATH=str(ROOT),
               AWS_ENDPOINT_URL=s3_server)
    env.pop("RAY_ADDRESS", None)
    try:
        r = subprocess.run([sys.executable, "-m", "jobs.cli", "-v", "annotate", "--input", f"{s3_bucket}/in",
                            "--output", f"{s3_bucket}/out", "--no-progress", "--executor", "ray",  # + Ray's logs
                            "--set", "mlflow.experiment=secrets-test", "--set", "ray.faces.concurrency=1",
                            "--set", "ray.faces.num_cpus=0.5"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=360)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "videos: 1 ok, 1 error" in r.stdout
        (tmp_path / "stdout.txt").write_text(r.stdout)
        (tmp_path / "stderr.txt").write_text(r.stderr)
        out = tmp_path / "s3_out"
        fs, path = storage.filesystem(f"{s3_bucket}/out")
        fs.get(path, str(out), recursive=True)
        run_json = next((out / "runs").glob("*.json"))
        doc = json.loads(run_json.read_text())
        assert doc["counts"]["videos_ok"] == 1
        assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(doc)

        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{db}")
        exp = client.get_experiment_by_name("secrets-test")
        runs = client.search_runs([exp.experiment_id])
        assert len(runs) == 1
        logged = json.dumps({"params": runs[0].data.params, "tags": runs[0].data.tags})
        assert runs[0].data.params  # the config is there ...
        leaks = [k for k, v in values.items() if v in logged]
        assert not leaks, f"in MLflow params/tags: {leaks}"  # ... the credentials are not

        sessions = list(ray_tmp.glob("ray/session_2*"))  # $RAY_TMPDIR/ray/session_<date>
        assert sessions, "the CLI's embedded Ray wrote no session directory"
        hits = _scan([out, tmp_path / "stdout.txt", tmp_path / "stderr.txt", db, work, *sessions], values)
        assert not hits, "secret values found:\n" + "\n".join(hits)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_submit_payload_carries_no_secret(monkeypatch):
    """`mien submit` ships the repo and a few non-secret settings; credentials stay with the
    cluster (a job's runtime env and entrypoint are visible to everyone who can list jobs)."""
    from jobs import submit

    values = _secret_env()
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://annotator:{values['MLFLOW_TRACKING_PASSWORD']}"
                                              "@mlflow.example.com")
    sent: dict = {}

    class Recorder:
        def submit_job(self, **kwargs):
            sent.update(kwargs)
            return "raysubmit_test"

    monkeypatch.setattr(submit, "_client", lambda address: Recorder())
    import io

    buf = io.StringIO()
    job_args = ["--input", "s3://b/in", "--output", "s3://b/o"]
    assert submit.submit("annotate", "http://127.0.0.1:8265", job_args, out=buf) == 0
    payload = json.dumps(sent, default=str)
    assert "raysubmit_test" in buf.getvalue()
    forwarded = sent["runtime_env"]["env_vars"]
    assert forwarded["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert set(forwarded) <= set(submit.FORWARDED_ENV)  # not even the password-bearing MLflow URI
    leaks = [k for k, v in values.items() if v in payload]
    assert not leaks, f"in the job submission: {leaks}"
