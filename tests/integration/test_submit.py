"""`mien submit` against a real `ray start --head` on loopback (token auth on, as Ray 2.60 does)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

pytestmark = pytest.mark.timeout(600)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '')}", RAY_AUTH_MODE="token")
    temp = tmp_path_factory.mktemp("ray")
    dash = _port()
    cmd = [os.path.join(bindir, "ray"), "start", "--head", f"--port={_port()}", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", "--include-dashboard=true",
           f"--temp-dir={temp}", "--disable-usage-stats"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", dash), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    yield address, env
    _stop_cluster(str(temp))


def _stop_cluster(temp_dir: str) -> None:
    """Stop only this test's Ray: `ray stop` would kill every Ray process on the machine,
    including other clusters (and the drivers attached to them)."""
    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in (p.info["cmdline"] or [])):
                procs.append(p)
        except psutil.Error:
            continue
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def test_submit_annotate_and_wait(ray_head, tmp_path, asset):
    address, env = ray_head
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copyfile(asset("sample_single_face_jpg"), corpus / "face.jpg")
    (corpus / "broken.mp4").write_text("nope")
    out = tmp_path / "out"
    env = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}  # the client must find token auth itself
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "submit", "annotate", "--address", address, "--wait",
                        "--", "--input", str(corpus), "--output", str(out), "--no-progress",
                        "--set", "mlflow.enabled=false"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    job_id = r.stdout.strip().splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert "SUCCEEDED" in r.stdout and "videos: 1 ok, 1 error" in r.stdout
    v = pd.read_parquet(out / "videos")
    assert sorted(v.status) == ["error", "ok"]
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "jobs", "--address", address], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and job_id in r.stdout and "annotate" in r.stdout


def test_failing_job_gives_nonzero_exit(ray_head, tmp_path):
    address, env = ray_head
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "submit", "annotate", "--address", address, "--wait",
                        "--", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "FAILED" in r.stdout


def test_unreachable_address_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "submit", "annotate", "--address",
                        f"http://127.0.0.1:{_port()}", "--", "--input", "x", "--output", "y"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot reach the Ray job server" in r.stderr
