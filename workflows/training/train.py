"""``mien train``: LoRA fine-tuning of the facial MLLM with Ray Train + DeepSpeed ZeRO, tracked in MLflow.

Driver (:func:`train`)::

    data URI ─► instruction rows ─► splits ─► staged examples      RUN/mien/{train,val}.parquet
    (annotate output, instruction Parquet,    (hash of group_id)    RUN/mien/eval_faces.parquet
     labeled records, FORMAT:LABEL_FILE)
    TorchTrainer(num_workers) ─► per worker: build model, DeepSpeed ZeRO-2/3, train, checkpoint
    export (rank 0) ─► OUTPUT (model directory) ─► evaluate on the holdout ─► MLflow registry @candidate

``RUN`` is ``checkpoint.storage_path/checkpoint.name`` (default ``OUTPUT-checkpoints/run``), local
or ``s3://``. Ray Train keeps its checkpoints there, so rerunning the same command resumes from
the last one (a run whose recorded config differs is refused, not silently mixed).

Worker: the model is built by :func:`model.build_model` (frozen vision tower and base LLM, LoRA
adapters and Face Info Mining / face-prior encoder trainable by their config flags); the loss
covers answer tokens only (``FacialMLLM.forward``). The optimizer is a torch AdamW handed to
``deepspeed.initialize`` (``zero_allow_untested_optimizer``), so no DeepSpeed op is compiled;
on CPU the shared-memory comm op (only used by DeepSpeed's inference all-reduce) is skipped
instead of JIT-compiled. bf16 on GPUs, fp32 on CPUs (``precision: auto``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from model.config import ModelConfig
from workflows.core import faults, storage
from workflows.core.cluster import ClusterConfig
from workflows.core.tracking import (
    MlflowConfig,
    Registry,
    Tracker,
    config_params,
    resolve_tracking_uri,
    system_info,
    use_tracking_for,
)
from workflows.training.instructions import DEFAULT_SPLITS, DEFAULT_TASKS, TASKS, PseudoLabelFilter

log = logging.getLogger(__name__)

DEEPSPEED_CONFIG_DIR = Path(__file__).resolve().parent / "deepspeed"  # package data
DS_TAG = "deepspeed"  # sub-directory of every checkpoint holding DeepSpeed's files
STATE_FILE = "mien_state.json"  # step / epoch / position, written by rank 0 into every checkpoint
# Config sections that may change between a run and its resumption.
RESUMABLE_SECTIONS = ("checkpoint", "mlflow", "evaluate", "testing", "ray", "log_every_steps")


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
        problems = []
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            problems.append(f"tasks: must be a non-empty subset of {list(TASKS)}, got {self.tasks}")
        fractions = list(self.splits.values())
        if not fractions or any(v < 0 for v in fractions) or abs(sum(fractions) - 1) > 1e-6:
            problems.append(f"splits: fractions must be >= 0 and sum to 1, got {self.splits}")
        elif self.train_split not in self.splits:
            problems.append(f"train_split: {self.train_split!r} is not one of splits {list(self.splits)}")
        if not 16 <= self.crop_size <= 1024:
            problems.append(f"crop_size: must be in [16, 1024], got {self.crop_size}")
        if self.max_examples < 0 or self.val_max_examples < 0 or self.loader_workers < 0:
            problems.append("max_examples/val_max_examples/loader_workers: must be >= 0")
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
        if self.warmup_steps < 0 or not 0 <= self.warmup_ratio < 1:
            problems.append("warmup_steps must be >= 0 and warmup_ratio in [0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.max_grad_norm < 0:
            problems.append("max_grad_norm: must be >= 0 (0 = no clipping)")
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
                            "vision with trainable parts")
        if self.epochs < 1 and self.max_steps < 1:
            problems.append("epochs: must be >= 1 (or set max_steps)")
        if self.max_steps < 0:
            problems.append("max_steps: must be >= 0")
        if self.micro_batch_size < 1 or self.gradient_accumulation_steps < 1:
            problems.append("micro_batch_size/gradient_accumulation_steps: must be >= 1")
        if self.log_every_steps < 1 or self.val_every_steps < 0:
            problems.append("log_every_steps must be >= 1 and val_every_steps >= 0")
        try:
            deepspeed_json(self.deepspeed)
        except (FileNotFoundError, ValueError) as e:
            problems.append(f"deepspeed: {e}")
        return problems + self.mlflow.unused_settings("train", ("run_id",))


def _has_trainable_part(m: ModelConfig) -> bool:
    fim_built = m.vision.enabled or m.fim.local_clue or m.face_prior.enabled
    return bool((m.llm.enabled and (m.llm.lora.enabled or m.llm.trainable))
                or (m.face_prior.enabled and m.face_prior.trainable)
                or (fim_built and m.fim.trainable) or (m.vision.enabled and m.vision.trainable))


def needs_crops(m: ModelConfig) -> bool:
    """Whether the model reads face pixels (vision tower or FEALLM local clues)."""
    return bool(m.vision.enabled or m.fim.local_clue)


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
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def skip_cpu_shm_comm_build() -> bool:
    """On CPU, stop DeepSpeed from JIT-compiling its shared-memory comm op (~80 s per fresh cache).

    The op only serves DeepSpeed's inference all-reduce (tensor-parallel inference); training
    collectives go through torch.distributed (gloo). A build installed with
    ``DS_BUILD_SHM_COMM=1`` is used as is, and ``MIEN_DS_SHM_COMM=1`` keeps the JIT build.
    Returns True when the build was skipped."""
    if os.environ.get("MIEN_DS_SHM_COMM") == "1":
        return False
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return False
    try:
        from deepspeed.git_version_info import installed_ops

        if installed_ops.get("deepspeed_shm_comm"):
            return False
    except ImportError:  # pragma: no cover - every release has it
        pass
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return True


def default_environment() -> None:
    """Caches beside the asset cache (``MIEN_CACHE_DIR``) unless set: compiled torch/DeepSpeed
    extensions, matplotlib; MLflow quiet."""
    from workflows.core.assets import cache_dir

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir().parent / "torch_extensions"))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MPLCONFIGDIR", str(cache_dir().parent / "matplotlib"))


# ---------------------------------------------------------------------------------------------
# learning-rate schedule


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base LR for optimizer step ``step`` (0-based) of ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_steps(cfg: OptimConfig, total: int) -> int:
    return cfg.warmup_steps or int(cfg.warmup_ratio * total)


# ---------------------------------------------------------------------------------------------
# data staging (driver)


@dataclasses.dataclass
class StagedData:
    """URIs of the staged example tables and what went into them."""

    run_uri: str
    train: str
    val: str | None
    eval_faces: str | None
    report: dict[str, Any]

    @property
    def n_train(self) -> int:
        return int(self.report["examples"]["train"])


def _write_parquet(table: Any, uri: str) -> None:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue())


def read_parquet(uri: str) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(storage.read_bytes(uri)))


def _seeded_head(table: Any, n: int, seed: int) -> Any:
    import numpy as np

    if not n or table.num_rows <= n:
        return table
    idx = np.sort(np.random.default_rng(seed).permutation(table.num_rows)[:n])
    return table.take(idx)


def stage_data(cfg: TrainConfig, model_cfg: ModelConfig, data_uri: str, run_uri: str) -> StagedData:
    """Load ``data_uri`` as instruction rows, split them, and write the example tables under ``RUN/mien/``."""
    import pyarrow.compute as pc

    from workflows.training.data import (
        embed_images,
        examples_from_instructions,
        faces_from_instructions,
        load_instructions,
    )
    from workflows.training.instructions import assign_splits, split_counts

    d = cfg.data
    table, load_report = load_instructions(data_uri, d.format, tasks=d.tasks, flt=d.filter)
    if table.num_rows == 0:
        raise ValueError(f"{data_uri}: no instruction rows "
                         f"(load report: {json.dumps(load_report, default=str)})")
    has_splits = table.column("split").null_count < table.num_rows
    if d.resplit or not has_splits:
        table = assign_splits(table, d.splits)
    crops = needs_crops(model_cfg)
    report: dict[str, Any] = {"data": data_uri, "load": load_report, "splits": split_counts(table),
                              "needs_crops": crops, "examples": {}}

    def split_rows(name: str) -> Any:
        return table.filter(pc.equal(table.column("split"), name))

    base = storage.join(run_uri, "mien")
    out: dict[str, str | None] = {}
    roles = (("train", d.train_split, d.max_examples), ("val", d.val_split, d.val_max_examples))
    for role, name, cap in roles:
        rows = split_rows(name)
        if crops:
            rows, report[f"images_{role}"] = embed_images(rows, d.image_threads)
        examples, ex_report = examples_from_instructions(rows, needs_crops=crops)
        examples = _seeded_head(examples, cap, cfg.seed)
        report["examples"][role] = examples.num_rows
        report[f"build_{role}"] = ex_report
        if role == "val" and examples.num_rows == 0:
            out[role] = None
            continue
        out[role] = storage.join(base, f"{role}.parquet")
        _write_parquet(examples, out[role])
    if report["examples"]["train"] == 0:
        raise ValueError(f"{data_uri}: no training examples in split {d.train_split!r} "
                         f"(splits: {report['splits']}; build: {report['build_train']})")
    eval_uri = None
    if cfg.evaluate.enabled:
        rows = split_rows(cfg.evaluate.split)
        if crops:
            rows, _ = embed_images(rows, d.image_threads)
        faces = _seeded_head(faces_from_instructions(rows), cfg.evaluate.max_faces, cfg.seed)
        if crops:
            faces = faces.filter(pc.invert(pc.is_null(faces.column("image"))))
        report["eval_faces"] = faces.num_rows
        if faces.num_rows:
            eval_uri = storage.join(base, "eval_faces.parquet")
            _write_parquet(faces, eval_uri)
    storage.write_text(storage.join(base, "data_report.json"), json.dumps(report, indent=2, default=str))
    return StagedData(run_uri, out["train"], out["val"], eval_uri, report)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# run directory: resume or refuse


def run_uri_of(cfg: TrainConfig, output_uri: str) -> tuple[str, str]:
    """``(storage_path, run_uri)`` with local paths made absolute (Ray Train needs that)."""
    base = cfg.checkpoint.storage_path or f"{output_uri.rstrip('/')}-checkpoints"
    if not storage.is_remote(base):
        base = os.path.abspath(storage.strip_file_scheme(base))
    return base, storage.join(base, cfg.checkpoint.name)


def _identity(cfg: TrainConfig, data_uri: str) -> dict[str, Any]:
    from workflows.core.config import to_dict

    d = {k: v for k, v in to_dict(cfg).items() if k not in RESUMABLE_SECTIONS}
    d["scaling"] = {"num_workers": cfg.scaling.num_workers}  # ZeRO shards are per rank
    return {"data_uri": data_uri, "config": d}


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def open_run(cfg: TrainConfig, model_cfg: ModelConfig, data_uri: str,
             run_uri: str) -> tuple[StagedData, dict[str, Any]]:
    """Stage data for a new run, or reuse the staged data of the run being resumed.

    Returns the staged data and the run record (``RUN/mien/run.json``: identity, MLflow run id)."""
    from workflows.core.config import ConfigError

    record_uri = storage.join(run_uri, "mien", "run.json")
    identity = _identity(cfg, data_uri)
    if storage.exists(record_uri):
        record = json.loads(storage.read_text(record_uri))
        diff = _differences(record["identity"], identity)
        if diff:
            raise ConfigError([f"{run_uri} holds a run started with a different config or data; resuming it "
                               f"would mix them. Differences: {'; '.join(diff[:8])}. Use another "
                               "--set checkpoint.name=NAME (or storage_path), or remove that run"])
        report = json.loads(storage.read_text(storage.join(run_uri, "mien", "data_report.json")))
        base = storage.join(run_uri, "mien")
        val = storage.join(base, "val.parquet")
        faces = storage.join(base, "eval_faces.parquet")
        staged = StagedData(run_uri, storage.join(base, "train.parquet"),
                            val if storage.exists(val) else None, faces if storage.exists(faces) else None,
                            report)
        log.info("resuming run %s (data staged %s)", run_uri, record.get("created_at"))
        return staged, record
    staged = stage_data(cfg, model_cfg, data_uri, run_uri)
    record = {"identity": identity, "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "mlflow_run_id": None}
    storage.write_text(record_uri, json.dumps(record, indent=2))
    return staged, record


def _save_record(run_uri: str, record: Mapping[str, Any]) -> None:
    storage.write_text(storage.join(run_uri, "mien", "run.json"), json.dumps(record, indent=2))


# ---------------------------------------------------------------------------------------------
# MLflow (driver side)


# ---------------------------------------------------------------------------------------------
# the training worker


def _param_groups(mllm: Any, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: LLM adapters at ``lr``, other trainable parts at ``projector_lr``; no decay on
    biases, norms and other 1-D tensors."""
    groups: dict[tuple[bool, bool], list[Any]] = {}
    for name, p in mllm.trainable_parameters():
        is_llm = name.startswith("llm.")
        decay = p.ndim >= 2 and "norm" not in name.lower()
        groups.setdefault((is_llm, decay), []).append(p)
    out = []
    for (is_llm, decay), params in groups.items():
        lr = cfg.optim.lr if is_llm or cfg.optim.projector_lr is None else cfg.optim.projector_lr
        out.append({"params": params, "lr": lr, "weight_decay": cfg.optim.weight_decay if decay else 0.0})
    return out


def _export_parameters(mllm: Any) -> list[Any]:
    """Parameters ``save_model`` reads: trained parts and adapters, plus whole base models that have
    no other source (random init, full fine-tune) and so are bundled."""
    c = mllm.cfg
    if ((c.llm.enabled and (not c.llm.source or c.llm.trainable))
            or (c.vision.enabled and (not c.vision.source or c.vision.trainable))):
        return list(mllm.parameters())
    params = {id(p): p for _, p in mllm.trainable_parameters()}
    for module in mllm.part_modules().values():
        params.update({id(p): p for p in module.parameters()})
    return list(params.values())


class _TokenCounter:
    """Counts the real (unpadded) tokens of every LLM forward through a forward pre-hook."""

    def __init__(self, llm: Any):
        self.tokens = 0
        self.handle = llm.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is not None:
            self.tokens += int(mask.sum())
        elif kwargs.get("inputs_embeds") is not None:
            self.tokens += int(kwargs["inputs_embeds"].shape[0] * kwargs["inputs_embeds"].shape[1])

    def take(self) -> int:
        n, self.tokens = self.tokens, 0
        return n


def _rank_indices(n: int, world: int, rank: int, seed: int, epoch: int, shuffle: bool,
                  drop_last: bool) -> list[int]:
    """This rank's sample order for ``epoch`` (torch DistributedSampler semantics, deterministic)."""
    import torch

    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    if drop_last:
        per = n // world
        order = order[:per * world]
    else:
        per = math.ceil(n / world)
        order = (order * math.ceil(per * world / max(n, 1)))[:per * world] if n else []
    return order[rank::world]


def _batches(dataset: Any, indices: list[int], size: int, drop_last: bool) -> Iterator[list[dict[str, Any]]]:
    end = len(indices) - (len(indices) % size if drop_last else 0)
    for s in range(0, end, size):
        yield [dataset[i] for i in indices[s:s + size]]


def _loader(dataset: Any, indices: list[int], size: int, drop_last: bool,
            workers: int) -> Iterator[list[dict[str, Any]]]:
    """Micro-batches of decoded examples; with ``workers`` > 0 decoding runs in DataLoader processes."""
    if workers <= 0:
        return _batches(dataset, indices, size, drop_last)
    from torch.utils.data import DataLoader

    return iter(DataLoader(dataset, batch_size=size, sampler=indices, drop_last=drop_last,
                           num_workers=workers, collate_fn=list))


def _train_worker(loop: dict[str, Any]) -> None:  # noqa: C901 - one training loop, read top to bottom
    """Ray Train loop: build, wrap in DeepSpeed, resume, train, checkpoint, export."""
    default_environment()
    import deepspeed
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from ray.train import Checkpoint

    from model import build_model
    from workflows.core.config import from_dict
    from workflows.training.data import ExampleDataset

    cfg = from_dict(TrainConfig, loop["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_gpu = loop["device"] == "cuda"
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    skipped = skip_cpu_shm_comm_build() if not use_gpu else False
    if rank == 0 and skipped:
        log.info("DeepSpeed's CPU shared-memory comm op is not compiled (training uses gloo collectives)")
    torch.manual_seed(cfg.seed + rank)
    t0 = time.time()

    if cfg.init_from:
        from model import load_model

        tracking = loop.get("tracking_uri") or resolve_tracking_uri(cfg.mlflow.tracking_uri)
        use_tracking_for(cfg.init_from, tracking)
        mllm = load_model(cfg.init_from, device=str(device)).mllm
    else:
        mllm = build_model(cfg.model, device=str(device))
    bf16 = loop["bf16"]
    if not bf16:
        mllm.float()  # fp32 master weights and compute on CPU
    if cfg.gradient_checkpointing:
        mllm.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mllm.train()
    n_trainable = sum(p.numel() for _, p in mllm.trainable_parameters())
    n_total = sum(p.numel() for p in mllm.parameters())

    crop, with_crop = cfg.data.crop_size, loop["needs_crops"]
    train_set = ExampleDataset(read_parquet(loop["train"]), crop, with_crop)
    val_set = ExampleDataset(read_parquet(loop["val"]), crop, with_crop) if loop["val"] else None
    mb, acc = cfg.micro_batch_size, cfg.gradient_accumulation_steps
    steps_per_epoch = (len(train_set) // world) // mb // acc
    micro_per_epoch = steps_per_epoch * acc  # whole optimizer steps only: accumulation never spans epochs
    if steps_per_epoch < 1:
        raise ValueError(f"{len(train_set)} training examples are too few for {world} workers x micro batch "
                         f"{mb} x accumulation {acc}; lower micro_batch_size / gradient_accumulation_steps")
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    warmup = warmup_steps(cfg.optim, total_steps)

    optimizer = torch.optim.AdamW(_param_groups(mllm, cfg), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  eps=cfg.optim.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, cfg.optim.schedule, cfg.optim.min_lr_ratio))
    ds_config = resolve_deepspeed_config(loop["deepspeed"], cfg, world, bf16, hidden_size=mllm.llm_dim)
    engine, _, _, _ = deepspeed.initialize(model=mllm, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, dist_init_required=False)
    stage = zero_stage(ds_config)

    state = {"step": 0, "epoch": 0, "micro": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag=DS_TAG, load_module_strict=False, load_optimizer_states=True,
                                   load_lr_scheduler_states=True)
            state = json.loads(Path(d, STATE_FILE).read_text())["state"]
        log.info("rank %d resumed from step %d (epoch %d, micro-batch %d)", rank, state["step"],
                 state["epoch"], state["micro"])
    start_step = state["step"]
    setup_s = time.time() - t0

    tracker = _StepTracker(loop, rank) if rank == 0 else None
    if tracker:
        tracker.start(ds_config, {"trainable_parameters": n_trainable, "total_parameters": n_total,
                                  "world_size": world, "steps_total": total_steps, "start_step": start_step,
                                  "examples_train": len(train_set), "setup_s": round(setup_s, 2)})
    counter = _TokenCounter(mllm.llm)
    history: list[dict[str, float]] = []
    last_val: float | None = None
    last_ckpt_step = start_step if checkpoint else -1

    def all_sum(values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def val_loss() -> float | None:
        if val_set is None or len(val_set) == 0:
            return None
        engine.eval()
        idx = _rank_indices(len(val_set), world, rank, cfg.seed, 0, shuffle=False, drop_last=False)
        total = tokens = 0.0
        with torch.no_grad():
            for rows in _batches(val_set, idx, mb, drop_last=False):
                batch = mllm.collate(rows)
                n = float(sum(len(a) for a in batch.answer_ids))
                total += float(engine(batch).loss) * n
                tokens += n
        counter.take()
        engine.train()
        total, tokens = all_sum([total, tokens])
        return total / tokens if tokens else None

    def save(metrics: dict[str, Any]) -> None:
        nonlocal last_ckpt_step
        with tempfile.TemporaryDirectory(prefix="mien-ckpt-") as d:
            os.makedirs(os.path.join(d, DS_TAG), exist_ok=True)  # every rank writes its own shard files
            engine.save_checkpoint(d, tag=DS_TAG, save_latest=False, exclude_frozen_parameters=True)
            if rank == 0:
                Path(d, STATE_FILE).write_text(json.dumps({"state": state, "metrics": metrics}))
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d),
                             checkpoint_dir_name=f"checkpoint_{state['step']:08d}")
        last_ckpt_step = state["step"]

    window = {"loss": 0.0, "answer_tokens": 0.0, "tokens": 0.0, "samples": 0.0}
    t_step = time.time()
    done = state["step"] >= total_steps
    while not done:
        order = _rank_indices(len(train_set), world, rank, cfg.seed, state["epoch"], shuffle=True,
                              drop_last=True)
        order = order[:micro_per_epoch * mb][state["micro"] * mb:]  # resume mid-epoch where we stopped
        for rows in _loader(train_set, order, mb, drop_last=True, workers=cfg.data.loader_workers):
            batch = mllm.collate(rows)
            n_answer = float(sum(len(a) for a in batch.answer_ids))
            loss = engine(batch).loss
            engine.backward(loss)
            engine.step()
            window["loss"] += float(loss.detach()) * n_answer
            window["answer_tokens"] += n_answer
            window["tokens"] += counter.take()
            window["samples"] += len(rows)
            state["micro"] += 1
            if state["micro"] % acc:
                continue
            state["step"] += 1
            loss_sum, answer_tokens, tokens, samples = all_sum(
                [window["loss"], window["answer_tokens"], window["tokens"], window["samples"]])
            elapsed = max(time.time() - t_step, 1e-9)
            metrics = {"step": state["step"], "epoch": state["epoch"] + state["micro"] / micro_per_epoch,
                       "loss": loss_sum / max(answer_tokens, 1.0), "lr": float(engine.get_lr()[0]),
                       "samples_per_s": samples / elapsed, "tokens_per_s": tokens / elapsed,
                       "step_time_s": elapsed}
            grad_norm = engine.get_global_grad_norm()
            if grad_norm is not None:
                metrics["grad_norm"] = float(grad_norm)
            window = dict.fromkeys(window, 0.0)
            if cfg.val_every_steps and state["step"] % cfg.val_every_steps == 0:
                last_val = metrics["val_loss"] = val_loss()
            history.append(metrics)
            if tracker and (state["step"] % cfg.log_every_steps == 0 or state["step"] == total_steps):
                tracker.log_step(metrics)
            final = state["step"] >= total_steps
            failing = state["step"] == cfg.testing.fail_at_step
            if final or failing or state["step"] % cfg.checkpoint.every_steps == 0:
                save({**metrics, "val_loss": last_val})
            if failing:
                faults.fail_at("testing.fail_at_step", cfg.testing.fail_at_step, state["step"],
                               "stopping after the checkpoint of this step (rerun the same command to resume)")
            t_step = time.time()
            if final:
                done = True
                break
        else:
            state["epoch"] += 1
            state["micro"] = 0
            if not cfg.val_every_steps:
                last_val = val_loss()
                if tracker and last_val is not None:
                    tracker.log_step({"step": state["step"], "val_loss": last_val})

    if last_ckpt_step != state["step"]:  # a resumed run that had already finished training
        save({"step": state["step"], "val_loss": last_val})
    if not cfg.val_every_steps or last_val is None:
        last_val = val_loss()
    final_metrics = {"loss": history[-1]["loss"] if history else None, "val_loss": last_val,
                     "steps": state["step"]}

    # export: gather ZeRO-3 shards of what is saved, write the model directory on rank 0
    counter.handle.remove()
    mllm.eval()
    model_id = None
    saved_metrics = {k: float(v) for k, v in final_metrics.items() if isinstance(v, int | float)}
    if stage == 3:
        with deepspeed.zero.GatheredParameters(_export_parameters(mllm), modifier_rank=None):
            if rank == 0:
                model_id = _save(mllm, loop["output"], saved_metrics)
    elif rank == 0:
        model_id = _save(mllm, loop["output"], saved_metrics)
    dist.barrier()
    if rank == 0:
        # Ray's Result.metrics are those of the last checkpoint; the driver reads the whole outcome here.
        outcome = {**final_metrics, "model_id": model_id, "start_step": start_step,
                   "total_steps": total_steps, "history": history, "trainable_parameters": n_trainable,
                   "total_parameters": n_total, "world_size": world, "deepspeed": ds_config,
                   "setup_s": setup_s}
        storage.write_text(storage.join(loop["run_uri"], "mien", "result.json"),
                           json.dumps(outcome, default=str))
    if tracker:
        tracker.finish(final_metrics)
    ray.train.report({**final_metrics, "model_id": model_id, "start_step": start_step})
    dist.barrier()
    dist.destroy_process_group()  # before exit, or a ZeRO-3 rank may abort at interpreter shutdown


def _save(mllm: Any, output: str, metrics: Mapping[str, float]) -> str:
    from model import save_model

    model_id = save_model(mllm, output, metrics=metrics)
    log.info("exported %s to %s", model_id, output)
    return model_id


def _metric_key(name: str) -> str:
    """Step metric name in MLflow: ``train/loss``, ``train/tokens_per_s``, ``val/loss``, ``epoch``."""
    if name == "val_loss":
        return "val/loss"
    return name if name == "epoch" else f"train/{name}"


class _StepTracker:
    """Rank 0's per-step MLflow logging into the driver's run (a failing tracking server never
    stops training)."""

    def __init__(self, loop: Mapping[str, Any], rank: int):
        run_id = loop.get("mlflow_run_id")
        self.run = Tracker(loop["tracking_uri"], run_id) if run_id else None

    def _call(self, fn: str, *args: Any) -> None:
        if self.run is None:
            return
        try:
            getattr(self.run, fn)(*args)
        except Exception as e:  # noqa: BLE001 - tracking is best effort
            log.warning("MLflow %s failed (%s: %s)", fn, type(e).__name__, e)

    def start(self, ds_config: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        self._call("set_tags", {**system_info(), **{f"train.{k}": v for k, v in info.items()}})
        self._call("log_dict", ds_config, "config/deepspeed.json")

    def log_step(self, metrics: Mapping[str, Any]) -> None:
        self._call("log_metrics", {_metric_key(k): v for k, v in metrics.items() if k != "step"},
                   int(metrics["step"]))

    def finish(self, metrics: Mapping[str, Any]) -> None:
        self._call("log_metrics", {f"final/{k}": v for k, v in metrics.items()}, int(metrics.get("steps") or 0))


# ---------------------------------------------------------------------------------------------
# the driver


@dataclasses.dataclass
class TrainResult:
    """What a finished ``mien train`` produced."""

    output: str
    model_id: str
    run_uri: str
    steps: int
    start_step: int
    loss: float | None
    val_loss: float | None
    history: list[dict[str, Any]]
    mlflow_run_id: str | None = None
    registered_uri: str | None = None
    model_version: str | None = None
    eval_report: dict[str, Any] | None = None
    eval_report_uri: str | None = None
    wall_s: float = 0.0

    def render(self) -> str:
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"

        resumed = " (resumed)" if self.start_step else ""
        lines = [f"model {self.model_id} -> {self.output}",
                 f"steps {self.start_step} -> {self.steps}{resumed}; loss {fmt(self.loss)}, "
                 f"val loss {fmt(self.val_loss)}; {self.wall_s:.0f} s",
                 f"checkpoints: {self.run_uri}"]
        if self.history:
            tps = [h["tokens_per_s"] for h in self.history if "tokens_per_s" in h]
            sps = [h["samples_per_s"] for h in self.history if "samples_per_s" in h]
            if tps:
                lines.append(f"throughput: {sum(sps) / len(sps):.1f} samples/s, "
                             f"{sum(tps) / len(tps):.0f} tokens/s (mean over steps, all workers)")
        if self.eval_report and self.eval_report.get("fe"):
            fe = self.eval_report["fe"]
            lines.append(f"holdout: FE accuracy {fmt(fe.get('accuracy'))}, UAR {fmt(fe.get('uar'))}, "
                         f"ECE {fmt(fe.get('ece'))} on {fe.get('n')} faces")
        if self.registered_uri:
            lines.append(f"registered: {self.registered_uri} (version {self.model_version})")
        if self.mlflow_run_id:
            lines.append(f"mlflow run: {self.mlflow_run_id}")
        return "\n".join(lines)


class TrainingError(RuntimeError):
    """Training failed on the cluster; the message says how to resume."""


def _device(cfg: TrainConfig, resources: Mapping[str, float]) -> str:
    if cfg.scaling.device != "auto":
        return cfg.scaling.device
    need = cfg.scaling.num_workers * cfg.scaling.gpus_per_worker
    return "cuda" if float(resources.get("GPU", 0.0)) >= need else "cpu"


def _ray_storage(storage_path: str) -> tuple[str, Any]:
    """Ray Train's ``storage_path`` / ``storage_filesystem``: S3 goes through mien's fsspec
    filesystem, so custom endpoints (MinIO, moto) and credentials behave as everywhere else."""
    if not storage.is_remote(storage_path):
        return storage_path, None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = storage.filesystem(storage_path)
    return path, PyFileSystem(FSSpecHandler(fs))


def train(cfg: TrainConfig, data_uri: str, output_uri: str) -> TrainResult:
    """Fine-tune on ``data_uri`` and export the model directory to ``output_uri`` (see module doc).

    Raises ConfigError for configuration problems (including resuming a run under a changed
    config) and :class:`TrainingError` when training fails on the cluster."""
    t0 = time.time()
    default_environment()
    from ray.train import CheckpointConfig as RayCheckpointConfig
    from ray.train import FailureConfig, RunConfig
    from ray.train import ScalingConfig as RayScalingConfig
    from ray.train.torch import TorchTrainer

    from workflows.core.config import to_dict

    storage.check_writable(output_uri)
    ds_base = deepspeed_json(cfg.deepspeed)
    use_tracking_for(cfg.init_from, resolve_tracking_uri(cfg.mlflow.tracking_uri))
    model_cfg = cfg.model if cfg.model is not None else _architecture_of(cfg.init_from)  # type: ignore[arg-type]
    storage_path, run_uri = run_uri_of(cfg, output_uri)
    staged, record = open_run(cfg, model_cfg, data_uri, run_uri)
    log.info("data: %s training examples, %s validation, %s holdout faces (%s)", staged.n_train,
             staged.report["examples"].get("val"), staged.report.get("eval_faces"), staged.report["splits"])

    resources = cfg.ray.connect()
    device = _device(cfg, resources)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device == "cuda")
    ds_config = resolve_deepspeed_config(ds_base, cfg, cfg.scaling.num_workers, bf16)

    tracking = resolve_tracking_uri(cfg.mlflow.tracking_uri) if cfg.mlflow.enabled else None
    run_id = None
    if tracking:
        run_id = _mlflow_open(cfg, tracking, record, run_uri, data_uri, output_uri, staged, ds_config)
    if run_id and record.get("mlflow_run_id") != run_id:
        record["mlflow_run_id"] = run_id
        _save_record(run_uri, record)

    loop = {"config": to_dict(cfg), "train": staged.train, "val": staged.val, "output": output_uri,
            "device": device, "bf16": bf16, "deepspeed": ds_config, "needs_crops": needs_crops(model_cfg),
            "mlflow_run_id": run_id, "tracking_uri": tracking, "run_uri": run_uri}
    path, filesystem = _ray_storage(storage_path)
    resources_per_worker = {"CPU": cfg.scaling.cpus_per_worker}
    if device == "cuda":
        resources_per_worker["GPU"] = cfg.scaling.gpus_per_worker
    trainer = TorchTrainer(
        _train_worker, train_loop_config=loop,
        scaling_config=RayScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=device == "cuda",
                                        resources_per_worker=resources_per_worker),
        run_config=RunConfig(name=cfg.checkpoint.name, storage_path=path, storage_filesystem=filesystem,
                             checkpoint_config=RayCheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
                             failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures)))
    try:
        result = trainer.fit()
    except Exception as e:
        _mlflow_close(tracking, run_id, "FAILED")
        raise TrainingError(f"training failed ({type(e).__name__}: {e}). Rerun the same command to resume "
                            f"from the last checkpoint under {run_uri}") from e
    if getattr(result, "error", None):
        _mlflow_close(tracking, run_id, "FAILED")
        raise TrainingError(f"training failed: {result.error}. Rerun the same command to resume from "
                            f"{run_uri}")
    m = json.loads(storage.read_text(storage.join(run_uri, "mien", "result.json")))
    out = TrainResult(output=output_uri, model_id=str(m.get("model_id")), run_uri=run_uri,
                      steps=int(m.get("steps", 0)), start_step=int(m.get("start_step", 0)),
                      loss=m.get("loss"), val_loss=m.get("val_loss"), history=list(m.get("history") or []),
                      mlflow_run_id=run_id)

    if staged.eval_faces:
        out.eval_report, out.eval_report_uri = _final_evaluation(cfg, staged, output_uri, run_uri, device)
    elif cfg.evaluate.enabled:
        log.warning("no faces in split %r: the final evaluation is skipped (evaluate later with "
                    "`mien evaluate --model %s --data HELD_OUT_DATA`)", cfg.evaluate.split, output_uri)
    if run_id:
        _mlflow_finish(cfg, tracking, run_id, out)  # type: ignore[arg-type]
    out.wall_s = time.time() - t0
    return out


def _architecture_of(uri: str) -> ModelConfig:
    from model.config import config_from_dict
    from model.model_dir import read_manifest, resolve_model_uri

    manifest = read_manifest(resolve_model_uri(uri))
    return config_from_dict(manifest["architecture"], source=f"{uri} architecture")


def _final_evaluation(cfg: TrainConfig, staged: StagedData, output_uri: str, run_uri: str,
                      device: str) -> tuple[dict[str, Any], str]:
    """Evaluate the exported model on the staged holdout faces in a Ray task with one worker's resources."""
    import ray

    from workflows.evaluation.metrics import write_report

    opts: dict[str, Any] = {"num_cpus": cfg.scaling.cpus_per_worker}
    if device == "cuda":
        opts["num_gpus"] = cfg.scaling.gpus_per_worker
    task = ray.remote(_evaluate_staged).options(**opts)
    report = ray.get(task.remote(output_uri, staged.eval_faces, device, cfg.data.crop_size,
                                 cfg.evaluate.batch_size))
    uri = storage.join(run_uri, "mien", "eval", "report.json")
    write_report(report, uri)
    return report, uri


def _evaluate_staged(model_uri: str, faces_uri: str, device: str, crop_size: int,
                     batch_size: int) -> dict[str, Any]:
    from model import load_model
    from workflows.evaluation.evaluate import evaluate_faces

    annotator = load_model(model_uri, device="cuda" if device == "cuda" else "cpu")
    return evaluate_faces(annotator, read_parquet(faces_uri), crop_size=crop_size, batch_size=batch_size)


def _mlflow_open(cfg: TrainConfig, tracking: str, record: Mapping[str, Any], run_uri: str, data_uri: str,
                 output_uri: str, staged: StagedData, ds_config: Mapping[str, Any]) -> str | None:
    """Start (or reopen, when resuming) the MLflow run; log params, config and data report."""
    try:
        import yaml

        from workflows.core.config import to_dict

        run = None
        if record.get("mlflow_run_id"):
            try:
                run = Tracker.reopen(tracking, record["mlflow_run_id"])
            except Exception:  # noqa: BLE001 - the run lives in another tracking store: start a new one
                run = None
        if run is None:
            run = Tracker.start(tracking, cfg.mlflow.experiment,
                                run_name=f"{cfg.checkpoint.name}-{Path(output_uri.rstrip('/')).name}",
                                tags={"mien.job": "train"}, artifact_location=cfg.mlflow.artifact_location)
            run.log_params({**config_params(to_dict(cfg)), "data_uri": data_uri, "output_uri": output_uri})
        run.set_tags({"mien.run_uri": run_uri, "mien.data": data_uri, "mien.output": output_uri,
                      "mien.examples_train": staged.n_train, **system_info()})
        run.log_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), "config/train_config.yaml")
        run.log_dict(ds_config, "config/deepspeed.json")
        run.log_dict(staged.report, "data/data_report.json")
        return run.run_id
    except Exception as e:  # noqa: BLE001 - tracking must not stop training
        log.warning("MLflow unavailable (%s: %s); training goes on without tracking", type(e).__name__, e)
        return None


def _mlflow_close(tracking: str | None, run_id: str | None, status: str) -> None:
    if not (tracking and run_id):
        return
    try:
        Tracker(tracking, run_id).end(status)
    except Exception as e:  # noqa: BLE001
        log.warning("MLflow: could not close run %s (%s)", run_id, e)


def _mlflow_finish(cfg: TrainConfig, tracking: str, run_id: str, out: TrainResult) -> None:
    """Eval report and plots as artifacts, the model directory registered with the alias; the run ends."""
    try:
        from model.model_dir import materialize
        from workflows.evaluation.metrics import flat_metrics, report_plots

        run = Tracker(tracking, run_id)
        if out.eval_report:
            run.log_dict(out.eval_report, "eval/report.json")
            run.log_metrics({f"eval/{k}": v for k, v in flat_metrics(out.eval_report).items()}, out.steps)
            run.log_files(report_plots(out.eval_report), "eval")
        name = cfg.mlflow.registered_model
        if name is None:
            name = (cfg.model.name if cfg.model is not None else _architecture_of(cfg.init_from).name)  # type: ignore[arg-type]
        logged = run.log_model_dir(materialize(out.output), artifact_path="model", registered_model_name=name or None,
                                   alias=cfg.mlflow.alias or None)
        run.set_tags({"mien.model_id": out.model_id})
        if name and logged.version:
            out.registered_uri, out.model_version = logged.uri, logged.version
            tags = {"mien.model_id": out.model_id, "mien.run_uri": out.run_uri, "mien.steps": str(out.steps)}
            if out.eval_report:
                tags.update({f"eval.{k}": f"{v:.6g}" for k, v in flat_metrics(out.eval_report).items()
                             if k.count("/") == 1})
            Registry(tracking).tag_version(name, logged.version, tags)
        run.end("FINISHED")
    except Exception as e:  # noqa: BLE001 - the model directory is complete either way
        log.warning("MLflow finishing failed (%s: %s); the model is at %s", type(e).__name__, e, out.output)
        _mlflow_close(tracking, run_id, "FINISHED")
