"""workflows.core.tracking against a real MLflow: a sqlite store in a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workflows.core.config import ConfigError, load_config
from workflows.core.tracking import (
    MlflowConfig,
    Registry,
    Tracker,
    config_params,
    default_artifact_location,
    resolve_tracking_uri,
    store_exists,
)


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> str:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{tmp_path}/mlflow.db"


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


# ------------------------------------------------------------------------------ the store


def test_environment_wins_then_config_then_an_absolute_sqlite_default(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"  # never the file store
    assert resolve_tracking_uri("sqlite:///sub/m.db") == f"sqlite:///{tmp_path}/sub/m.db"  # Ray workers' cwd differs
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert resolve_tracking_uri("sqlite:///m.db") == "http://mlflow.internal:5000"


def test_new_experiments_get_an_explicit_artifact_location(tracking, tmp_path) -> None:
    assert not store_exists(tracking)
    with Tracker.start(tracking, "exp-default") as run:
        run.log_dict({"a": 1}, "x.json")
    assert store_exists(tracking)
    client = _client(tracking)
    exp = client.get_experiment_by_name("exp-default")
    assert exp.artifact_location == default_artifact_location(tracking) == str(tmp_path / "mlartifacts")
    assert (tmp_path / "mlartifacts").is_dir() and not (Path.cwd() / "mlruns").exists()
    with Tracker.start(tracking, "exp-explicit", artifact_location=str(tmp_path / "elsewhere")):
        pass
    assert client.get_experiment_by_name("exp-explicit").artifact_location == str(tmp_path / "elsewhere")
    assert default_artifact_location("http://127.0.0.1:5000") is None  # a server chooses


# ------------------------------------------------------------------------------ runs


def test_config_params_are_flat_and_never_hold_the_tracking_uri() -> None:
    config = {"decode": {"sampling": "fps:2", "limits": {"max_s": 10}}, "splits": {}, "seed": 0,
              "testing": {"fail_after": ""},
              "mlflow": {"tracking_uri": "postgresql://u:hunter2@db/mlflow", "experiment": "e"}}
    assert config_params(config) == {"decode.sampling": "fps:2", "decode.limits.max_s": 10, "splits": {},
                                     "seed": 0, "testing.fail_after": ""}
    assert "testing.fail_after" not in config_params(config, drop=("testing.",))


def test_a_run_records_params_metrics_tags_and_artifacts(tracking) -> None:
    with Tracker.start(tracking, "runs", run_name="r1", tags={"mien.job": "test"}) as run:
        run.log_params({**{f"p{i:03d}": i for i in range(150)}, "long": "x" * 7000, "none": None})
        for step, loss in ((1, 2.0), (2, 1.5)):
            run.log_metrics({"train/loss": loss, "note": "not a number", "missing": None}, step)
        run.set_tags({"mien.steps": 2})
        run.log_files({"plot.png": b"\x89PNG"}, "eval")
        run_id = run.run_id
    client = _client(tracking)
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "r1"
    assert len(r.data.params) == 152 and r.data.params["p149"] == "149" and r.data.params["none"] == "None"
    assert len(r.data.params["long"]) == 6000
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [(1, 2.0), (2, 1.5)]
    assert set(r.data.metrics) == {"train/loss"}
    assert r.data.tags["mien.job"] == "test" and r.data.tags["mien.steps"] == "2"
    assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/plot.png"]


def test_a_failed_run_is_found_and_reopened_by_its_tag(tracking) -> None:
    with pytest.raises(RuntimeError), Tracker.start(tracking, "cycles", tags={"mien.retrain_id": "rt-1"}):
        raise RuntimeError("crash")
    assert Tracker.find(tracking, "cycles", {"mien.retrain_id": "rt-2"}) is None
    run = Tracker.find(tracking, "cycles", {"mien.retrain_id": "rt-1"})
    assert run is not None and _client(tracking).get_run(run.run_id).info.status == "RUNNING"
    run.end("FINISHED")
    assert Tracker.reopen(tracking, run.run_id).run_id == run.run_id
    with pytest.raises(Exception, match="(?i)run"):
        Tracker.reopen(tracking, "0" * 32)  # another store's run


# ------------------------------------------------------------------------------ registry


def test_a_logged_model_dir_becomes_a_registered_version_with_an_alias(tracking, tmp_path) -> None:
    import mlflow

    model = tmp_path / "model"
    (model / "base").mkdir(parents=True)
    (model / "mien_model.json").write_text('{"model_id": "m1"}')
    (model / "base" / "lora.safetensors").write_bytes(b"\0" * 8)
    registry = Registry(tracking)
    assert registry.aliased_version("mien-tiny", "candidate") is None  # no such model yet
    with Tracker.start(tracking, "train") as run:
        first = run.log_model_dir(str(model), registered_model_name="mien-tiny", alias="candidate")
        unregistered = run.log_model_dir(str(model), artifact_path="copy")
    with Tracker.start(tracking, "train") as run2:
        second = run2.log_model_dir(str(model), registered_model_name="mien-tiny")
    assert first.uri == "models:/mien-tiny@candidate" and first.version == "1"
    assert unregistered.uri == f"runs:/{run.run_id}/copy" and unregistered.version is None
    assert second.uri == "models:/mien-tiny/2" and second.version == "2"
    assert registry.run_versions("mien-tiny", run.run_id) == ["1"]
    assert str(registry.aliased_version("mien-tiny", "candidate").version) == "1"
    source = registry.model_source("mien-tiny", "1")  # a local directory every worker can read
    assert sorted(p.relative_to(source).as_posix() for p in Path(source).rglob("*") if p.is_file()) == [
        "base/lora.safetensors", "mien_model.json"]

    registry.tag_version("mien-tiny", "2", {"mien.data_watermark": '{"a": "' + "x" * 9000 + '"}'})
    registry.set_alias("mien-tiny", "champion", "2")
    champion = registry.aliased_version("mien-tiny", "champion")
    assert str(champion.version) == "2" and len(champion.tags["mien.data_watermark"]) == 9009  # JSON kept whole
    assert registry.version("mien-tiny", "9") is None
    mlflow.set_tracking_uri(tracking)
    local = mlflow.artifacts.download_artifacts("models:/mien-tiny@champion", dst_path=str(tmp_path / "dl"))
    assert os.path.exists(os.path.join(local, "mien_model.json"))


# ------------------------------------------------------------------------------ the config


def _job_configs():
    from workflows.annotate.pipeline import AnnotateConfig
    from workflows.evaluation.evaluate import EvaluateConfig
    from workflows.retrain.cycle import load_retrain_config
    from workflows.training.config import load_train_config

    train = str(Path(__file__).resolve().parents[3] / "jobs" / "configs" / "train" / "tiny_cpu.yaml")
    return {"annotate": lambda o: load_config(AnnotateConfig, None, o),
            "evaluate": lambda o: load_config(EvaluateConfig, None, o),
            "train": lambda o: load_train_config(train, o),
            "retrain": lambda o: load_retrain_config(None, [f"train.config={train}", *o])}


@pytest.mark.parametrize(("job", "unused"), [("annotate", "alias=champion"), ("evaluate", "registered_model=x"),
                                             ("train", "run_id=abc"), ("retrain", "enabled=false")])
def test_each_job_keeps_its_experiment_and_rejects_settings_it_ignores(job, unused) -> None:
    load = _job_configs()[job]
    cfg = load(["mlflow.tracking_uri=sqlite:///m.db"])
    assert isinstance(cfg.mlflow, MlflowConfig) and cfg.mlflow.experiment == f"mien-{job}"
    assert cfg.mlflow.tracking_uri == "sqlite:///m.db"
    with pytest.raises(ConfigError, match=rf"mlflow\.{unused.split('=')[0]}: mien {job} does not use"):
        load([f"mlflow.{unused}"])
    with pytest.raises(ConfigError, match="mlflow.experimnt: unknown key"):
        load(["mlflow.experimnt=x"])
