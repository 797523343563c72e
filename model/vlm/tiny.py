"""Tiny random image-text-to-text checkpoints of real VLM families, built offline, for tests and benches.

:func:`build_tiny_vlm` writes a directory laid out like the family's checkpoint on the Hub
(``config.json`` + ``model.safetensors``, tokenizer, image-processor config, ``chat_template.jinja``)
that loads with ``AutoModelForImageTextToText.from_pretrained`` and :func:`model.vlm.processors.load_processor`. Weights
are random (fixed seed); the tokenizer is a byte-level BPE trained on mien's prompt corpus
(:func:`model.prompts.prompt_corpus`), so the prompts take few tokens, every class answer
(:data:`ANSWER_WORDS`, with and without a leading space) is one token, and any other text still
encodes, byte by byte. Sizes: text hidden 64, vision hidden 32, 2 layers each, 0.23-0.27 M parameters,
about 1 MB on disk; a build takes ~0.1 s, plus 3-6 s of one-off imports on a process's first build
(transformers' processing and modelling modules, and deepspeed, which accelerate imports inside
``save_pretrained`` when it is installed).

Facts per family (transformers 5.24, no torchvision: image processors resolve to their
``*ImageProcessorPil`` class through ``AutoImageProcessor``)::

    llava       LLaVA-1.5: CLIP vision (56 px, patch 14) + Llama + LlavaProcessor; AutoProcessor loads it.
                The processor must know ``patch_size`` and ``num_additional_image_tokens=1`` (CLIP's
                CLS); with ``vision_feature_select_strategy="default"`` the CLS is dropped again:
                (56/14)^2 = 16 ``<image>`` tokens per image. Template: ``USER: <image>\\n{text} ASSISTANT:``
                (system text first, unprefixed); the tokenizer prepends ``<s>``, the template does not.
                Forward inputs: input_ids, attention_mask, pixel_values (B, 3, 56, 56).
    llava_next  LLaVA-NeXT (v1.6-Mistral template): CLIP (28 px, patch 14) + Llama, anyres tiling over
                ``image_grid_pinpoints`` [[28, 56], [56, 28], [56, 56]]; AutoProcessor loads it. The
                image-token count depends on the image's aspect: a square image gives the 4 base tokens
                + a 4x4 grid + 4 row-newline tokens = 24. Template: ``[INST] <image>\\n{text} [/INST]``.
                Forward also needs ``image_sizes`` (B, 2) from the processor; pixel_values is
                (B, 1 + tiles, 3, 28, 28).
    qwen2_vl    Qwen2-VL: ViT with 2x2 patch merger + Qwen2 with M-RoPE. AutoProcessor FAILS without
    qwen2_5_vl  torchvision (Qwen2VLProcessor / Qwen2_5_VLProcessor require a video processor, and every
                video processor imports torchvision): load with :func:`model.vlm.processors.load_processor`, which builds an
                image-only subclass of the family's processor (same name and behaviour; videos are
                unsupported). The image processor resizes to multiples of 28 px within
                [28^2, 56^2] pixels, so a 112x112 face becomes 56x56: image_grid_thw (1, 4, 4),
                4 ``<|image_pad|>`` tokens (t*h*w / merge^2). Forward needs, besides input_ids and
                attention_mask: pixel_values as flattened patches (sum t*h*w, 3*2*14*14 = 1176),
                image_grid_thw (n_images, 3), and mm_token_type_ids (B, L; 1 where the token is
                ``<|image_pad|>``, 2 for video, 0 text) -- without it the model raises, because the
                3-D M-RoPE position ids (3, B, L) are computed from it (the model computes them
                itself; the processor returns mm_token_type_ids). ``rope_parameters.mrope_section``
                must sum to head_dim / 2 (here [2, 3, 3] for head_dim 16). Template (ChatML, default
                system prompt added): ``<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>
                {text}<|im_end|>\\n<|im_start|>assistant\\n``; no BOS. Qwen2.5-VL differs only in its
                vision tower (window attention, ``fullatt_block_indexes``, RMSNorm + SwiGLU).
    idefics3    Idefics3 (SigLIP-like vision 56 px, patch 14, pixel-shuffle scale 2 + Llama);
                AutoProcessor loads it (SmolVLM's processor, like Qwen's, needs torchvision).
                ``image_seq_len`` = (56/14)^2 / 2^2 = 4 ``<image>`` tokens per tile. Image splitting is
                on, as in the real checkpoints: a 112x112 face becomes 2x2 tiles of 56 px + a global
                view, each wrapped as ``<fake_token_around_image><row_i_col_j><image>*4`` (the global one
                with ``<global-img>``): 20 ``<image>`` tokens; pass ``do_image_splitting=False`` to the
                processor for one view (4 tokens). Template: ``<|begin_of_text|>User:<image>{text}
                <end_of_utterance>\\nAssistant:`` (the template writes the BOS). Forward inputs: pixel_values
                (B, n_views, 3, 56, 56) and pixel_attention_mask (B, n_views, 56, 56).

For every family ``processor.apply_chat_template(messages, add_generation_prompt=True)`` renders the
family's prompt (messages in the HF format: ``{"role": "user", "content": [{"type": "image"},
{"type": "text", "text": ...}]}``; plain-string content works too) and ``processor(images=...,
text=prompt, return_tensors="pt")`` expands the image placeholder and returns every forward input.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.prompts import NO, YES, prompt_corpus
from model.taxonomy import FE_EXTENDED_AFFECTNET8, FE_SYNONYMS
from model.vlm.processors import image_only_processor_class

TINY_FAMILIES: tuple[str, ...] = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3")

# Words a scorer reads as class answers; each is one token in every tiny tokenizer.
ANSWER_WORDS: tuple[str, ...] = tuple(dict.fromkeys(FE_EXTENDED_AFFECTNET8 + tuple(FE_SYNONYMS) + (YES, NO)))

_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 1024}
_CLIP = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "projection_dim": 32, "patch_size": 14}


@dataclasses.dataclass(frozen=True)
class _Tokens:
    """A family's special tokens. ``special`` are added tokens never split; ``named`` become tokenizer
    attributes (``tokenizer.image_token``); ``chat_words`` are template words to keep whole."""

    bos: str | None
    eos: str
    pad: str
    special: tuple[str, ...]
    named: dict[str, str] = dataclasses.field(default_factory=dict)
    prepend_bos: bool = False
    chat_words: tuple[str, ...] = ()

    def ids(self, tokenizer: Any) -> dict[str, int]:
        return {t: tokenizer.convert_tokens_to_ids(t) for t in self.special}


@dataclasses.dataclass(frozen=True)
class _Family:
    tokens: _Tokens
    chat_template: str
    # (tokenizer) -> (model config, processor)
    build: Callable[[Any], tuple[Any, Any]]


# ----------------------------------------------------------------------------- chat templates
# Modelled on the families' Hub templates; each also accepts plain-string message content.

_LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set text = message['content'] if message['content'] is string else "
    "(message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('')) %}"
    "{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + text + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% if message['content'] is not string %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% endif %}{{ text + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + text + '</s>' }}{% endif %}"
    "{% endfor %}"
)

_QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>"
    "{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{{ ':' if message['content'][0]['type'] == 'image' else ': ' }}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{ line['text'] }}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<end_of_utterance>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


# ----------------------------------------------------------------------------- families

def _llava(tokenizer: Any) -> tuple[Any, Any]:
    from transformers import LlavaConfig, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    ids, side = _LLAVA_TOKENS.ids(tokenizer), 56
    config = LlavaConfig(
        vision_config={**_CLIP, "image_size": side},
        text_config=_llama_config(tokenizer, ids, "<s>", "</s>", "<pad>"),
        image_token_index=ids["<image>"], image_seq_length=(side // 14) ** 2,
        vision_feature_select_strategy="default", vision_feature_layer=-2)
    processor = LlavaProcessor(
        image_processor=LlavaImageProcessorPil(size={"shortest_edge": side},
                                               crop_size={"height": side, "width": side}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=_LLAVA_TEMPLATE)
    return config, processor


def _llava_next(tokenizer: Any) -> tuple[Any, Any]:
    from transformers import LlavaNextConfig, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    ids, side = _LLAVA_TOKENS.ids(tokenizer), 28
    pinpoints = [[side, 2 * side], [2 * side, side], [2 * side, 2 * side]]
    config = LlavaNextConfig(
        vision_config={**_CLIP, "image_size": side},
        text_config=_llama_config(tokenizer, ids, "<s>", "</s>", "<pad>"),
        image_token_index=ids["<image>"], image_grid_pinpoints=pinpoints, image_seq_length=(side // 14) ** 2,
        vision_feature_select_strategy="default", vision_feature_layer=-2)
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(size={"shortest_edge": side},
                                                   crop_size={"height": side, "width": side},
                                                   image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=_LLAVA_NEXT_TEMPLATE)
    return config, processor


def _qwen(tokenizer: Any, version: str) -> tuple[Any, Any]:
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ids = _QWEN_TOKENS.ids(tokenizer)
    text = {**_TEXT, "vocab_size": len(tokenizer), "bos_token_id": None, "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            # M-RoPE splits head_dim / 2 = 8 rotary frequencies over (time, height, width)
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}}
    vision: dict[str, Any] = {"depth": 2, "num_heads": 4, "patch_size": 14, "spatial_merge_size": 2,
                              "temporal_patch_size": 2}
    if version == "qwen2_vl":
        config_cls, processor_cls = transformers.Qwen2VLConfig, transformers.Qwen2VLProcessor
        vision |= {"embed_dim": 32, "mlp_ratio": 2, "hidden_size": _TEXT["hidden_size"]}
    else:
        config_cls, processor_cls = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLProcessor
        vision |= {"hidden_size": 32, "intermediate_size": 64, "out_hidden_size": _TEXT["hidden_size"],
                   "window_size": 56, "fullatt_block_indexes": [1]}
    config = config_cls(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"])
    processor = image_only_processor_class(processor_cls)(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56),
        tokenizer=tokenizer, chat_template=_QWEN_TEMPLATE)
    return config, processor


def _idefics3(tokenizer: Any) -> tuple[Any, Any]:
    from transformers import Idefics3Config, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    ids, side, scale = _IDEFICS3_TOKENS.ids(tokenizer), 56, 2
    config = Idefics3Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": side, "patch_size": 14},
        text_config=_llama_config(tokenizer, ids, "<|begin_of_text|>", "<end_of_utterance>",
                                  "<|finetune_right_pad_id|>"),
        image_token_id=ids["<image>"], scale_factor=scale, pad_token_id=ids["<|finetune_right_pad_id|>"])
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(size={"longest_edge": 2 * side},
                                                  max_image_size={"longest_edge": side}),
        tokenizer=tokenizer, image_seq_len=(side // 14) ** 2 // scale**2, chat_template=_IDEFICS3_TEMPLATE)
    return config, processor


def _llama_config(tokenizer: Any, ids: dict[str, int], bos: str, eos: str, pad: str) -> dict[str, Any]:
    return {**_TEXT, "model_type": "llama", "vocab_size": len(tokenizer), "bos_token_id": ids[bos],
            "eos_token_id": ids[eos], "pad_token_id": ids[pad]}


_LLAVA_TOKENS = _Tokens(bos="<s>", eos="</s>", pad="<pad>", special=("<s>", "</s>", "<unk>", "<pad>", "<image>"),
                        named={"image_token": "<image>"}, prepend_bos=True,
                        chat_words=("USER:", "ASSISTANT:", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"))
_QWEN_TOKENS = _Tokens(bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                       special=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"),
                       chat_words=("system", "user", "assistant", "You are a helpful assistant."))
_IDEFICS3_TOKENS = _Tokens(bos="<|begin_of_text|>", eos="<end_of_utterance>", pad="<|finetune_right_pad_id|>",
                           special=("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>",
                                    "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
                                    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))),
                           chat_words=("User:", "Assistant:", "System:"))

_FAMILIES: dict[str, _Family] = {
    "llava": _Family(_LLAVA_TOKENS, _LLAVA_TEMPLATE, _llava),
    "llava_next": _Family(_LLAVA_TOKENS, _LLAVA_NEXT_TEMPLATE, _llava_next),
    "qwen2_vl": _Family(_QWEN_TOKENS, _QWEN_TEMPLATE, functools.partial(_qwen, version="qwen2_vl")),
    "qwen2_5_vl": _Family(_QWEN_TOKENS, _QWEN_TEMPLATE, functools.partial(_qwen, version="qwen2_5_vl")),
    "idefics3": _Family(_IDEFICS3_TOKENS, _IDEFICS3_TEMPLATE, _idefics3),
}


# ----------------------------------------------------------------------------- tokenizer

def _train_tokenizer(tokens: _Tokens) -> Any:
    """A byte-level BPE (the GPT-2 / Llama-3 / Qwen2 scheme) trained on mien's prompts, wrapped as a
    fast tokenizer. The vocabulary cap is never reached, so every corpus word ends up one token."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    lines = prompt_corpus().split("\n") + list(tokens.chat_words)
    lines += list(ANSWER_WORDS) + [" " + " ".join(ANSWER_WORDS)]  # "happy" and " happy" both whole
    trainer = BpeTrainer(vocab_size=8192, special_tokens=list(tokens.special), show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    post = [processors.ByteLevel(trim_offsets=False)]
    if tokens.prepend_bos:
        post.append(processors.TemplateProcessing(single=f"{tokens.bos} $A", pair=f"{tokens.bos} $A $B",
                                                  special_tokens=[(tokens.bos, tok.token_to_id(tokens.bos))]))
    tok.post_processor = processors.Sequence(post)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=tokens.bos, eos_token=tokens.eos,
                                   pad_token=tokens.pad, extra_special_tokens=dict(tokens.named),
                                   model_max_length=_TEXT["max_position_embeddings"])
    return fast


# ----------------------------------------------------------------------------- public

def build_tiny_vlm(family: str, directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny random checkpoint of ``family`` (one of :data:`TINY_FAMILIES`) to ``directory``.

    Weights depend only on ``seed`` (the global torch RNG is left untouched). Returns the directory,
    which then holds ``config.json``, ``generation_config.json``, ``model.safetensors`` and the
    processor files (tokenizer, image processor, ``chat_template.jinja``)."""
    if family not in _FAMILIES:
        raise ValueError(f"unknown tiny VLM family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    import torch
    from transformers import AutoModelForImageTextToText

    spec = _FAMILIES[family]
    config, processor = spec.build(_train_tokenizer(spec.tokens))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
    out = Path(directory)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out
