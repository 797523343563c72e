"""Tiny VLM checkpoints: safetensors only, load offline through the HF auto classes, run a
chat-templated forward and generate on a face-sized image, and are a pure function of the seed."""

from __future__ import annotations

import numpy as np
import pytest

from model.vlm.processors import load_processor
from model.vlm.tiny import ANSWER_WORDS, TINY_FAMILIES, build_tiny_vlm

# image-placeholder tokens a 112x112 face expands to (documented in model.vlm.tiny)
IMAGE_TOKENS = {"llava": 16, "llava_next": 24, "qwen2_vl": 4, "qwen2_5_vl": 4, "idefics3": 20}

each_family = pytest.mark.parametrize("family", TINY_FAMILIES)


def _messages() -> list[dict]:
    return [{"role": "system", "content": [{"type": "text", "text": "You are a facial behaviour analyst."}]},
            {"role": "user", "content": [{"type": "image"},
                                         {"type": "text", "text": "What is the facial expression?"}]}]


@each_family
def test_checkpoint_is_small_and_holds_only_safetensors(family, tiny_vlms):
    files = {p.name: p.stat().st_size for p in tiny_vlms[family].iterdir()}
    assert "model.safetensors" in files and "config.json" in files and "chat_template.jinja" in files
    assert not [n for n in files if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    assert sum(files.values()) < 4_000_000


@each_family
def test_loads_offline_and_runs_forward_and_generate(family, tiny_vlms):
    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlms[family], local_files_only=True)
    processor = load_processor(tiny_vlms[family])
    prompt = processor.apply_chat_template(_messages(), add_generation_prompt=True)
    assert "What is the facial expression?" in prompt
    face = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    inputs = processor(images=face, text=prompt, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == IMAGE_TOKENS[family]

    with torch.no_grad():
        logits = model(**inputs).logits
    vocab = model.config.get_text_config().vocab_size
    assert vocab == len(processor.tokenizer)
    assert logits.shape == (1, inputs["input_ids"].shape[1], vocab)
    assert torch.isfinite(logits).all()

    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)
    assert isinstance(processor.decode(out[0, -3:]), str)


@each_family
def test_class_answers_are_single_tokens(family, tiny_vlms):
    tokenizer = load_processor(tiny_vlms[family]).tokenizer
    for word in ANSWER_WORDS:
        for text in (word, " " + word):
            assert len(tokenizer.encode(text, add_special_tokens=False)) == 1, text


@each_family
def test_weights_are_a_function_of_the_seed(family, tmp_path):
    from safetensors.torch import load_file

    a, b, c = (load_file(build_tiny_vlm(family, tmp_path / name, seed=seed) / "model.safetensors")
               for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert a.keys() == b.keys() == c.keys()
    assert all(a[k].equal(b[k]) for k in a)
    assert not all(a[k].equal(c[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_unknown_family_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="llava"):
        build_tiny_vlm("blip2", tmp_path)
