"""mien train on a pretrained VLM: LoRA on a tiny checkpoint's language model, on the colour task of
test_train.py, through the Ray-free recipe (LocalSession) and under Ray Train + DeepSpeed ZeRO-2
(2 workers, gloo). The tiny checkpoints' random LM head (init std 0.02) caps how far the loss can
fall (~6.7 -> ~6.1 nats), so the runs are short and the checks are that the loss falls, that the
exported directory references the base and holds only the adapters, and that it reloads to the
scores of the model that was trained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.workflows.training.test_train import ROOT, colour_records
from workflows.core.config import load_config
from workflows.training.instructions import instructions_from_records, write_instructions

STEPS = 8


def vlm_config(tmp: Path, *overrides: str):
    from workflows.training.config import TrainConfig

    return load_config(TrainConfig, ROOT / "jobs/configs/train/tiny_vlm_cpu.yaml", [
        "data.crop_size=32", "scaling.cpus_per_worker=0.5", f"max_steps={STEPS}", "evaluate.enabled=false",
        "mlflow.enabled=false", f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", *overrides])


def probe_faces(rows: int = 3) -> dict:
    rng = np.random.default_rng(5)
    return {"crop": rng.integers(0, 255, (rows, 32, 32, 3), dtype=np.uint8),
            "au_evidence": rng.random((rows, 23)).astype(np.float32),
            "fe_prior": rng.dirichlet(np.ones(7), rows).astype(np.float32),
            "age": np.array([25.0, np.nan, 60.0][:rows], np.float32), "gender": ["male", None, "female"][:rows],
            "track_key": np.arange(rows)}


def fe_scores(mllm):
    return mllm.score(mllm.face_inputs(probe_faces())).fe_logprobs


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    from model.vlm.tiny import build_tiny_vlm

    root = tmp_path_factory.mktemp("vlm-train")
    built = instructions_from_records(colour_records(root, per_class=16), tasks=["fe_category"], embed_images=True)
    write_instructions(built.table, str(root / "instructions"))
    return {"instructions": str(root / "instructions"),
            **{f: build_tiny_vlm(f, root / "bases" / f) for f in ("llava", "qwen2_vl")}}


def assert_references_base(output: Path, base: Path) -> dict:
    assert sorted(p.name for p in output.iterdir()) == ["lora.safetensors", "mien_model.json"]
    manifest = json.loads((output / "mien_model.json").read_text())
    assert manifest["components"]["vlm"]["source"] == str(base.resolve())
    assert "model.safetensors" in manifest["components"]["vlm"]["files"]
    return manifest


def test_the_recipe_tunes_a_vlm_and_exports_what_it_trained(data, tmp_path) -> None:
    """One process, no Ray: the exported directory reloads to the in-memory model's scores."""
    from model import load_model
    from workflows.training.config import deepspeed_json, resolve_deepspeed_config
    from workflows.training.recipe import FinetuneRecipe, LocalSession, TrainInputs
    from workflows.training.staging import open_run

    cfg = vlm_config(tmp_path, f"model.vlm.source={data['llava']}", "micro_batch_size=8")
    staged, _ = open_run(cfg, cfg.model, data["instructions"], str(tmp_path / "run"))
    inputs = TrainInputs(train=staged.train, val=staged.val, output=str(tmp_path / "model"), run_uri=staged.run_uri,
                         deepspeed=resolve_deepspeed_config(deepspeed_json(cfg.deepspeed), cfg, 1, bf16=False),
                         bf16=False, needs_crops=cfg.model.reads_pixels)
    recipe = FinetuneRecipe(cfg, inputs, LocalSession(tmp_path / "checkpoints"))
    recipe.setup()
    try:
        recipe.train()
        recipe.export()
        in_memory = fe_scores(recipe.mllm)
    finally:
        recipe.cleanup()
    losses = [h["loss"] for h in recipe.history]
    assert len(losses) == STEPS and losses[-1] < losses[0] - 0.3, losses
    assert recipe.final_metrics["val_loss"] < losses[0] - 0.3

    assert_references_base(tmp_path / "model", data["llava"])
    reloaded = fe_scores(load_model(str(tmp_path / "model")).mllm)
    assert float((reloaded - in_memory).abs().max()) < 1e-5
    zero_shot = fe_scores(load_model(str(data["llava"])).mllm)
    assert float((reloaded - zero_shot).abs().max()) > 1e-3


def test_an_init_from_model_without_adapters_names_the_fix(data, tmp_path) -> None:
    from model import init_from_base
    from workflows.training.recipe import FinetuneRecipe, LocalSession, TrainInputs

    init_from_base(str(data["llava"]), str(tmp_path / "zero-shot"))
    cfg = vlm_config(tmp_path, "model=null", f"init_from={tmp_path / 'zero-shot'}")
    inputs = TrainInputs(train="unused", val=None, output=str(tmp_path / "model"), run_uri=str(tmp_path / "run"),
                         deepspeed={}, bf16=False, needs_crops=True)
    with pytest.raises(ValueError, match="no trainable parameters.*vlm.lora.enabled=true"):
        FinetuneRecipe(cfg, inputs, LocalSession(tmp_path / "checkpoints")).setup()


@pytest.mark.parametrize("family,start,stage", [("llava", "config", "zero2"), ("qwen2_vl", "init_from", "zero2"),
                                               ("qwen2_vl", "config", "zero3")])
def test_lora_on_a_vlm_under_ray_train_deepspeed(local_ray, data, tmp_path, family, start, stage) -> None:
    """World size 2, gloo, ZeRO-2: from a model config with vlm.source (llava, with the final
    evaluation) or from `mien model init --base ... --set vlm.lora.enabled=true` (qwen2_vl); and
    ZeRO-3 (parameters partitioned across the ranks, gathered for the export) on qwen2_vl."""
    from model import init_from_base, load_model
    from workflows.training.ray_train import train

    base = data[family]
    if start == "config":
        cfg = vlm_config(tmp_path, f"model.vlm.source={base}", "evaluate.enabled=" + ("true" if family == "llava" else "false"),
                         f"deepspeed={stage}")
    else:
        model_config = tmp_path / "qwen_lora.yaml"
        model_config.write_text("name: qwen-faces\nvlm: {lora: {enabled: true, r: 8, alpha: 16, dropout: 0.0}}\n")
        init_from_base(str(base), str(tmp_path / "init"), str(model_config), overrides=["prior_weight=0.4"])
        cfg = vlm_config(tmp_path, "model=null", f"init_from={tmp_path / 'init'}")
    result = train(cfg, data["instructions"], str(tmp_path / "model"))
    losses = [h["loss"] for h in result.history]
    assert result.steps == STEPS and len(losses) == STEPS
    assert losses[-1] < losses[0] - 0.3, losses
    if family == "llava":
        assert result.eval_report["fe"]["n"] > 0  # the exported model was evaluated on the holdout

    assert_references_base(tmp_path / "model", base)
    model = load_model(str(tmp_path / "model"))
    assert model.model_id == result.model_id
    if start == "init_from":  # the architecture came from the initialised directory
        assert model.config.name == "qwen-faces" and model.config.prior_weight == 0.4
    lora_b = [p for n, p in model.mllm.llm.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.detach().abs().sum()) > 0 for p in lora_b)  # trained adapters, both ranks' steps
    zero_shot = fe_scores(load_model(str(base)).mllm)
    assert float((fe_scores(model.mllm) - zero_shot).abs().max()) > 1e-3
