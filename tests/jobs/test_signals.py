"""What `mien annotate` leaves behind. Stopped with SIGTERM (``kill``, a scheduler ending the job) it
exits cleanly: status 143, its lease released, and no process it started (local Ray's raylet, GCS,
agents and workers, or the local executor's worker processes) left running. Finished, it names the
MLflow store it wrote (by default a sqlite file in the working directory).

Real ``python -m jobs.cli annotate`` processes; every wait is on a process appearing or ending.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(600)


def _clips(asset, where: Path, n: int = 3) -> Path:
    where.mkdir()
    for i in range(n):
        shutil.copyfile(asset("sample_single_face_video"), where / f"clip{i}.mp4")
    return where


def _descendants_once(proc: psutil.Process, ready, timeout_s: float = 300) -> list[psutil.Process]:
    """The process tree under ``proc`` once ``ready(cmdlines)`` holds for it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
        tree, cmdlines = [], []
        for child in proc.children(recursive=True):
            try:
                cmdlines.append(" ".join(child.cmdline()))
                tree.append(child)
            except psutil.Error:
                pass
        if ready(cmdlines):
            return tree
        time.sleep(0.1)
    raise AssertionError("the run never got that far")


def _terminate_and_check(p: subprocess.Popen, tree: list[psutil.Process], out: Path) -> str:
    p.send_signal(signal.SIGTERM)
    said, _ = p.communicate(timeout=300)
    _, alive = psutil.wait_procs(tree, timeout=60)
    for leftover in alive:  # not ours to keep: the assertion below says what was left
        leftover.kill()
    assert p.returncode == 143, said
    assert "stopped by SIGTERM" in said
    assert not alive, [(q.pid, q.name()) for q in alive]
    assert not list((out / "_runs").glob("*.lease")), "the lease was not released"
    return said


def _annotate(input_dir: Path, out: Path, executor: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "annotate", "--input", str(input_dir), "--output", str(out),
         "--executor", executor, "--no-progress", "--set", "mlflow.enabled=false"],
        cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigterm_shuts_the_runs_local_ray_down(asset, tmp_path):
    """Before: Ray's own SIGTERM handler (or its core worker's crash handler) ended the driver with
    status 15 or a SIGABRT and a stack dump, and a SIGTERM during Ray's start left its agents
    running."""
    out = tmp_path / "out"
    p = _annotate(_clips(asset, tmp_path / "in"), out, "ray")
    try:
        tree = _descendants_once(psutil.Process(p.pid), lambda cmds: any("raylet" in c for c in cmds)
                                 and any("MapWorker" in c for c in cmds))
        sessions = {part.split("=", 1)[1] for q in tree if q.name() == "raylet"
                    for part in q.cmdline() if part.startswith("--session_dir=")}
        assert len(sessions) == 1, sessions
        said = _terminate_and_check(p, tree, out)
    finally:
        if p.poll() is None:
            p.kill()
    session = sessions.pop()
    remaining = []
    for q in psutil.process_iter(["pid", "cmdline"]):
        if session in " ".join(q.info["cmdline"] or []):
            remaining.append(q)
    assert not remaining, [q.info for q in remaining]
    assert "Traceback" not in said and "SIGTERM received" not in said  # no crash-handler stack dump


def test_sigterm_leaves_no_local_worker_behind(asset, tmp_path):
    """Before: the driver died on the signal (status -15) with its lease left in OUT/_runs/."""
    out = tmp_path / "out"
    p = _annotate(_clips(asset, tmp_path / "in"), out, "local")
    try:
        tree = _descendants_once(psutil.Process(p.pid), lambda cmds: any("spawn_main" in c for c in cmds))
        _terminate_and_check(p, tree, out)
    finally:
        if p.poll() is None:
            p.kill()


def test_the_summary_names_the_mlflow_store_it_created(asset, tmp_path):
    """Before: ./mlflow.db and ./mlartifacts/ appeared in the working directory without a word."""
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "annotate", "--input", str(_clips(asset, tmp_path / "in", 1)),
                        "--output", str(tmp_path / "out"), "--executor", "local", "--no-progress"],
                       cwd=work, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"mlflow: sqlite:///{work}/mlflow.db, experiment mien-annotate, run name " in r.stdout
    assert (work / "mlflow.db").is_file()
