"""Face-prior tokens in a pretrained VLM (``vlm.prior_tokens``): placed right after the image, read by the
VLM, trained with the LoRA adapters, saved as a part and reloaded to the same scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model import build_model, load_model, save_model
from model.config import config_from_dict
from workflows.core.config import ConfigError

from .test_vlm_facial import face_batch
from .test_vlm_tuning import example_rows, scores, trained, tuned_config


def shuffled_prior(batch: dict) -> dict:
    """The same faces with each other's face-stage measurements."""
    return {**batch, "au_evidence": batch["au_evidence"][::-1].copy(), "fe_prior": batch["fe_prior"][::-1].copy()}


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3"])
def test_prior_tokens_follow_the_image_and_carry_the_prior(tiny_vlms, family):
    """With the prior left out of the prompt text, the scores still follow the face prior: it reaches the
    VLM through the N tokens inserted right after the image, and nowhere else."""
    on = build_model(tuned_config(tiny_vlms[family], prior_tokens=3)).eval()
    off = build_model(tuned_config(tiny_vlms[family])).eval()
    for m in (on, off):
        m.cfg.prompt.prior_as_text = False
    batch = face_batch()

    inputs, prior = on._prefill_inputs(on.face_inputs(batch))
    plain, none = off._prefill_inputs(off.face_inputs(batch))
    assert none is None
    for i in range(3):
        at = prior.mask[i].nonzero().flatten().tolist()
        assert len(at) == 3 and at == list(range(at[0], at[0] + 3))
        ids = inputs["input_ids"][i].tolist()
        assert ids[:at[0]] + ids[at[-1] + 1:] == plain["input_ids"][i].tolist()  # nothing else moved
        image = on.vlm.config.image_token_id
        assert image in ids[at[0] - 3:at[0]] and image not in ids[at[-1]:]  # right after the image

    differ = float((scores(on, batch)[0] - scores(on, shuffled_prior(batch))[0]).abs().max())
    same = float((scores(off, batch)[0] - scores(off, shuffled_prior(batch))[0]).abs().max())
    assert differ > 1e-3 and same < 1e-6
    on.cfg.generation.max_new_tokens = 3
    assert all(isinstance(t, str) for t in on.generate(on.face_inputs(batch)))


def test_training_with_prior_tokens_lowers_the_loss(tiny_vlms):
    """A short in-process CPU run (AdamW over ``trainable_parameters``, as the recipe does): the
    prior-token module is trained with the adapters, and the answer loss falls (the tiny checkpoints'
    random LM head caps it near 6.1 nats, see tests/workflows/training/test_train_vlm.py)."""
    mllm = build_model(tuned_config(tiny_vlms["qwen2_vl"], prior_tokens=4))
    names = [n for n, _ in mllm.trainable_parameters()]
    assert any(n.startswith("prior_tokens.encoder.") for n in names)
    assert any(n.startswith("prior_tokens.fim.qformer.") for n in names)
    rows = example_rows(list(mllm.cfg.prompt.fe_classes), n=4)
    batch = mllm.collate(rows)
    optim = torch.optim.AdamW([p for _, p in mllm.trainable_parameters()], lr=1e-2)
    mllm.train()
    losses = []
    for _ in range(10):
        loss = mllm(batch).loss
        optim.zero_grad()
        loss.backward()
        if not losses:  # the loss reaches the learned queries and the encoder of a measured group
            grads = dict((n, p.grad) for n, p in mllm.trainable_parameters())
            for name in ("prior_tokens.fim.qformer.queries", "prior_tokens.encoder.mlps.fe_prior.0.weight"):
                assert float(grads[name].abs().max()) > 0
        optim.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.3, losses


def test_prior_tokens_are_saved_as_a_part_and_reload_to_the_same_scores(tiny_vlms, tmp_path):
    base = tiny_vlms["llava"]
    mllm = trained(build_model(tuned_config(base, prior_tokens=4)))
    model_id = save_model(mllm, str(tmp_path / "m"))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["lora.safetensors", "mien_model.json",
                                                                   "prior_tokens.safetensors"]
    manifest = json.loads((tmp_path / "m" / "mien_model.json").read_text())
    assert manifest["architecture"]["vlm"]["prior_tokens"] == 4 and "prior_tokens" in manifest["parts"]

    loaded = load_model(str(tmp_path / "m"))
    assert loaded.model_id == model_id
    for a, b in zip(scores(mllm), scores(loaded.mllm), strict=True):
        assert float((a - b).abs().max()) < 1e-5
    fresh = build_model(tuned_config(base, prior_tokens=4)).eval()
    assert float((scores(fresh)[0] - scores(loaded.mllm)[0]).abs().max()) > 1e-3  # the part was loaded


def test_init_lists_prior_tokens_as_fresh_and_starts_them_the_same_at_every_load(tiny_vlms, tmp_path, capsys):
    from jobs.cli import main

    out = tmp_path / "m"
    assert main(["model", "init", "--base", str(tiny_vlms["qwen2_vl"]), "--output", str(out),
                 "--set", "vlm.prior_tokens=2"]) == 0
    manifest = json.loads((out / "mien_model.json").read_text())
    assert manifest["fresh_parts"] == ["prior_tokens"] and manifest["parts"] == {}
    first, second = scores(load_model(str(out)).mllm), scores(load_model(str(out)).mllm)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    capsys.readouterr()
    assert main(["model", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert json.loads(text[text.index("{"):])["kind"] == "pretrained VLM, untrained prior_tokens"


def test_prior_token_configs_that_cannot_work_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"prior_tokens: go into a pretrained VLM's input \(set vlm.source\)"):
        config_from_dict({"vlm": {"prior_tokens": 4}})
    with pytest.raises(ConfigError, match="turn off face_prior.enabled; vlm.prior_tokens gives a VLM the face prior"):
        config_from_dict({"vlm": {"source": "/d"}, "llm": {"enabled": False}, "face_prior": {"enabled": True}})
    with pytest.raises(ConfigError, match="made from face_prior.inputs; list at least one"):
        config_from_dict({"vlm": {"source": "/d", "prior_tokens": 2}, "llm": {"enabled": False},
                          "face_prior": {"inputs": []}})
    with pytest.raises(ConfigError, match="prior_tokens"):
        config_from_dict({"vlm": {"source": "/d", "prior_tokens": -1}, "llm": {"enabled": False}})
    cfg = config_from_dict({"vlm": {"source": "/d", "prior_tokens": 2}, "llm": {"enabled": False}})
    assert cfg.vlm.trained_parts == ("prior_tokens",)


def test_unmeasured_faces_get_finite_prior_tokens(tiny_vlms):
    """A face the face stage measured nothing on (all NaN) still scores: its tokens come from the
    Q-Former's always-present memory slot, never from NaN."""
    mllm = build_model(tuned_config(tiny_vlms["llava"], prior_tokens=2)).eval()
    batch = {**face_batch(), "au_evidence": np.full((3, 23), np.nan, np.float32),
             "fe_prior": np.full((3, 7), np.nan, np.float32), "age": np.full(3, np.nan, np.float32),
             "gender": [None] * 3}
    fe, au = scores(mllm, batch)
    assert torch.isfinite(fe).all() and torch.isfinite(au).all()
