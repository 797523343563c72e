"""The tiny MLLM end to end: scoring, prefix reuse, generation, determinism, training loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import build_model
from model.annotator import FacialAnnotator
from model.taxonomy import AU_NAMES, FE_BASIC
from model.tiny import tiny_config
from tests.model.conftest import face_batch


def test_scoring_end_to_end_probabilities(tiny_mllm, batch):
    ann = FacialAnnotator.from_mllm(tiny_mllm)
    assert ann.config.prior_weight == 0.0  # the LLM alone decides
    out = ann.annotate(batch)
    assert out["fe_probs"].shape == (5, len(FE_BASIC)) and out["fe_probs"].dtype == np.float32
    np.testing.assert_allclose(out["fe_probs"].sum(1), 1.0, atol=1e-5)
    assert out["au_probs"].shape == (5, len(AU_NAMES))
    assert ((out["au_probs"] >= 0) & (out["au_probs"] <= 1)).all()
    assert out["description"] == [None] * 5  # generation is opt-in


def test_prior_weight_mixes_prior_and_llm(tiny_mllm, batch):
    ann = FacialAnnotator.from_mllm(tiny_mllm)
    llm_only = ann.annotate(batch)["fe_probs"]
    prior = ann.score_prior(batch).fe_probs
    ann.config.prior_weight = 0.25
    try:
        mixed = ann.annotate(batch)["fe_probs"]
    finally:
        ann.config.prior_weight = 0.0
    np.testing.assert_allclose(mixed, 0.25 * prior + 0.75 * llm_only, atol=1e-5)


def test_faces_per_segment_scores_k_faces_and_shares_them(tiny_mllm, monkeypatch):
    # Two segments of 5 and 3 faces: with k=2 the LLM sees 2 + 2 faces, and every face of a
    # segment carries the mean of its segment's scored faces.
    batch = face_batch(8, seed=3, tracks=[7, 7, 7, 7, 7, 9, 9, 9])
    ann = FacialAnnotator.from_mllm(tiny_mllm)
    every = ann.annotate(batch)
    seen = []
    real_score = tiny_mllm.score
    monkeypatch.setattr(tiny_mllm, "score", lambda faces, **kw: seen.append(len(faces.crops))
                        or real_score(faces, **kw))
    monkeypatch.setattr(tiny_mllm.cfg.scoring, "faces_per_segment", 2)
    shared = ann.annotate(batch)
    assert sum(seen) == 4
    fe, au = shared["fe_probs"], shared["au_probs"]
    for seg, picked in ((slice(0, 5), [0, 4]), (slice(5, 8), [5, 7])):
        np.testing.assert_allclose(fe[seg], np.broadcast_to(fe[seg][0], fe[seg].shape), atol=1e-6)
        want = every["fe_probs"][picked].mean(0)
        np.testing.assert_allclose(fe[seg][0], want / want.sum(), atol=1e-5)
        np.testing.assert_allclose(au[seg][0], every["au_probs"][picked].mean(0), atol=1e-5)
    np.testing.assert_allclose(fe.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("tree", [True, False], ids=["tree-mask", "cache-copies"])
def test_prefix_reuse_gives_the_same_scores(tiny_mllm, batch, monkeypatch, tree):
    monkeypatch.setattr(tiny_mllm.cfg.scoring, "tree_attention", tree)
    assert tiny_mllm._tree_ok() is tree
    faces = tiny_mllm.face_inputs(batch)
    cached = tiny_mllm.score(faces, reuse_prefix=True)
    full = tiny_mllm.score(faces, reuse_prefix=False)
    torch.testing.assert_close(cached.fe_logprobs, full.fe_logprobs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached.au_yes, full.au_yes, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("tree", [True, False], ids=["tree-mask", "cache-copies"])
def test_multi_token_answers_cached_equals_full(tiny_mllm, batch, monkeypatch, tree):
    # Make two class answers two tokens long: the general (non-shortcut) path must agree both ways.
    cands = [list(c) for c in tiny_mllm._candidates]
    cands[1] = cands[1] + tiny_mllm.ids(" face")
    cands[4] = cands[4] + tiny_mllm.ids(" lips are")
    monkeypatch.setattr(tiny_mllm, "_candidates", cands)
    monkeypatch.setattr(tiny_mllm.cfg.scoring, "kv_budget_mb", 0)  # one AU question per chunk
    monkeypatch.setattr(tiny_mllm.cfg.scoring, "tree_attention", tree)
    faces = tiny_mllm.face_inputs(batch)
    cached = tiny_mllm.score(faces, reuse_prefix=True)
    full = tiny_mllm.score(faces, reuse_prefix=False)
    assert not tiny_mllm._shortcut_ok()
    torch.testing.assert_close(cached.fe_logprobs, full.fe_logprobs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached.au_yes, full.au_yes, atol=1e-5, rtol=1e-4)


def test_shortcut_equals_full_candidate_scoring(tiny_mllm, batch, monkeypatch):
    faces = tiny_mllm.face_inputs(batch)
    fast = tiny_mllm.score(faces)
    monkeypatch.setattr(tiny_mllm.cfg.scoring, "first_token_shortcut", False)
    slow = tiny_mllm.score(faces)
    torch.testing.assert_close(fast.fe_logprobs, slow.fe_logprobs, atol=1e-5, rtol=1e-5)


def test_deterministic_with_seed():
    batch = face_batch(4, seed=3)
    a, b, c = (build_model(tiny_config(seed=s)) for s in (7, 7, 8))
    sa, sb, sc = (m.score(m.face_inputs(batch)).fe_logprobs for m in (a, b, c))
    torch.testing.assert_close(sa, sb, atol=0, rtol=0)
    assert not torch.allclose(sa, sc)
    ga, gb = (m.generate(m.face_inputs(batch)) for m in (a, b))
    assert ga == gb


def test_generation_end_to_end_per_track_and_fraction(tiny_mllm):
    batch = face_batch(6, tracks=[4, 4, 4, 9, 9, 11])
    ann = FacialAnnotator.from_mllm(tiny_mllm)
    g = ann.config.generation
    g.enabled = True
    try:
        out = ann.annotate(batch)
        described = [i for i, d in enumerate(out["description"]) if d is not None]
        assert described == [1, 4, 5]  # the middle face of each track segment
        assert all(isinstance(out["description"][i], str) for i in described)
        assert len(out["description_fe"]) == 6 and len(out["description_aus"]) == 6
        g.mode, g.fraction = "fraction", 0.5
        many = face_batch(300, size=8, tracks=[t for t in range(100) for _ in range(3)])  # 100 tracks of 3
        picked = ann.generation_rows(many)
        assert all(i % 3 == 1 for i in picked)  # the middle face of each chosen track
        assert 35 <= len(picked) <= 65  # about half the tracks
        # A track's draw depends on its key alone: the same tracks of another batch, in another order
        # (a rerun batches differently), are chosen again.
        later = face_batch(150, size=8, tracks=[t for t in reversed(range(50)) for _ in range(3)])
        chosen = {int(many["track_key"][i]) for i in picked}
        assert {int(later["track_key"][i]) for i in ann.generation_rows(later)} == {t for t in chosen if t < 50}
        g.mode = "all"
        assert ann.generation_rows(batch) == list(range(6))
    finally:
        g.enabled, g.mode = False, "per_track"


def test_anchored_generation_states_the_scored_label(tiny_mllm, batch):
    ann = FacialAnnotator.from_mllm(tiny_mllm)
    g = ann.config.generation
    g.enabled, g.anchor_label, g.mode = True, True, "all"
    try:
        out = ann.annotate(batch)
    finally:
        g.enabled, g.anchor_label, g.mode = False, False, "per_track"
    for probs, text, label in zip(out["fe_probs"], out["description"], out["description_fe"], strict=True):
        top = FE_BASIC[int(probs.argmax())]
        assert text.lower().startswith("the person shows") and label == top


def test_only_lora_fim_projector_and_prior_parameters_train(tiny_mllm):
    names = [n for n, _ in tiny_mllm.trainable_parameters()]
    assert names
    for n in names:
        assert n.startswith(("face_prior.", "fim.", "frames.")) or ".lora_" in n, n
    assert any(".lora_" in n for n in names) and any(n.startswith("fim.projector.") for n in names)
    assert any(n.startswith("fim.local_clue.") for n in names) and any(n.startswith("fim.qformer.") for n in names)
    assert not any(p.requires_grad for p in tiny_mllm.vision.parameters())
    base = [p for n, p in tiny_mllm.llm.named_parameters() if "lora_" not in n]
    assert base and not any(p.requires_grad for p in base)


def _rows(n: int = 4) -> list[dict]:
    from model import prompts

    b = face_batch(n, seed=5)
    rows = []
    for i in range(n):
        row = {k: (v[i] if v is not None else None) for k, v in b.items()}
        row["question"] = prompts.fe_question(FE_BASIC)
        row["answer"] = FE_BASIC[i % 7]
        rows.append(row)
    return rows


def test_training_loss_covers_answer_tokens_only():
    model = build_model(tiny_config())
    batch = model.collate(_rows())
    seen = {}

    def spy(_module, _args, kwargs):
        seen["labels"] = kwargs["labels"].clone()

    handle = model.llm.register_forward_pre_hook(spy, with_kwargs=True)
    out = model(batch)
    handle.remove()
    labelled = (seen["labels"] != -100).sum(1).tolist()
    assert labelled == [len(a) for a in batch.answer_ids]  # class name + EOS, nothing else
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n for n, p in model.trainable_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(".lora_B" in n for n in grads) and any(n.startswith("fim.") for n in grads)


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = build_model(tiny_config())
    model.train()
    batch = model.collate(_rows())
    opt = torch.optim.AdamW([p for _, p in model.trainable_parameters()], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] * 0.7, losses


@pytest.mark.parametrize("frames", [0, 3])
def test_clip_tokens_two_per_frame(frames):
    model = build_model(tiny_config(clip_frames=frames))
    tokens = model.encode_faces(model.face_inputs(face_batch(4, tracks=[1, 1, 1, 2])))
    base = 4 + 1 + 2  # pooled patches + local-clue token + prior queries
    assert tokens.shape == (4, base + 2 * frames, 64)
