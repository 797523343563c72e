"""Credentials embedded in URIs (``https://user:password@host``, a token as the userinfo, a
presigned URL's signature) are masked everywhere mien writes or prints them: the run JSON,
MLflow params, tags and artifacts, logs, the printed summary and the HTML report. (Secrets
from the environment: test_secrets.py.)"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.reliability.conftest import ROOT
from tests.reliability.test_secrets import _scan
from workflows.core.redact import RedactingFilter, redact

pytestmark = pytest.mark.timeout(480)


@pytest.mark.parametrize(("text", "shown"), [
    ("http://user:s3cr3t@127.0.0.1:1/x.mp4", "http://user:***@127.0.0.1:1/x.mp4"),
    ("https://:s3cr3t@mlflow.example.com", "https://:***@mlflow.example.com"),
    ("https://ghp_s3cr3t@github.com/org/repo", "https://***@github.com/org/repo"),  # a bare token
    ("postgresql://mlflow:p@ss:word@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),  # raw '@'
    ("https://b.s3.amazonaws.com/k.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAX%2F20240101%2Fus"
     "&x-amz-security-token=IQo&X-Amz-Signature=ab12&v=1",
     "https://b.s3.amazonaws.com/k.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
     "&x-amz-security-token=***&X-Amz-Signature=***&v=1"),
    ("https://acct.blob.core.windows.net/c/v.mp4?sv=2022&sig=abc%3D#t=1", "https://acct.blob.core.windows.net/c/"
     "v.mp4?sv=2022&sig=***#t=1"),
    ("failed: API request to http://annotator:pw@127.0.0.1:9/api/2.0/x failed ('http://u:pw2@h/a', 'b')",
     "failed: API request to http://annotator:***@127.0.0.1:9/api/2.0/x failed ('http://u:***@h/a', 'b')"),
])
def test_redact_masks_uri_credentials(text, shown):
    assert redact(text) == shown
    assert redact(shown) == shown  # idempotent: redacting a written value again changes nothing


@pytest.mark.parametrize("text", [
    "ssh://git@github.com/org/repo",  # a user name, no secret
    "s3://bucket/faces/a@2x.png", "/data/clips/me@home.mp4", "mail annotator@example.com",
    "https://host/x?key=value&tokens=3", "decode.sampling=fps:2",
])
def test_redact_leaves_what_holds_no_credential(text):
    assert redact(text) == text


def test_redact_walks_config_trees():
    cfg = {"mlflow": {"tracking_uri": "https://u:pw@h"}, "roots": ["https://t0k@h/a", ("s3://b/k",)], "n": 3}
    assert redact(cfg) == {"mlflow": {"tracking_uri": "https://u:***@h"}, "roots": ["https://***@h/a", ("s3://b/k",)],
                           "n": 3}


def test_log_filter_masks_messages_arguments_and_tracebacks():
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tests.uri_credentials")
    logger.addHandler(handler)
    try:
        logger.warning("MLflow logging failed (%s)", "API request to https://annotator:pw1@h/api failed")
        try:
            raise ConnectionError("cannot reach https://annotator:pw2@h")
        except ConnectionError:
            logger.exception("tracking store")
    finally:
        logger.removeHandler(handler)
    text = buf.getvalue()
    assert "https://annotator:***@h/api" in text and "ConnectionError: cannot reach https://annotator:***@h" in text
    assert "pw1" not in text and "pw2" not in text


def test_report_values_are_masked_then_escaped():
    """Every value the HTML report takes from an output (video URIs, error messages) goes through esc()."""
    from workflows.outputs.report import esc

    assert esc("cannot open 'https://u:pw1@h/v.mp4?sig=a&b=2'") == \
        "cannot open &#x27;https://u:***@h/v.mp4?sig=***&amp;b=2&#x27;"


def test_tracker_masks_params_tags_and_artifacts(tmp_path):
    """What train / evaluate / retrain log through a Tracker: a data URI param, tags, the config as
    YAML text (its mlflow.tracking_uri) and dict artifacts, read back from a real MLflow store."""
    import yaml

    from workflows.core.tracking import Tracker

    pw = secrets.token_urlsafe(18)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = f"https://bucket.s3.amazonaws.com/out?X-Amz-Signature={pw}"
    config = {"mlflow": {"tracking_uri": f"https://annotator:{pw}@mlflow.example.com"}, "data": data}
    with Tracker.start(uri, "uri-credentials", tags={"mien.job": f"https://{pw}@host"}) as run:
        run.log_params({"data_uri": data})
        run.set_tags({"mien.data": data})
        run.log_text(yaml.safe_dump(config), "config/train_config.yaml")
        run.log_dict(config, "config/config.json")
    got = run.client.get_run(run.run_id).data
    assert got.params["data_uri"] == "https://bucket.s3.amazonaws.com/out?X-Amz-Signature=***"
    assert got.tags["mien.data"] == got.params["data_uri"] and got.tags["mien.job"] == "https://***@host"
    files = Path(run.client.download_artifacts(run.run_id, "config", str(tmp_path / "artifacts")))
    assert yaml.safe_load((files / "train_config.yaml").read_text())["mlflow"]["tracking_uri"] == \
        "https://annotator:***@mlflow.example.com"
    assert json.loads((files / "config.json").read_text())["data"] == got.params["data_uri"]
    assert not _scan([tmp_path], {"password": pw})


def _mien(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_no_uri_credential_reaches_outputs_logs_mlflow_or_report(asset, tmp_path):
    """A manifest whose rejected entries carry a password and a presigned URL's signature, a config
    tracking URI with a password (overridden by MLFLOW_TRACKING_URI): none of the three appears in
    the output, MLflow, Ray's logs, stdout/stderr or the report; the masked form does."""
    pw = {"entry_password": secrets.token_urlsafe(18), "url_signature": secrets.token_hex(32),
          "url_credential": "AKIA" + secrets.token_hex(8).upper(), "config_password": secrets.token_urlsafe(18)}
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copyfile(asset("sample_single_face_jpg"), corpus / "face.jpg")
    manifest = corpus / "manifest.csv"
    manifest.write_text("uri\nface.jpg\n"
                        f"http://user:{pw['entry_password']}@127.0.0.1:1/x.mp4\n"
                        f"https://bucket.s3.amazonaws.com/clip.mp4?X-Amz-Credential={pw['url_credential']}"
                        f"%2F20240101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature={pw['url_signature']}\n")
    out, work, db = tmp_path / "out", tmp_path / "cwd", tmp_path / "mlflow.db"
    work.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths must fit
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{db}", RAY_TMPDIR=str(ray_tmp), PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    try:
        r = _mien(["-v", "annotate", "--input", str(manifest), "--output", str(out), "--no-progress",
                   "--executor", "ray", "--set", "mlflow.experiment=uri-credentials",
                   "--set", f"mlflow.tracking_uri=https://annotator:{pw['config_password']}@mlflow.example.com",
                   "--set", "ray.faces.concurrency=1", "--set", "ray.faces.num_cpus=0.5"], work, env)
        assert "videos: 1 ok" in r.stdout
        assert "http://user:***@127.0.0.1:1/x.mp4" in r.stdout  # the user still sees which entry was refused
        assert "X-Amz-Signature=***" in r.stdout
        report = _mien(["report", "--input", str(out)], work, env)
        (tmp_path / "logs").mkdir()
        for name, text in {"annotate.out": r.stdout, "annotate.err": r.stderr, "report.out": report.stdout,
                           "report.err": report.stderr}.items():
            (tmp_path / "logs" / name).write_text(text)

        doc = json.loads(next((out / "runs").glob("*.json")).read_text())
        assert doc["config"]["mlflow"]["tracking_uri"] == "https://annotator:***@mlflow.example.com"
        assert [e["entry"] for e in doc["rejected"]][0] == "http://user:***@127.0.0.1:1/x.mp4"

        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{db}")
        (run,) = client.search_runs([client.get_experiment_by_name("uri-credentials").experiment_id])
        artifacts = Path(client.download_artifacts(run.info.run_id, "runs", str(tmp_path / "artifacts")))
        assert json.loads(next(artifacts.glob("*.json")).read_text())["rejected"]  # the run JSON is logged ...
        logged = json.dumps({"params": run.data.params, "tags": run.data.tags})
        assert not [k for k, v in pw.items() if v in logged]  # ... and nothing in MLflow holds a credential

        sessions = list(ray_tmp.glob("ray/session_2*"))
        assert sessions, "the job ran without Ray: no session directory"
        assert (out / "report.html").is_file()
        hits = _scan([out, db, tmp_path / "mlartifacts", tmp_path / "logs", work, *sessions], pw)
        assert not hits, "URI credentials found:\n" + "\n".join(hits)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    # An unreachable tracking server whose URI carries the password: MLflow's error quotes the URI.
    tracking_pw = secrets.token_urlsafe(18)
    env.update(MLFLOW_TRACKING_URI=f"http://annotator:{tracking_pw}@127.0.0.1:1", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    r = _mien(["annotate", "--input", str(manifest), "--output", str(out), "--no-progress"], work, env)
    assert "MLflow logging failed" in r.stderr and "http://annotator:***@127.0.0.1:1" in r.stderr
    assert tracking_pw not in r.stdout + r.stderr
    assert not _scan([out], {"tracking_password": tracking_pw})
