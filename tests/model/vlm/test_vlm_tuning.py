"""Tuning a pretrained VLM: the training batch reads the scoring prompt, LoRA sits on the language model
only, and model directories reference the base (URI + sha256, never a copy) and hold only trained parts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from model import load_model, prompts, save_model
from model.config import config_from_dict
from model.face_batch import build_face_batch
from model.model_dir import ArchitectureMismatchError, ChecksumError

from .test_vlm_facial import face_batch


def tuned_config(base: Path, **vlm) -> object:
    return config_from_dict({"name": "tuned", "llm": {"enabled": False}, "prior_weight": 0.5,
                             "vlm": {"source": str(base), "lora": {"enabled": True, "r": 4, "alpha": 8,
                                                                   "dropout": 0.0}, **vlm}})


def example_rows(classes: list[str], n: int = 3, seed: int = 0) -> list[dict]:
    """Training rows as ``workflows.training.data.ExampleDataset`` yields them (FE category turns)."""
    rng = np.random.default_rng(seed)
    return [{"crop": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
             "au_evidence": rng.random(23).astype(np.float32), "fe_prior": rng.dirichlet(np.ones(7)).astype(np.float32),
             "age": [30.0, None, 50.0][i % 3], "gender": ["female", None, "male"][i % 3],
             "question": prompts.fe_question(classes), "answer": classes[i % len(classes)]} for i in range(n)]


def trained(mllm, seed: int = 1):
    """``mllm`` with its trainable parameters moved off their initialisation, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in mllm.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return mllm.eval()


def scores(mllm, batch=None):
    out = mllm.score(mllm.face_inputs(batch or face_batch()))
    return out.fe_logprobs, out.au_yes


# ----------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3"])
def test_the_training_loss_reads_the_scoring_prompt(tiny_vlms, family):
    """Training and scoring see the same tokens: the training forward's log-probability of each answer
    equals the scorer's, and only the answer and end-of-turn tokens carry labels."""
    from model import build_model

    cfg = tuned_config(tiny_vlms[family])
    mllm = build_model(cfg).eval()
    classes = list(cfg.prompt.fe_classes)
    rows = example_rows(classes)
    batch = mllm.collate(rows)
    with torch.no_grad():
        logp = torch.log_softmax(mllm(batch).logits.float(), dim=-1)
    scored = mllm.score(mllm.face_inputs(build_face_batch(rows))).fe_logprobs
    end = mllm.tokenizer.convert_ids_to_tokens(mllm._end_of_turn)
    assert end == [{"llava": "</s>", "qwen2_vl": "<|im_end|>", "idefics3": "<end_of_utterance>"}[family]]
    for i in range(len(rows)):
        labelled = (batch.labels[i] != -100).nonzero().flatten().tolist()
        assert batch.labels[i, labelled].tolist() == batch.answer_ids[i]  # answer + end of turn, nothing else
        first = labelled[0]
        answer = int(batch.labels[i, first])
        assert float(logp[i, first - 1, answer]) == pytest.approx(float(scored[i, i]), abs=1e-5)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_lora_trains_the_language_model_only(tiny_vlms, family):
    from model import build_model

    mllm = build_model(tuned_config(tiny_vlms[family], train_projector=True))
    names = [n for n, _ in mllm.trainable_parameters()]
    assert names and all(n.startswith(("llm.", "projector.")) for n in names)
    assert any("lora_A" in n for n in names) and any(n.startswith("projector.") for n in names)
    decoder = {id(p) for p in mllm.llm.parameters()}
    lora_outside = [n for n, p in mllm.vlm.named_parameters() if "lora_" in n and id(p) not in decoder]
    assert not lora_outside  # no adapters in the vision tower (its attention has q_proj/k_proj too)

    mllm.train()
    assert not mllm.vlm.training and mllm.llm.training  # the frozen vision tower runs in eval mode
    loss = mllm(mllm.collate(example_rows(list(mllm.cfg.prompt.fe_classes)))).loss
    loss.backward()
    with_grad = {n for n, p in mllm.named_parameters() if p.grad is not None}
    assert len(with_grad) == len(names)  # gradients reach exactly the trainable parameters
    assert torch.isfinite(loss)


def test_untrained_adapters_score_as_the_base(tiny_vlms):
    from model import build_model

    base = load_model(str(tiny_vlms["qwen2_vl"])).mllm
    fresh = build_model(tuned_config(tiny_vlms["qwen2_vl"])).eval()
    for a, b in zip(scores(base), scores(fresh), strict=True):
        assert float((a - b).abs().max()) < 1e-5  # LoRA B starts at zero


# ----------------------------------------------------------------------------------- model directories


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_a_tuned_model_directory_holds_only_trained_parts_and_reloads_to_the_same_scores(tiny_vlms, tmp_path,
                                                                                          family):
    from model import build_model

    base = tiny_vlms[family]
    mllm = trained(build_model(tuned_config(base, train_projector=True)))
    model_id = save_model(mllm, str(tmp_path / "m"))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["lora.safetensors", "mien_model.json",
                                                                   "projector.safetensors"]
    manifest = json.loads((tmp_path / "m" / "mien_model.json").read_text())
    vlm = manifest["components"]["vlm"]
    assert vlm["source"] == str(base.resolve()) and vlm["model_type"] == family
    assert set(vlm["files"]) == {p.name for p in base.iterdir()} and len(vlm["sha256"]) == 64
    assert manifest["architecture"]["vlm"]["source"] == vlm["source"]

    loaded = load_model(str(tmp_path / "m"))
    assert loaded.model_id == model_id
    for a, b in zip(scores(mllm), scores(loaded.mllm), strict=True):
        assert float((a - b).abs().max()) < 1e-5
    zero_shot = scores(load_model(str(base)).mllm)
    assert float((zero_shot[0] - scores(mllm)[0]).abs().max()) > 1e-3  # the parts were loaded, not skipped


def test_init_base_round_trip(tiny_vlms, tmp_path, capsys):
    """`mien model init --base` writes a directory that references the base, holds no weights, and
    scores as the base does; with LoRA enabled the adapters are listed as fresh, ready for training."""
    from jobs.cli import main

    base = tiny_vlms["llava"]
    assert main(["model", "init", "--base", str(base), "--output", str(tmp_path / "zs")]) == 0
    assert main(["model", "init", "--base", str(base), "--output", str(tmp_path / "lora"),
                 "--set", "vlm.lora.enabled=true", "--set", "vlm.lora.r=4", "--set", "name=faces"]) == 0
    ids = capsys.readouterr().out.strip().splitlines()[-2:]
    for name in ("zs", "lora"):
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["mien_model.json"]
    manifest = json.loads((tmp_path / "lora" / "mien_model.json").read_text())
    assert manifest["fresh_parts"] == ["lora"] and manifest["parts"] == {}
    assert manifest["architecture"]["prior_weight"] == 0.5 and manifest["name"] == "faces"

    reference = scores(load_model(str(base)).mllm)
    for name, model_id in zip(("zs", "lora"), ids, strict=True):
        loaded = load_model(str(tmp_path / name))
        assert loaded.model_id == model_id
        for a, b in zip(reference, scores(loaded.mllm), strict=True):
            assert float((a - b).abs().max()) < 1e-5
    assert load_model(str(tmp_path / "lora")).mllm.cfg.vlm.lora.enabled

    assert main(["model", "inspect", str(tmp_path / "lora")]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["kind"] == "pretrained VLM, untrained lora"


def test_init_base_refuses_a_mien_model_directory(tiny_vlms, tmp_path, capsys):
    from jobs.cli import main

    assert main(["model", "init", "--base", str(tiny_vlms["llava"]), "--output", str(tmp_path / "m")]) == 0
    assert main(["model", "init", "--base", str(tmp_path / "m"), "--output", str(tmp_path / "n")]) == 2
    assert "is a mien model, not a plain save_pretrained checkpoint" in capsys.readouterr().err


def test_a_changed_base_is_refused_naming_the_changed_file(tiny_vlms, tmp_path):
    from safetensors.torch import load_file, save_file

    from model import build_model

    base = shutil.copytree(tiny_vlms["llava"], tmp_path / "base")
    save_model(trained(build_model(tuned_config(base))), str(tmp_path / "m"))
    weights = load_file(base / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1.0
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ChecksumError, match=r"changed: model\.safetensors") as e:
        load_model(str(tmp_path / "m"))
    assert "config.json" not in str(e.value)  # only the file that changed is named
    (base / "extra.txt").write_text("x")
    (base / "generation_config.json").unlink()
    with pytest.raises(ChecksumError, match=r"missing: generation_config\.json; new: extra\.txt"):
        load_model(str(tmp_path / "m"))


def test_parts_trained_for_another_base_are_refused_naming_both(tiny_vlms, tmp_path):
    from model import build_model

    llava, qwen = tiny_vlms["llava"], tiny_vlms["qwen2_vl"]
    save_model(trained(build_model(tuned_config(llava))), str(tmp_path / "m"))
    with pytest.raises(ArchitectureMismatchError) as e:
        load_model(str(tmp_path / "m"), overrides=[f"vlm.source={qwen}"])
    text = str(e.value)
    assert str(llava.resolve()) in text and "(llava)" in text and str(qwen) in text and "qwen2_vl" in text
    # the same base at another place is fine: the checksums decide, not the path
    moved = shutil.copytree(llava, tmp_path / "moved")
    load_model(str(tmp_path / "m"), overrides=[f"vlm.source={moved}"])


# ------------------------------------------------------------------------------------ reproducibility


def lora_losses(base: Path, seed: int, steps: int = 3) -> list[float]:
    """The losses of ``steps`` optimizer steps on one fixed batch, taken as the training recipe takes
    them (``collate``, the model's answer-token loss, AdamW over ``trainable_parameters``; DeepSpeed
    left out), from a model built with ``seed``."""
    import dataclasses

    from model import build_model

    cfg = dataclasses.replace(tuned_config(base), seed=seed)
    mllm = build_model(cfg).train()
    batch = mllm.collate(example_rows(list(cfg.prompt.fe_classes)))
    optim = torch.optim.AdamW([p for _, p in mllm.trainable_parameters()], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = mllm(batch).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    return losses


def test_lora_training_repeats_bit_for_bit_from_a_seed(tiny_vlms):
    """Every family on CPU: three LoRA steps from the same seed give exactly the same losses (no
    tolerance: nothing on this path is non-deterministic on CPU, and with dropout 0 nothing draws from
    the global RNG), the loss falls, and another seed trains differently. The seed initialises LoRA A
    (``build_vlm_model``); B starts at zero, so the first loss is the base model's whatever the seed,
    and the seeds part from the second step on."""
    for family, base in tiny_vlms.items():
        first, again, other = (lora_losses(base, seed) for seed in (0, 0, 1))
        assert first == again, (family, first, again)
        assert first[0] > first[1] > first[2], (family, first)
        assert other[0] == first[0], (family, other, first)  # untrained adapters add exactly zero
        assert all(a != b for a, b in zip(other[1:], first[1:], strict=True)), (family, other, first)
