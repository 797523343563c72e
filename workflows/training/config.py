"""What ``mien train`` reads from ``--config``: the typed :class:`TrainConfig` (validated at load,
every problem at once) and the DeepSpeed JSONs it names (``zero2`` / ``zero3`` ship in
``workflows/training/deepspeed/``; ``"auto"`` values are filled from the training config).

No Ray and no torch here: the driver (:mod:`workflows.training.ray_train`), the recipe
(:mod:`workflows.training.recipe`) and the retrain cycle all read the same config.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from model.config import ModelConfig
from workflows.core import storage
from workflows.core.cluster import ClusterConfig
from workflows.core.tracking import MlflowConfig
from workflows.training.instructions import (
    DEFAULT_SPLITS,
    DEFAULT_TASKS,
    PseudoLabelFilter,
    task_and_split_problems,
)

DEEPSPEED_CONFIG_DIR = Path(__file__).resolve().parent / "deepspeed"  # package data


# ---------------------------------------------------------------------------------------------
# configuration


@dataclasses.dataclass
class TrainDataConfig:
    """Where examples come from and how they are split (the ``--data`` URI is given separately)."""

    format: Literal["auto", "instructions", "annotations", "records", "labeled"] = "auto"
    # Instruction tasks built from annotate outputs / labeled records (instruction Parquet keeps its own).
    tasks: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_TASKS))
    filter: PseudoLabelFilter = dataclasses.field(default_factory=PseudoLabelFilter)
    splits: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_SPLITS))
    resplit: bool = False  # instruction Parquet that already has a split column keeps it unless true
    train_split: str = "train"
    val_split: str = "val"
    crop_size: int = 224  # face crops are decoded and resized to this side (annotate's default crop)
    max_examples: int = 0  # 0 = all; otherwise a seeded sample (smoke runs)
    val_max_examples: int = 512
    image_threads: int = 8  # parallel reads of referenced images while staging
    loader_workers: int = 0  # DataLoader processes decoding crops per training worker (0 = in the loop)

    def validate(self) -> list[str]:
        problems = task_and_split_problems(self.tasks, self.splits)
        if not problems and self.train_split not in self.splits:
            problems.append(f"train_split: {self.train_split!r} is not one of splits {list(self.splits)}")
        if not 16 <= self.crop_size <= 1024:
            problems.append(f"crop_size: must be in [16, 1024], got {self.crop_size}")
        return problems


@dataclasses.dataclass
class OptimConfig:
    """AdamW with warmup and a cosine / linear / constant schedule (per optimizer step)."""

    lr: float = 2e-4
    # Learning rate of the non-LLM trainable parts (face-prior encoder, FIM, frame compressor);
    # None = ``lr``. LLaVA-style recipes train the projector faster than the adapters.
    projector_lr: float | None = None
    weight_decay: float = 0.0
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.03  # used when warmup_steps is 0
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0

    def validate(self) -> list[str]:
        problems = []
        if self.lr <= 0 or (self.projector_lr is not None and self.projector_lr <= 0):
            problems.append("lr/projector_lr: must be positive")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas: need two values in [0, 1), got {self.betas}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        return problems


@dataclasses.dataclass
class ScalingConfig:
    """Ray Train workers: one process (and one GPU when on GPUs) each."""

    num_workers: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when the cluster has enough GPUs
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # cuda only

    def validate(self) -> list[str]:
        problems = []
        if self.num_workers < 1:
            problems.append("num_workers: must be >= 1")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker <= 0:
            problems.append("cpus_per_worker/gpus_per_worker: must be positive")
        return problems


@dataclasses.dataclass
class CheckpointConfig:
    storage_path: str | None = None  # local dir or s3:// prefix; default: OUTPUT-checkpoints
    name: str = "run"  # Ray Train run name; the same storage_path + name resumes
    every_steps: int = 100  # optimizer steps between checkpoints (and one at the end)
    num_to_keep: int = 2
    max_failures: int = 0  # worker failures Ray Train recovers from (from the last checkpoint)

    def validate(self) -> list[str]:
        problems = []
        if self.every_steps < 1 or self.num_to_keep < 1:
            problems.append("every_steps/num_to_keep: must be >= 1")
        if not self.name or "/" in self.name:
            problems.append(f"name: must be a non-empty name without '/', got {self.name!r}")
        return problems


@dataclasses.dataclass
class FinalEvalConfig:
    """Evaluation of the exported model on held-out faces (report logged with the run)."""

    enabled: bool = True
    split: str = "holdout"
    max_faces: int = 2000
    batch_size: int = 32


@dataclasses.dataclass
class TestingConfig:
    # Raise right after the checkpoint of this optimizer step (0 = never): exercises resumption.
    fail_at_step: int = 0


@dataclasses.dataclass
class TrainConfig:
    """Everything ``mien train`` reads from ``--config`` (plus ``--set key=value`` overrides)."""

    model: ModelConfig | None = None  # the architecture to build (random init where it has no source)
    init_from: str | None = None  # or: start from this model directory / models:/name@alias
    data: TrainDataConfig = dataclasses.field(default_factory=TrainDataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    epochs: int = 1
    max_steps: int = 0  # > 0: stop after this many optimizer steps (epochs repeat as needed)
    micro_batch_size: int = 4  # per worker
    gradient_accumulation_steps: int = 1
    deepspeed: str = "zero2"  # workflows/training/deepspeed/<name>.json, or a path to a DeepSpeed JSON
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    gradient_checkpointing: bool = False
    # Sample order, dropout and the max_examples sample. The fresh parts' initial weights (LoRA A, prior
    # tokens) follow the model's own `model.seed`, recorded in the model directory so every load starts
    # them the same: a seed sweep over initialisations sets model.seed too.
    seed: int = 0
    val_every_steps: int = 0  # 0 = at the end of every epoch
    log_every_steps: int = 1
    scaling: ScalingConfig = dataclasses.field(default_factory=ScalingConfig)
    ray: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    mlflow: MlflowConfig = dataclasses.field(default_factory=lambda: MlflowConfig(experiment="mien-train"))
    evaluate: FinalEvalConfig = dataclasses.field(default_factory=FinalEvalConfig)
    testing: TestingConfig = dataclasses.field(default_factory=TestingConfig)

    def validate(self) -> list[str]:
        problems = []
        if (self.model is None) == (not self.init_from):
            problems.append("model: give exactly one of 'model' (an architecture) and 'init_from' "
                            "(a model URI)")
        if self.model is not None and not _has_trainable_part(self.model):
            problems.append("model: nothing to train; enable llm.lora, face_prior, fim.local_clue or "
                            "vision with trainable parts (a pretrained VLM: vlm.lora or vlm.train_projector)")
        if self.epochs < 1 and self.max_steps < 1:
            problems.append("epochs: must be >= 1 (or set max_steps)")
        if self.micro_batch_size < 1 or self.gradient_accumulation_steps < 1:
            problems.append("micro_batch_size/gradient_accumulation_steps: must be >= 1")
        if self.log_every_steps < 1:
            problems.append("log_every_steps: must be >= 1")
        try:
            deepspeed_json(self.deepspeed)
        except (FileNotFoundError, ValueError) as e:
            problems.append(f"deepspeed: {e}")
        return problems + self.mlflow.unused_settings("train", ("run_id",))


def _has_trainable_part(m: ModelConfig) -> bool:
    if m.is_vlm:
        return bool(m.vlm.trained_parts)
    fim_built = m.vision.enabled or m.fim.local_clue or m.face_prior.enabled
    return bool((m.llm.enabled and (m.llm.lora.enabled or m.llm.trainable))
                or (m.face_prior.enabled and m.face_prior.trainable)
                or (fim_built and m.fim.trainable) or (m.vision.enabled and m.vision.trainable))


def load_train_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Validated :class:`TrainConfig` from YAML plus ``key=value`` overrides (ConfigError lists all)."""
    from workflows.core.config import load_config

    return load_config(TrainConfig, path, list(overrides))


# ---------------------------------------------------------------------------------------------
# DeepSpeed configuration


def deepspeed_json(name_or_path: str) -> dict[str, Any]:
    """The DeepSpeed JSON named ``zero2`` / ``zero3`` (shipped in ``workflows/training/deepspeed/``) or at a path / URI."""
    candidates = [DEEPSPEED_CONFIG_DIR / f"{name_or_path}.json"] if "/" not in name_or_path else []
    for c in candidates:
        if c.exists():
            text = c.read_text()
            break
    else:
        if not name_or_path.endswith(".json"):
            known = sorted(p.stem for p in DEEPSPEED_CONFIG_DIR.glob("*.json"))
            raise FileNotFoundError(f"no DeepSpeed config {name_or_path!r}; use one of {known} or a path "
                                    "to a .json")
        text = storage.read_text(name_or_path)
    data = json.loads(text)
    if "optimizer" in data or "scheduler" in data:
        raise ValueError(f"{name_or_path}: remove the 'optimizer'/'scheduler' sections; mien passes a torch "
                         "AdamW and an LR schedule from the optim: section (no DeepSpeed op is compiled)")
    stage = data.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"{name_or_path}: zero_optimization.stage must be 0-3, got {stage}")
    return data


def resolve_deepspeed_config(base: Mapping[str, Any], cfg: TrainConfig, world_size: int, bf16: bool,
                             hidden_size: int | None = None) -> dict[str, Any]:
    """``base`` with every ``"auto"`` filled from the training config (HF Trainer's convention).

    Values set explicitly must agree with the training config; ``*_bucket_size`` /
    ``*_threshold`` autos need ``hidden_size`` (left as ``"auto"`` without it)."""
    ds = json.loads(json.dumps(base))
    mb, acc = cfg.micro_batch_size, cfg.gradient_accumulation_steps
    wanted = {"train_micro_batch_size_per_gpu": mb, "gradient_accumulation_steps": acc,
              "train_batch_size": mb * acc * world_size, "gradient_clipping": cfg.optim.max_grad_norm}
    problems = []
    for key, value in wanted.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            problems.append(f"{key}={ds[key]} in the DeepSpeed config, but the training config gives {value}")
    for section, on in (("bf16", bf16), ("fp16", False)):
        if section in ds and ds[section].get("enabled") == "auto":
            ds[section]["enabled"] = on
    if bf16 and not ds.get("bf16", {}).get("enabled"):
        ds["bf16"] = {**ds.get("bf16", {}), "enabled": True}
    if problems:
        raise ValueError("; ".join(problems))
    ds["zero_allow_untested_optimizer"] = True
    zero = ds.setdefault("zero_optimization", {})
    if hidden_size:
        autos = {"reduce_bucket_size": hidden_size * hidden_size,
                 "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
                 "stage3_param_persistence_threshold": 10 * hidden_size}
        for key, value in autos.items():
            if zero.get(key) == "auto":
                zero[key] = value
    return ds


def zero_stage(ds: Mapping[str, Any]) -> int:
    """The ZeRO stage (0-3) of a DeepSpeed config."""
    return int(ds.get("zero_optimization", {}).get("stage", 0))
