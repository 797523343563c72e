"""A plain Hugging Face VLM checkpoint as mien's facial model: loading, scoring, generation, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from model import load_model, open_model
from model.prompts import contradicts, parse_description
from model.taxonomy import AU_NAMES, FE_BASIC

FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3")


def face_batch(rows: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"crop": rng.integers(0, 255, (rows, 112, 112, 3), dtype=np.uint8),
            "au_evidence": rng.random((rows, 23)).astype(np.float32),
            "fe_prior": rng.dirichlet(np.ones(7), rows).astype(np.float32),
            # different ages/genders give contexts of different lengths: padded prefills
            "age": np.array([30.0, np.nan, 55.0][:rows], np.float32), "gender": ["female", None, "male"][:rows],
            "track_key": np.arange(rows)}


@pytest.mark.parametrize("prior_tokens", [0, 4], ids=["zero_shot", "prior_tokens"])
@pytest.mark.parametrize("family", FAMILIES)
def test_scores_agree_cached_and_uncached(tiny_vlms, family, prior_tokens):
    """Also with face-prior tokens in the prefill (``vlm.prior_tokens``, freshly initialised)."""
    if prior_tokens:
        from model import build_model
        from model.config import config_from_dict

        mllm = build_model(config_from_dict({"llm": {"enabled": False}, "prior_weight": 0.5, "vlm": {
            "source": str(tiny_vlms[family]), "prior_tokens": prior_tokens}})).eval()
    else:
        model = load_model(str(tiny_vlms[family]))
        assert model.model_id.startswith(f"{family}-zeroshot+") and model.config.prior_weight == 0.5
        mllm = model.mllm
    faces = mllm.face_inputs(face_batch())
    cached, full = mllm.score(faces, reuse_prefix=True), mllm.score(faces, reuse_prefix=False)
    assert cached.fe_logprobs.shape == (3, 7) and cached.au_yes.shape == (3, 23)
    assert float((cached.fe_logprobs - full.fe_logprobs).abs().max()) < 1e-4
    assert float((cached.au_yes - full.au_yes).abs().max()) < 1e-4
    # one face alone scores as it does inside the padded batch
    alone = mllm.score(mllm.face_inputs({k: v[2:] for k, v in face_batch().items()}))
    assert float((alone.fe_logprobs[0] - cached.fe_logprobs[2]).abs().max()) < 1e-4


def reference_scores(mllm, faces) -> tuple[torch.Tensor, torch.Tensor]:
    """FE log-likelihoods and AU yes-probabilities computed the straightforward way: one forward per
    (face, question) with the prompt unpadded and uncached, the model's own positions, full logits."""
    seqs, layout = mllm._sequences
    fe, au = [], []
    for i in range(faces.rows):
        inputs, _ = mllm._prefill_inputs(faces, rows=[i])
        lp = inputs["input_ids"].shape[1]
        logp = []
        for s in seqs:
            ids = torch.tensor([s.ids], device=mllm.device)
            full = {**inputs, "input_ids": torch.cat([inputs["input_ids"], ids], dim=1)}
            full["attention_mask"] = torch.ones_like(full["input_ids"])
            if "mm_token_type_ids" in inputs:
                full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(ids)], dim=1)
            with torch.no_grad():
                out = torch.log_softmax(mllm.vlm(**full).logits[0].float(), dim=-1)
            logp.append(torch.cat([out[lp + pos, tokens] for pos, tokens in s.reads]))
        yes = []
        for kind, start, n in layout:
            scores = logp[start] if n == 1 else torch.stack([logp[start + j].sum() for j in range(n)])
            if kind == "fe":
                fe.append(scores)
            else:
                yes.append(torch.softmax(scores, dim=0)[0])
        au.append(torch.stack(yes))
    return torch.stack(fe), torch.stack(au)


@pytest.mark.parametrize("shortcut", [True, False], ids=["one_row_per_question", "one_row_per_answer"])
@pytest.mark.parametrize("family", FAMILIES)
def test_scores_equal_a_straightforward_reference(tiny_vlms, family, shortcut):
    """Trimmed logits, per-pass padding and the cache change no score: cached and uncached, and with
    the logits sliced after a full forward (the path of a VLM whose forward lacks ``logits_to_keep``);
    also with every answer its own continuation (``scoring.first_token_shortcut: false``)."""
    mllm = load_model(str(tiny_vlms[family]), overrides=[f"scoring.first_token_shortcut={str(shortcut).lower()}"]).mllm
    faces = mllm.face_inputs(face_batch())
    fe, au = reference_scores(mllm, faces)
    runs = [mllm.score(faces, reuse_prefix=True), mllm.score(faces, reuse_prefix=False)]
    mllm._takes_logits_to_keep = False
    runs += [mllm.score(faces, reuse_prefix=True), mllm.score(faces, reuse_prefix=False)]
    for got in runs:
        assert float((got.fe_logprobs - fe).abs().max()) < 1e-5
        assert float((got.au_yes - au).abs().max()) < 1e-5


@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "no_reuse"])
@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_logits_only_where_answers_are_read(tiny_vlms, family, reuse):
    """The LM head (a 152k vocabulary for Qwen) runs on no prefill position and, per face, on one
    position of the FE question and one per distinct AU question length: not on every padded token."""
    mllm = load_model(str(tiny_vlms[family])).mllm
    seqs, layout = mllm._sequences
    assert [kind for kind, _, n in layout if n == 1] == ["fe"] + ["au"] * 23  # single-token answers
    faces = mllm.face_inputs(face_batch())
    projected: list[int] = []
    hook = mllm.vlm.get_output_embeddings().register_forward_hook(
        lambda module, args, out: projected.append(args[0].shape[:-1].numel()))
    try:
        mllm.score(faces, reuse_prefix=reuse)
    finally:
        hook.remove()
    au_lengths = {len(s.ids) for s in seqs[1:]}
    assert projected == [0] * reuse + [3, 3 * 23 * len(au_lengths)]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3"])
def test_annotate_mixes_the_vlm_with_the_prior_and_describes(tiny_vlms, family):
    model = load_model(str(tiny_vlms[family]), overrides=["generation.enabled=true", "generation.mode=all",
                                                          "generation.max_new_tokens=8"])
    batch = face_batch()
    out = model.annotate(batch)
    assert np.allclose(out["fe_probs"].sum(1), 1.0, atol=1e-5)
    assert np.all((out["au_probs"] >= 0) & (out["au_probs"] <= 1))
    prior = model.score_prior(batch)
    assert not np.allclose(out["fe_probs"], prior.fe_probs, atol=1e-4)  # the VLM's half counts
    assert len(out["description"]) == 3 and all(isinstance(d, str) and d for d in out["description"])
    for d, fe, au in zip(out["description"], out["fe_probs"], out["au_probs"], strict=True):
        parse_description(d)  # a random tiny model's text still parses (to nothing, usually)
        assert not contradicts(d, FE_BASIC[int(fe.argmax())], {a for a, p in zip(AU_NAMES, au, strict=True)
                                                              if p >= 0.5})


def test_model_id_follows_the_weights(tiny_vlms, tmp_path):
    from model.vlm.tiny import build_tiny_vlm

    other = build_tiny_vlm("llava", tmp_path / "llava", seed=1)
    assert load_model(str(other)).model_id != load_model(str(tiny_vlms["llava"])).model_id


def test_pickled_weights_are_refused_with_the_conversion_command(tiny_vlms, tmp_path):
    from model.model_dir import UnsafeCheckpointError

    d = shutil.copytree(tiny_vlms["llava"], tmp_path / "pickled")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="safe_serialization=True"):
        load_model(str(d))


def test_a_checkpoint_that_is_not_image_text_to_text_lists_what_is_supported(tiny_vlms, tmp_path):
    d = shutil.copytree(tiny_vlms["llava"], tmp_path / "text_only")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "bert"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not an image-text-to-text.*qwen2_vl"):
        open_model(str(d))


def test_a_vlm_config_must_turn_off_the_composed_parts():
    from model.config import config_from_dict
    from workflows.core.config import ConfigError

    with pytest.raises(ConfigError, match="turn off llm.enabled"):
        config_from_dict({"vlm": {"source": "/some/dir"}})
    with pytest.raises(ConfigError, match="vlm.family: unknown"):
        config_from_dict({"vlm": {"source": "/d", "family": "nope"}, "llm": {"enabled": False}})
    cfg = config_from_dict({"vlm": {"source": "/d"}, "llm": {"enabled": False}, "prior_weight": 0.5})
    assert cfg.is_vlm and cfg.uses_llm_for_scores


def test_a_checkpoint_on_s3_loads_and_scores_like_the_local_one(tiny_vlms, s3_bucket):
    """`--model s3://bucket/prefix` with a plain checkpoint: fetched once into the cache, same weights,
    same model id, same scores."""
    from workflows.core import storage

    local = tiny_vlms["qwen2_vl"]
    remote = f"{s3_bucket}/bases/qwen2_vl"
    for f in sorted(local.rglob("*")):
        if f.is_file():
            storage.write_bytes(f"{remote}/{f.relative_to(local).as_posix()}", f.read_bytes())
    a, b = load_model(str(local)), load_model(remote)
    assert a.model_id == b.model_id
    faces = face_batch(2)
    sa = a.mllm.score(a.mllm.face_inputs(faces))
    sb = b.mllm.score(b.mllm.face_inputs(faces))
    assert float((sa.fe_logprobs - sb.fe_logprobs).abs().max()) < 1e-6
