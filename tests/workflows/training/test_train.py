"""mien train: configs, DeepSpeed config resolution, data staging, and real runs on CPU.

The runs use a real local Ray (2 CPUs, fractional worker CPUs so nothing waits for a CPU),
Ray Train's TorchTrainer with 2 workers, gloo, DeepSpeed ZeRO-2 / ZeRO-3 and a tiny model of
the full architecture (vision tower, face prior, FIM, LoRA). The task is learnable: the colour
of a synthetic face crop determines its expression label.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model import prompts
from workflows.core.config import ConfigError, load_config
from workflows.training.instructions import FERID_OPTIONS, instructions_from_records, write_instructions

ROOT = Path(__file__).resolve().parents[3]
TRAIN_CONFIGS = sorted((ROOT / "jobs" / "configs" / "train").glob("*.yaml"))
COLOURS = {"happiness": (220, 60, 60), "sadness": (60, 60, 220), "surprise": (60, 200, 60),
           "neutral": (200, 200, 200)}


def colour_records(root: Path, per_class: int = 24, size: int = 32, seed: int = 0) -> pd.DataFrame:
    """Labeled-dataset records whose PNG crop colour (plus noise) determines the expression."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for label, rgb in COLOURS.items():
        for i in range(per_class):
            pixels = np.clip(np.array(rgb)[None, None] + rng.normal(0, 20, (size, size, 3)), 0, 255)
            path = root / "images" / f"{label}_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            rows.append({"id": f"synth/{label}_{i:03d}", "dataset": "synth", "split": None, "media": "image",
                         "uri": str(path), "fe_label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def instructions(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("colours")
    built = instructions_from_records(colour_records(root), tasks=["fe_category"], embed_images=True)
    assert built.report["n_rows"] == 96
    write_instructions(built.table, str(root / "instructions"))
    return str(root / "instructions")


def tiny_cpu(tmp: Path, *overrides: str):
    from workflows.training.config import TrainConfig

    return load_config(TrainConfig, ROOT / "jobs/configs/train/tiny_cpu.yaml", [
        "data.crop_size=32", "scaling.cpus_per_worker=0.5", "epochs=2",
        f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", *overrides])


# ----------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_shipped_train_configs_load_and_validate(path: Path) -> None:
    from workflows.training.config import deepspeed_json, load_train_config, zero_stage

    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# mien train --config jobs/configs/train/{path.name} --data ")
    assert "--output" in first
    cfg = load_train_config(str(path))
    assert cfg.model is not None and (cfg.model.llm.lora.enabled or cfg.model.vlm.lora.enabled)
    stage = zero_stage(deepspeed_json(cfg.deepspeed))
    assert stage == (3 if "zero3" in path.name else 2)


def test_there_is_one_config_per_model_and_method() -> None:
    names = {p.name for p in TRAIN_CONFIGS}
    assert {"tiny_cpu.yaml", "default_prior_lora_zero2.yaml", "llama7b_clip_lora_zero2.yaml",
            "llama7b_clip_lora_zero3.yaml"} <= names


def test_config_errors_are_collected_and_named() -> None:
    from workflows.training.config import TrainConfig

    tiny = ROOT / "jobs/configs/train/tiny_cpu.yaml"
    with pytest.raises(ConfigError) as e:  # structure first: unknown keys and types
        load_config(TrainConfig, tiny, ["optim.lrr=1", "epochs=many"])
    assert "optim.lrr: unknown key (did you mean 'lr'?)" in str(e.value)
    assert "epochs: expected an integer" in str(e.value)
    with pytest.raises(ConfigError) as e:  # then every value problem at once
        load_config(TrainConfig, tiny, ["micro_batch_size=0", "deepspeed=zero9", "data.tasks=[dance]"])
    text = str(e.value)
    assert "3 configuration problem(s)" in text
    assert "micro_batch_size" in text and "zero9" in text and "data.tasks" in text
    with pytest.raises(ConfigError, match="exactly one of 'model'"):
        load_config(TrainConfig, None, [])


def test_cli_exits_2_on_config_errors(capsys) -> None:
    from jobs.cli import main

    assert main(["train", "--config", "jobs/configs/train/tiny_cpu.yaml", "--data", "x",
                 "--output", "y", "--set", "epochs=many"]) == 2
    assert "epochs: expected an integer" in capsys.readouterr().err


def test_deepspeed_autos_are_filled_and_conflicts_refused(tmp_path) -> None:
    from workflows.training.config import deepspeed_json, resolve_deepspeed_config

    cfg = tiny_cpu(tmp_path, "micro_batch_size=3", "gradient_accumulation_steps=2", "optim.max_grad_norm=0.5")
    ds = resolve_deepspeed_config(deepspeed_json("zero3"), cfg, world_size=4, bf16=True, hidden_size=64)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 24 and ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is True
    assert ds["zero_allow_untested_optimizer"] is True
    assert ds["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 640
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu=16"):
        explicit = {**deepspeed_json("zero2"), "train_micro_batch_size_per_gpu": 16}
        resolve_deepspeed_config(explicit, cfg, 2, False)
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"optimizer": {"type": "Adam"}, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ValueError, match="remove the 'optimizer'"):
        deepspeed_json(str(bad))


def test_lr_schedule_warms_up_then_decays() -> None:
    from workflows.training.recipe import lr_factor

    assert lr_factor(0, 100, 4, "cosine", 0.0) == pytest.approx(0.25)
    assert lr_factor(3, 100, 4, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(4, 100, 4, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(52, 100, 4, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 4, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(52, 100, 4, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(99, 100, 0, "constant", 0.0) == 1.0


def test_rank_shards_are_disjoint_deterministic_and_even() -> None:
    from workflows.training.recipe import _rank_indices

    a = _rank_indices(11, 2, 0, seed=1, epoch=0, shuffle=True, drop_last=True)
    b = _rank_indices(11, 2, 1, seed=1, epoch=0, shuffle=True, drop_last=True)
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    assert a == _rank_indices(11, 2, 0, seed=1, epoch=0, shuffle=True, drop_last=True)
    assert a != _rank_indices(11, 2, 0, seed=1, epoch=1, shuffle=True, drop_last=True)
    # evaluation pads so every rank runs the same number of forward passes (ZeRO-3 gathers are collective)
    c = _rank_indices(5, 2, 0, 0, 0, shuffle=False, drop_last=False)
    d = _rank_indices(5, 2, 1, 0, 0, shuffle=False, drop_last=False)
    assert len(c) == len(d) == 3 and set(c) | set(d) == set(range(5))


# --------------------------------------------------------------------------------- data staging


def test_training_questions_are_the_scoring_prompts(instructions) -> None:
    """The model is trained on exactly the question text it is scored with at annotate time."""
    from workflows.training.data import examples_from_instructions
    from workflows.training.instructions import read_instructions

    table = read_instructions(instructions)
    examples, report = examples_from_instructions(table, needs_crops=True)
    assert report["examples"] == 96 and report["tasks"] == {"fe_category": 96}
    row = examples.slice(0, 1).to_pylist()[0]
    assert row["question"] == prompts.fe_question(list(FERID_OPTIONS))
    assert row["answer"] in COLOURS and row["image"][:3] == b"\xff\xd8\xff"  # embedded as JPEG


def test_staging_splits_by_group_and_refuses_a_changed_config(instructions, tmp_path) -> None:
    from workflows.training.staging import open_run, run_uri_of

    cfg = tiny_cpu(tmp_path)
    output = str(tmp_path / "model")
    _, run_uri = run_uri_of(cfg, output)
    assert run_uri == f"{output}-checkpoints/run"
    staged, record = open_run(cfg, cfg.model, instructions, run_uri)
    counts = staged.report["examples"]
    assert counts["train"] + counts["val"] + staged.report["eval_faces"] == 96
    assert counts["train"] > 60 and staged.eval_faces and record["mlflow_run_id"] is None
    again, _ = open_run(cfg, cfg.model, instructions, run_uri)  # same config: reuse, no restaging
    assert again.train == staged.train and again.report == staged.report
    changed = tiny_cpu(tmp_path, "optim.lr=0.5")
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.01 -> 0\.5"):
        open_run(changed, changed.model, instructions, run_uri)
    # sections that do not change what is trained may differ on resume
    runtime_only = tiny_cpu(tmp_path, "checkpoint.every_steps=3", "evaluate.max_faces=5")
    open_run(runtime_only, cfg.model, instructions, run_uri)


def test_cpu_shm_comm_op_is_not_jit_compiled() -> None:
    import deepspeed.ops

    from workflows.training.recipe import skip_cpu_shm_comm_build

    assert skip_cpu_shm_comm_build() is True
    assert deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] is False


# ------------------------------------------------------------------------------ real training runs


def _losses(tracking: str, run_id: str, key: str = "train/loss") -> dict[int, float]:
    import mlflow

    return {m.step: m.value for m in mlflow.MlflowClient(tracking).get_metric_history(run_id, key)}


def test_zero2_interrupted_run_resumes_learns_and_registers_candidate(local_ray, instructions,
                                                                     tmp_path, monkeypatch) -> None:
    import mlflow

    from model import load_model
    from workflows.training.ray_train import TrainingError, train

    monkeypatch.chdir(tmp_path)
    output = "model"  # relative, as the README shows: it must land here, not in Ray's session directory
    cfg = tiny_cpu(tmp_path, "testing.fail_at_step=5", "checkpoint.every_steps=100")
    with pytest.raises(TrainingError, match="rerun the same command to resume"):
        train(cfg, instructions, output)
    run_dir = tmp_path / "model-checkpoints" / "run"
    assert (run_dir / "checkpoint_00000005" / "mien_state.json").exists()
    assert not (tmp_path / "model" / "mien_model.json").exists()

    result = train(cfg, instructions, output)  # the same command again: resumes from step 5
    assert result.output == str(tmp_path / "model") and (tmp_path / "model" / "mien_model.json").exists()
    assert result.start_step == 5 and result.steps == 18  # 2 epochs x 9 steps (72 examples / 2 x 4)
    assert [h["step"] for h in result.history] == list(range(6, 19))

    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    losses = _losses(tracking, result.mlflow_run_id)
    assert sorted(losses) == list(range(1, 19))  # both attempts logged into one MLflow run
    assert losses[18] < 0.35 * losses[1], losses
    assert result.val_loss is not None and result.val_loss < 0.5 * losses[1]
    assert result.eval_report["fe"]["accuracy"] >= 0.5  # colour -> label is being learned (chance: 0.25)
    client = mlflow.MlflowClient(tracking)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.params["optim.lr"] == "0.01" and run.data.params["deepspeed"] == "zero2"
    assert not [k for k in run.data.params if k.startswith("mlflow.")]  # a tracking URI may carry a password
    assert {"train/tokens_per_s", "train/samples_per_s", "train/lr", "val/loss", "eval/fe/accuracy"} <= set(
        run.data.metrics)
    assert run.data.tags["system.torch"] and run.data.tags["train.world_size"] == "2"
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id, "config")}
    assert {"config/train_config.yaml", "config/deepspeed.json"} <= artifacts
    eval_files = {a.path for a in client.list_artifacts(result.mlflow_run_id, "eval")}
    assert "eval/confusion_matrix.png" in eval_files

    version = client.get_model_version_by_alias("mien-tiny-cpu", "candidate")
    assert result.registered_uri == "models:/mien-tiny-cpu@candidate"
    assert str(version.version) == result.model_version  # TrainResult.model_version is a str
    assert version.tags["mien.model_id"] == result.model_id

    os.environ["MLFLOW_TRACKING_URI"] = tracking
    try:
        for uri in (output, "models:/mien-tiny-cpu@candidate"):  # what `mien annotate --model` loads
            model = load_model(uri)
            assert model.model_id == result.model_id
            batch = {"crop": np.full((2, 224, 224, 3), 128, np.uint8),
                     "au_evidence": np.full((2, 23), np.nan), "fe_prior": np.full((2, 7), np.nan),
                     "age": np.array([30.0, np.nan]), "gender": ["female", None],
                     "track_key": np.array([0, 1])}
            out = model.annotate(batch)
            assert out["fe_probs"].shape == (2, 7) and np.allclose(out["fe_probs"].sum(1), 1, atol=1e-4)
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_zero3_learns_and_exports_gathered_parameters(local_ray, instructions, tmp_path) -> None:
    from model import load_model
    from workflows.training.ray_train import train

    output = str(tmp_path / "model")
    cfg = tiny_cpu(tmp_path, "deepspeed=zero3", "max_steps=8", "evaluate.enabled=false",
                   "mlflow.enabled=false")
    result = train(cfg, instructions, output)
    losses = [h["loss"] for h in result.history]
    assert result.steps == 8 and len(losses) == 8
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.eval_report is None and result.mlflow_run_id is None
    mllm = load_model(output).mllm
    lora_b = [p for n, p in mllm.llm.named_parameters() if "lora_B" in n]
    # lora_B starts at zero: non-zero values prove the ZeRO-3 shards were gathered before export
    assert lora_b and all(float(p.detach().abs().sum()) > 0 for p in lora_b)


def test_the_summary_says_whether_training_helped_and_warns_on_stdout() -> None:
    from workflows.training.ray_train import TrainResult

    r = TrainResult(output="/m", model_id="m-v1+x", run_uri="/m-checkpoints/run", steps=18, start_step=0,
                    loss=0.5, val_loss=0.6, history=[{"step": 1, "loss": 2.0}, {"step": 18, "loss": 0.5}],
                    warnings=["no faces in split 'holdout': ..."])
    text = r.render()
    assert "training loss: 2.0000 at step 1 -> 0.5000 at step 18 (-75%)" in text
    assert "WARNING no faces in split 'holdout'" in text
