import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_help_is_instant_and_imports_nothing_heavy():
    """Instant means no heavy import at start-up (a wall-clock bound would only measure the box)."""
    code = ("import sys; from jobs.cli import build_parser; build_parser(); "
            "print([m for m in ('torch','ray','transformers','mlflow','cv2','av','pyarrow') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "annotate" in r.stdout and "submit" in r.stdout


@pytest.mark.parametrize("path", sorted((ROOT / "jobs" / "configs" / "annotate").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_annotate_configs_validate(path):
    from workflows.annotate.pipeline import AnnotateConfig
    from workflows.core.config import load_config

    cfg = load_config(AnnotateConfig, path)
    assert cfg.decode.policy()
    first = path.read_text().splitlines()[0]
    assert first.startswith("# mien "), "each config starts with the command that runs it"


def test_mien_model_help_lists_its_actions():
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "model" in r.stdout
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "model", "--help"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert "usage: mien model" in r.stdout and "init" in r.stdout and "inspect" in r.stdout
    assert "mien model init jobs/configs/model/tiny_cpu.yaml" in r.stdout  # examples in the epilog


def test_mien_model_without_an_action_prints_its_help_and_exits_2(capsys):
    from jobs.cli import main

    assert main(["model"]) == 2
    assert "usage: mien model" in capsys.readouterr().out


def test_mien_model_init_writes_a_loadable_directory_that_inspect_describes(tmp_path, capsys):
    import json

    from jobs.cli import main
    from model import load_model
    from tests.model.conftest import face_batch

    config = ROOT / "jobs" / "configs" / "model" / "tiny_cpu.yaml"
    assert main(["model", "init", str(config), "--output", str(tmp_path / "m"), "--set", "seed=3"]) == 0
    model_id = capsys.readouterr().out.strip().splitlines()[-1]  # deepspeed may log to stdout first
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.model_id == model_id and loaded.config.seed == 3
    assert loaded.annotate(face_batch(2))["fe_probs"].shape == (2, 7)
    assert main(["model", "inspect", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["model_id"] == model_id


def test_mien_model_problems_exit_2_with_one_line(tmp_path, capsys):
    from jobs.cli import main

    assert main(["model", "inspect", str(tmp_path / "missing")]) == 2
    assert "mien model inspect: model directory not found" in capsys.readouterr().err
    assert main(["model", "init", str(tmp_path / "none.yaml"), "--output", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mien model: ") and "config file not found" in err


def test_permission_denied_names_the_fix_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    import workflows.corpus.reader
    import workflows.outputs.inspect  # noqa: F401 - bound to the real reader before the patch below
    from jobs.cli import main

    def denied(*args, **kwargs):
        raise PermissionError("Access Denied: s3://bucket/out/videos")

    monkeypatch.setattr(workflows.corpus.reader, "AnnotationOutput", denied)
    assert main(["inspect", "s3://bucket/out"]) == 2
    assert capsys.readouterr().err.strip() == ("mien inspect: Access Denied: s3://bucket/out/videos "
                                               "(check the path, its permissions or your S3 credentials)")

    def bug(*args, **kwargs):
        raise KeyError("fe_label")

    monkeypatch.setattr(workflows.corpus.reader, "AnnotationOutput", bug)
    with pytest.raises(KeyError):
        main(["inspect", "s3://bucket/out"])


class _AgentStartingClient:
    """The Ray Jobs client as a just-started cluster answers it: the job agent comes up late."""

    def __init__(self, failures: int, message: str = "Request failed with status code 500: No available agent "
                                                     "to submit job, please try again later."):
        self.failures, self.message, self.calls = failures, message, 0

    def submit_job(self, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(self.message)
        return "raysubmit_1"


def test_submit_waits_for_the_job_agent_with_bounded_retries():
    import io

    from jobs.submit import submit_when_ready

    err = io.StringIO()
    client = _AgentStartingClient(failures=2)
    assert submit_when_ready(client, wait_s=30, err=err, entrypoint="x") == "raysubmit_1" and client.calls == 3
    assert "job agent is not up yet" in err.getvalue()
    with pytest.raises(RuntimeError, match="No available agent"):  # bounded: gives up
        submit_when_ready(_AgentStartingClient(failures=100), wait_s=0.0, err=io.StringIO(), entrypoint="x")
    other = _AgentStartingClient(failures=1, message="Request failed with status code 400: bad runtime_env")
    with pytest.raises(RuntimeError, match="bad runtime_env"):  # other errors are not retried
        submit_when_ready(other, wait_s=30, err=io.StringIO(), entrypoint="x")
    assert other.calls == 1
