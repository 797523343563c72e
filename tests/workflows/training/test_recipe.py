"""The training recipe without Ray: one plain process, a :class:`LocalSession` (a single-rank gloo
group, checkpoints in a local folder), DeepSpeed ZeRO-2 and the tiny CPU config on the colour task
of test_train.py (the colour of a synthetic face crop determines its expression label).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tests.workflows.training.test_train import colour_records, tiny_cpu
from workflows.core.faults import InjectedFailure
from workflows.training.instructions import instructions_from_records, write_instructions

STEPS = 8
FAIL_AT = 4


def _inputs(cfg, staged, output: str):
    from workflows.training.config import deepspeed_json, resolve_deepspeed_config
    from workflows.training.recipe import TrainInputs

    return TrainInputs(train=staged.train, val=staged.val, output=output, run_uri=staged.run_uri,
                       deepspeed=resolve_deepspeed_config(deepspeed_json(cfg.deepspeed), cfg, 1, bf16=False),
                       bf16=False, needs_crops=cfg.model.reads_pixels)


def _attempt(cfg, inputs, checkpoints: Path):
    """One attempt as a job runs it: setup, train, export, cleanup."""
    from workflows.training.recipe import FinetuneRecipe, LocalSession

    session = LocalSession(checkpoints)
    recipe = FinetuneRecipe(cfg, inputs, session)
    recipe.setup()
    try:
        recipe.train()
        recipe.export()
    finally:
        recipe.cleanup()
    return recipe, session


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An attempt that fails right after the checkpoint of step FAIL_AT, the same attempt again
    (it resumes), and an uninterrupted run of the same config to compare with."""
    from workflows.training.staging import open_run

    root = tmp_path_factory.mktemp("recipe")
    built = instructions_from_records(colour_records(root, per_class=16), tasks=["fe_category"],
                                      embed_images=True)
    write_instructions(built.table, str(root / "instructions"))
    cfg = tiny_cpu(root, f"max_steps={STEPS}", "micro_batch_size=8", "checkpoint.every_steps=100",
                   "evaluate.enabled=false",
                   f"testing.fail_at_step={FAIL_AT}")
    staged, _ = open_run(cfg, cfg.model, str(root / "instructions"), str(root / "run"))
    inputs = _inputs(cfg, staged, str(root / "model"))

    with pytest.raises(InjectedFailure, match="testing.fail_at_step"):
        _attempt(cfg, inputs, root / "checkpoints")
    exported_before_resume = (root / "model" / "mien_model.json").exists()
    resumed, session = _attempt(cfg, inputs, root / "checkpoints")

    whole_cfg = dataclasses.replace(cfg, testing=dataclasses.replace(cfg.testing, fail_at_step=0))
    whole_inputs = dataclasses.replace(inputs, output=str(root / "model-whole"), run_uri=str(root / "run-whole"))
    whole, _ = _attempt(whole_cfg, whole_inputs, root / "checkpoints-whole")
    return {"root": root, "resumed": resumed, "session": session, "whole": whole,
            "exported_before_resume": exported_before_resume, "run_uri": staged.run_uri}


def test_the_loss_falls(runs) -> None:
    losses = [h["loss"] for h in runs["whole"].history]
    assert len(losses) == STEPS
    assert losses[-1] < 0.6 * losses[0], losses  # seeds 0-2: 0.37-0.51 after 8 steps
    assert runs["whole"].final_metrics["val_loss"] < 0.6 * losses[0]


def test_a_failed_attempt_leaves_its_checkpoint_and_no_model(runs) -> None:
    ckpt = runs["root"] / "checkpoints" / f"checkpoint_{FAIL_AT:08d}"
    assert (ckpt / "deepspeed").is_dir()
    assert json.loads((ckpt / "mien_state.json").read_text())["state"]["step"] == FAIL_AT
    assert not runs["exported_before_resume"]


def test_a_rerun_resumes_from_the_checkpoint_at_the_right_step(runs) -> None:
    resumed, whole = runs["resumed"], runs["whole"]
    assert resumed.start_step == FAIL_AT and resumed.final_metrics["steps"] == STEPS
    assert [h["step"] for h in resumed.history] == list(range(FAIL_AT + 1, STEPS + 1))
    # weights, AdamW moments, LR schedule and the position in the epoch all come back: the resumed
    # steps are the uninterrupted run's steps
    tail = whole.history[FAIL_AT:]
    assert [h["lr"] for h in resumed.history] == pytest.approx([h["lr"] for h in tail])
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in tail], rel=1e-4)
    reported = [r["checkpoint"] for r in runs["session"].reports if r["checkpoint"]]
    assert [Path(c).name for c in reported] == [f"checkpoint_{STEPS:08d}"]  # the end of training


def test_the_exported_model_directory_loads(runs) -> None:
    from model import load_model

    final = runs["session"].reports[-1]["metrics"]
    outcome = json.loads((Path(runs["run_uri"]) / "mien" / "result.json").read_text())
    assert outcome["model_id"] == final["model_id"] and outcome["start_step"] == FAIL_AT
    assert outcome["steps"] == STEPS and outcome["world_size"] == 1

    model = load_model(str(runs["root"] / "model"))
    assert model.model_id == final["model_id"]
    batch = {"crop": np.full((2, 224, 224, 3), 128, np.uint8),
             "au_evidence": np.full((2, 23), np.nan), "fe_prior": np.full((2, 7), np.nan),
             "age": np.array([30.0, np.nan]), "gender": ["female", None], "track_key": np.array([0, 1])}
    out = model.annotate(batch)
    assert out["fe_probs"].shape == (2, 7) and np.allclose(out["fe_probs"].sum(1), 1, atol=1e-4)
