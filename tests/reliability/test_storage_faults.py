"""Storage faults: S3 in and out through a fault-injecting proxy in front of the moto server.

Transient faults (503 SlowDown / 500, connection resets, bodies cut mid-stream, delays) hit
the driver's listing and Parquet writes and the Ray workers' ranged video reads alike; the
retry layers (botocore: 5 attempts, legacy mode; s3fs: 5 attempts for dropped connections,
truncated bodies and SlowDown; mien's storage.with_retries: 5 attempts with exponential
backoff and jitter) must absorb them. Permanent faults must end with a clear message.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import environ
from tests.reliability.conftest import (
    ROOT,
    annotate_cfg,
    check_contract,
    faces_per_video,
    local_ray,
    videos_table,
)
from tests.reliability.faultproxy import FaultPlan, FaultProxy
from workflows.annotate.pipeline import annotate
from workflows.core import storage

pytestmark = pytest.mark.timeout(420)
NAMES = ["clip00.mp4", "clip01.mp4", "still.jpg", "noface.mp4"]


@pytest.fixture(scope="module")
def proxy(s3_server):
    """The proxy, and a Ray whose workers reach S3 only through it."""
    with FaultProxy(s3_server) as p, local_ray(AWS_ENDPOINT_URL=p.url):
        yield p


@pytest.fixture
def s3_corpus(proxy, s3_bucket, face_corpus):
    proxy.set_plan(FaultPlan())
    for n in NAMES:
        storage.write_bytes(f"{s3_bucket}/in/{n}", (face_corpus / n).read_bytes())
    return f"{s3_bucket}/in"


def _local_copy(uri: str, dest) -> str:
    fs, path = storage.filesystem(uri)
    fs.get(path, str(dest), recursive=True)
    return str(dest)


def test_transient_faults_are_retried_and_output_is_complete(proxy, s3_corpus, s3_bucket, reference_faces,
                                                             tmp_path):
    out = f"{s3_bucket}/out"
    # Every third request fails: 503/500, a reset, a body cut in half (GETs) or a delay, in turn.
    proxy.set_plan(FaultPlan(every=3, delay_s=0.3, max_faults=200, duration_s=240, seed=11))
    summary = annotate(s3_corpus, out, annotate_cfg(tmp_path), progress=False)
    stats = dict(proxy.stats)
    proxy.set_plan(FaultPlan())
    assert summary.videos_ok == len(NAMES) and summary.videos_error == 0, (summary.render(), stats)
    assert all(stats.get(k, 0) >= 2 for k in ("error", "reset", "truncate", "delay")), stats
    assert proxy.faults_injected >= 12, stats
    local = _local_copy(out, tmp_path / "out")
    check_contract(local)
    assert faces_per_video(local) == {n: reference_faces[n] for n in NAMES}
    assert len(videos_table(local)) == len(NAMES)
    print("faults injected:", stats)


@pytest.mark.slow  # two annotate runs; the CLI test below covers the message and exit code fast
def test_permanent_403_mid_run_names_the_object_then_rerun_completes(proxy, s3_corpus, s3_bucket,
                                                                      reference_faces, tmp_path):
    """Writes of videos/ parts are denied (e.g. a bucket policy changed mid-run): the run stops
    with a PermissionError naming the part; the faces part it had written is an orphan that
    the rerun removes, and the rerun (permission restored) is complete and exact."""
    out = f"{s3_bucket}/out"
    cfg = annotate_cfg(tmp_path, "output.flush_every_videos=2")
    bucket = s3_bucket.split("://", 1)[1]
    proxy.set_plan(FaultPlan(forbidden_prefix=f"{bucket}/out/videos/", forbidden_methods=("PUT",)))
    with pytest.raises(PermissionError) as ei:
        annotate(s3_corpus, out, cfg, progress=False)
    assert "Access Denied" in str(ei.value) and f"{bucket}/out/videos/" in str(ei.value)
    assert proxy.stats["forbidden"] >= 1
    assert storage.list_files(f"{out}/faces", (".parquet",))  # written before the commit marker failed
    proxy.set_plan(FaultPlan())
    again = annotate(s3_corpus, out, cfg, progress=False)
    assert again.videos_ok == len(NAMES) and again.videos_skipped == 0
    local = _local_copy(out, tmp_path / "out")
    check_contract(local)
    assert faces_per_video(local) == {n: reference_faces[n] for n in NAMES}


def _cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=ROOT, env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=300)


def test_cli_permanent_faults_give_clear_message_and_nonzero_exit(proxy, s3_corpus, s3_bucket):
    bucket = s3_bucket.split("://", 1)[1]
    args = ["annotate", "--input", s3_corpus, "--output", f"{s3_bucket}/out", "--no-progress",
            "--set", "mlflow.enabled=false"]
    proxy.set_plan(FaultPlan(forbidden_prefix=f"{bucket}/out"))
    r = _cli(args, AWS_ENDPOINT_URL=proxy.url)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"output is not writable: {s3_bucket}/out" in r.stderr and "Access Denied" in r.stderr
    assert "Traceback" not in r.stderr
    proxy.set_plan(FaultPlan(forbidden_prefix=f"{bucket}/in"))
    r = _cli(args, AWS_ENDPOINT_URL=proxy.url)
    assert r.returncode == 2 and f"input is not readable: {s3_corpus}" in r.stderr, r.stdout + r.stderr
    # A 503 outage that outlasts every retry layer (shortened here) is reported, not a traceback.
    proxy.set_plan(FaultPlan(error_rate=1.0))
    r = _cli(args, AWS_ENDPOINT_URL=proxy.url, MIEN_STORAGE_RETRIES="2", MIEN_STORAGE_RETRY_DELAY_S="0.05",
             AWS_MAX_ATTEMPTS="2")
    proxy.set_plan(FaultPlan())
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr  # docs/RELIABILITY.md row 9
    assert f"{s3_bucket}/out" in r.stderr


def test_s3_errors_classified_through_the_s3fs_translation():
    """s3fs turns a botocore ClientError into a bare OSError; the cause chain still tells."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    def translated(code: str, status: int) -> BaseException:
        err = ClientError({"Error": {"Code": code, "Message": "Please reduce your request rate."},
                           "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
        return translate_boto_error(err)

    assert storage.is_transient(translated("SlowDown", 503))
    assert storage.is_transient(translated("InternalError", 500))
    assert not storage.is_transient(translated("AccessDenied", 403))
    assert not storage.is_transient(translated("InvalidArgument", 400))
    with environ(AWS_ENDPOINT_URL="http://127.0.0.1:9"):
        assert storage.s3_storage_options()["endpoint_url"] == "http://127.0.0.1:9"
