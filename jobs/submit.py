"""``mien submit`` / ``mien jobs``: run a mien job on a Ray cluster through the Ray Jobs API.

The repository is shipped as the job's ``working_dir`` (so ``workflows``, ``model`` and
``jobs`` import on every node without installation); the entrypoint is the same CLI.
Ray 2.60 clusters use token auth: when ``RAY_AUTH_MODE`` is unset and a token is available
(``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``), the client switches to token mode itself.
Secrets are never put into the runtime env (it is visible in the job's metadata); the
cluster's nodes get credentials from their own environment or instance role.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from pathlib import Path

JOBS = ("annotate", "train", "evaluate", "retrain")
REPO_ROOT = Path(__file__).resolve().parents[1]
EXCLUDES = [".venv", ".cache", ".git", "demo-output", "mlruns", "mlartifacts", "*.db", "__pycache__", ".pytest_cache",
            ".ruff_cache", "*.egg-info"]
# Non-secret settings forwarded to the job; credentials stay with the cluster.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "MIEN_ASSETS_DIR", "MLFLOW_EXPERIMENT_NAME", "MIEN_OFFLINE")


def enable_token_auth_if_available() -> bool:
    if os.environ.get("RAY_AUTH_MODE"):
        return os.environ["RAY_AUTH_MODE"].lower() == "token"
    token_file = Path.home() / ".ray" / "auth_token"
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or token_file.exists():
        os.environ["RAY_AUTH_MODE"] = "token"
        return True
    return False


def _client(address: str):
    enable_token_auth_if_available()
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:
        raise ConnectionError(f"cannot reach the Ray job server at {address} ({type(e).__name__}: {e}); "
                              f"check --address (http://HEAD:8265) and that the dashboard is up. If the "
                              f"cluster uses token auth, set RAY_AUTH_TOKEN or put the token in "
                              f"~/.ray/auth_token") from e


def _forwarded_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and "@" not in uri:  # a URI with user:password@ stays out of job metadata
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def submit(job: str, address: str, job_args: list[str], wait: bool = False,
           working_dir: str | None = None, out=sys.stdout) -> int:
    """Submit ``mien <job> <job_args>``; print the job id; with ``wait`` stream logs and
    return 0 only when the job SUCCEEDED."""
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}; one of {', '.join(JOBS)}")
    client = _client(address)
    entrypoint = f"python -m jobs.cli {job} {shlex.join(job_args)}".strip()
    runtime_env = {"working_dir": working_dir or str(REPO_ROOT), "excludes": EXCLUDES}
    env = _forwarded_env()
    if env:
        runtime_env["env_vars"] = env
    job_id = submit_when_ready(client, entrypoint=entrypoint, runtime_env=runtime_env,
                               metadata={"mien_job": job})
    print(job_id, file=out, flush=True)
    if not wait:
        return 0
    return follow(client, job_id, out)


# A cluster that has just started answers on its dashboard port before its job agent is up; the
# Jobs API then says "No available agent to submit job, please try again later" (HTTP 500).
AGENT_NOT_READY = "No available agent"
AGENT_WAIT_S = float(os.environ.get("MIEN_SUBMIT_AGENT_WAIT_S", "120"))


def submit_when_ready(client, wait_s: float = AGENT_WAIT_S, err=sys.stderr, **kwargs) -> str:
    """``client.submit_job(**kwargs)``, retried with backoff for up to ``wait_s`` seconds while the
    cluster's job agent is not up yet; any other error, or the agent still missing, raises."""
    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as e:
            if AGENT_NOT_READY not in str(e) or time.monotonic() + delay > deadline:
                raise
            print(f"mien submit: the cluster's job agent is not up yet; retrying in {delay:.1f} s", file=err,
                  flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def follow(client, job_id: str, out=sys.stdout) -> int:
    import asyncio  # not at module level: `mien --help` registers `mien submit` (jobs.commands.submit)

    from ray.job_submission import JobStatus

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", file=out, flush=True)

    with contextlib.suppress(Exception):  # log streaming is best effort; the status decides the exit code
        asyncio.run(tail())
    while True:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(1)
    info = client.get_job_info(job_id)
    print(f"job {job_id}: {status.value}" + (f" ({info.message})" if info.message and status != JobStatus.SUCCEEDED
                                             else ""), file=out, flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


def list_jobs(address: str, limit: int = 20, out=sys.stdout) -> int:
    client = _client(address)
    jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0, reverse=True)[:limit]
    print(f"{'submission id':32s} {'status':10s} {'job':9s} {'started':19s} entrypoint", file=out)
    for j in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((j.start_time or 0) / 1000))
        print(f"{(j.submission_id or j.job_id or ''):32s} {j.status.value:10s} "
              f"{(j.metadata or {}).get('mien_job', '-'):9s} {started} {j.entrypoint[:80]}", file=out)
    return 0
