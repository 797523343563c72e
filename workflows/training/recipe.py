"""The training recipe of ``mien train``: build, wrap in DeepSpeed ZeRO, resume, train, checkpoint,
export. No Ray inside (torchtune style): everything distributed goes through the
:class:`TrainSession` the recipe is given, so the same code runs

- on Ray Train workers (:class:`workflows.training.ray_train.RayTrainSession`, N ranks), and
- in one plain process (:class:`LocalSession`: world size 1, checkpoints in a local folder),
  which is how the tests exercise it without a cluster.

::

    recipe = FinetuneRecipe(cfg, inputs, session)
    recipe.setup()    # model, staged examples, AdamW + LR schedule, DeepSpeed, resume, tracking
    recipe.train()    # optimizer steps; checkpoints reported every checkpoint.every_steps and at the end
    recipe.export()   # model directory (ZeRO-3 shards gathered), RUN/mien/result.json, final report
    recipe.cleanup()

The model is built by :func:`model.build_model` (frozen vision tower and base LLM, LoRA adapters
and Face Info Mining / face-prior encoder trainable by their config flags; for a pretrained VLM,
``vlm.source``, LoRA on its language model and optionally its projector) or loaded from
``init_from``; the loss covers answer tokens only (``FacialMLLM.forward``, ``VLMFacialModel.forward``). The optimizer is a
torch AdamW handed to ``deepspeed.initialize`` (``zero_allow_untested_optimizer``), so no DeepSpeed
op is compiled; on CPU the shared-memory comm op (only used by DeepSpeed's inference all-reduce)
is skipped instead of JIT-compiled. bf16 on GPUs, fp32 on CPUs (``precision: auto``).

A checkpoint is a directory ``checkpoint_<step:08d>/`` holding DeepSpeed's files (every rank its
own shards, under ``deepspeed/``) and ``mien_state.json`` (step, epoch, micro-batch position,
written by rank 0), so a resumed run continues mid-epoch with the same sample order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from workflows.core import faults, storage
from workflows.core.tracking import Tracker, resolve_tracking_uri, system_info, use_tracking_for
from workflows.training.config import OptimConfig, TrainConfig, resolve_deepspeed_config, zero_stage
from workflows.training.staging import read_parquet

log = logging.getLogger(__name__)

DS_TAG = "deepspeed"  # sub-directory of every checkpoint holding DeepSpeed's files
STATE_FILE = "mien_state.json"  # step / epoch / position, written by rank 0 into every checkpoint


# ---------------------------------------------------------------------------------------------
# the session: what the recipe needs from the distributed world


class TrainSession(Protocol):
    """The recipe's view of the distributed world: its rank, where checkpoints go and come from,
    and the two collectives it uses. Implemented by :class:`LocalSession` (one process) and
    :class:`workflows.training.ray_train.RayTrainSession` (Ray Train workers).

    A torch.distributed process group must be initialised when the recipe runs: DeepSpeed
    needs one even for a single process."""

    rank: int
    world_size: int
    device: str  # "cpu", "cuda:0", ...: where this rank's model and tensors live

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[str | None]:
        """A context giving the local directory of the checkpoint to resume from, or None."""
        ...

    def report(self, metrics: Mapping[str, Any], checkpoint_dir: str | None = None) -> None:
        """Report ``metrics``, with a checkpoint when ``checkpoint_dir`` is given (every rank calls
        this with its own directory of files; the directory's name is the checkpoint's name). The
        directory may be deleted once this returns."""
        ...

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (every rank calls it)."""
        ...

    def barrier(self) -> None:
        """Wait until every rank reaches this point."""
        ...


class LocalSession:
    """A :class:`TrainSession` for one process without Ray: world size 1, checkpoints kept as
    directories under ``checkpoint_root`` (the newest one is resumed from), reports kept in
    :attr:`reports`.

    DeepSpeed asserts an initialised process group and a ``LOCAL_RANK`` environment variable
    even for one process, and caches the groups it derives from it for the life of the process
    (a group destroyed and initialised again breaks the next engine). So the session starts a
    single-rank group over an in-process store once per process (gloo on CPU, NCCL on CUDA) and
    leaves it up; it refuses a group of more than one rank."""

    rank = 0
    world_size = 1

    def __init__(self, checkpoint_root: str | os.PathLike[str], device: str = "cpu"):
        import torch.distributed as dist

        self.device = device
        self.checkpoint_root = Path(checkpoint_root)
        self.reports: list[dict[str, Any]] = []  # {"metrics": ..., "checkpoint": path or None}
        os.environ.setdefault("LOCAL_RANK", "0")
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        elif dist.get_world_size() != 1:
            raise RuntimeError(f"LocalSession runs one process, but this process is one of "
                               f"{dist.get_world_size()} ranks of a process group")

    def checkpoints(self) -> list[Path]:
        """The reported checkpoints, oldest first (names are zero-padded steps)."""
        if not self.checkpoint_root.is_dir():
            return []
        return sorted(p for p in self.checkpoint_root.iterdir() if p.is_dir() and not p.name.startswith("."))

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        found = self.checkpoints()
        yield str(found[-1]) if found else None

    def report(self, metrics: Mapping[str, Any], checkpoint_dir: str | None = None) -> None:
        kept = None
        if checkpoint_dir is not None:
            name = Path(checkpoint_dir).name
            partial = self.checkpoint_root / f".{name}.partial"  # a crash mid-copy is never resumed from
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(checkpoint_dir, partial)
            kept = self.checkpoint_root / name
            shutil.rmtree(kept, ignore_errors=True)
            partial.rename(kept)
        self.reports.append({"metrics": dict(metrics), "checkpoint": str(kept) if kept else None})

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        return [float(v) for v in values]

    def barrier(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# what the driver prepared


@dataclasses.dataclass
class TrainInputs:
    """What the recipe trains on and writes to, prepared by the driver (plain values: it travels
    to Ray Train workers)."""

    train: str  # staged training examples (Parquet URI, workflows.training.staging)
    val: str | None  # staged validation examples, or None
    output: str  # the model directory to export (local or s3://)
    run_uri: str  # the run directory; rank 0 writes RUN/mien/result.json there
    deepspeed: dict[str, Any]  # DeepSpeed config with the training config's autos filled
    bf16: bool
    needs_crops: bool  # whether examples are decoded with their face crops
    mlflow_run_id: str | None = None  # per-step metrics go into this run (rank 0)
    tracking_uri: str | None = None


# ---------------------------------------------------------------------------------------------
# the recipe


class FinetuneRecipe:
    """Fine-tuning of the facial MLLM under DeepSpeed ZeRO, driven through a :class:`TrainSession`
    (see the module doc for the order of calls)."""

    def __init__(self, cfg: TrainConfig, inputs: TrainInputs, session: TrainSession):
        self.cfg, self.inputs, self.session = cfg, inputs, session
        self.state = {"step": 0, "epoch": 0, "micro": 0}
        self.start_step = 0
        self.history: list[dict[str, float]] = []
        self.final_metrics: dict[str, Any] = {}
        self._last_val: float | None = None
        self._last_ckpt_step = -1

    def setup(self) -> None:
        """Build (or load) the model, read the staged examples, wrap AdamW and the LR schedule in
        DeepSpeed, resume from the session's latest checkpoint, start rank 0's MLflow logging."""
        default_environment()
        import deepspeed
        import torch

        from model import build_model
        from workflows.training.data import ExampleDataset

        cfg, inputs = self.cfg, self.inputs
        rank, world, device = self.session.rank, self.session.world_size, self.session.device
        use_gpu = device.startswith("cuda")
        skipped = skip_cpu_shm_comm_build() if not use_gpu else False
        if rank == 0 and skipped:
            log.info("DeepSpeed's CPU shared-memory comm op is not compiled (training uses gloo collectives)")
        torch.manual_seed(cfg.seed + rank)
        t0 = time.time()

        if cfg.init_from:
            from model import load_model

            tracking = inputs.tracking_uri or resolve_tracking_uri(cfg.mlflow.tracking_uri)
            use_tracking_for(cfg.init_from, tracking)
            mllm = load_model(cfg.init_from, device=device).mllm
        else:
            mllm = build_model(cfg.model, device=device)
        if not inputs.bf16:
            mllm.float()  # fp32 master weights and compute on CPU
        if cfg.gradient_checkpointing:
            mllm.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        mllm.train()
        self.mllm = mllm
        self.n_trainable = sum(p.numel() for _, p in mllm.trainable_parameters())
        self.n_total = sum(p.numel() for p in mllm.parameters())
        if not self.n_trainable:
            raise ValueError(f"{cfg.init_from or 'model'}: the model has no trainable parameters; start from a "
                             "model with adapters (mien model init --base DIR --output MODEL_DIR --set "
                             "vlm.lora.enabled=true) or give a model: config with LoRA enabled")

        crop, with_crop = cfg.data.crop_size, inputs.needs_crops
        self.train_set = ExampleDataset(read_parquet(inputs.train), crop, with_crop)
        self.val_set = ExampleDataset(read_parquet(inputs.val), crop, with_crop) if inputs.val else None
        mb, acc = cfg.micro_batch_size, cfg.gradient_accumulation_steps
        steps_per_epoch = (len(self.train_set) // world) // mb // acc
        # whole optimizer steps only: accumulation never spans epochs
        self.micro_per_epoch = steps_per_epoch * acc
        if steps_per_epoch < 1:
            raise ValueError(f"{len(self.train_set)} training examples are too few for {world} workers x micro "
                             f"batch {mb} x accumulation {acc}; lower micro_batch_size / "
                             "gradient_accumulation_steps")
        self.total_steps = total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
        warmup = warmup_steps(cfg.optim, total_steps)

        optimizer = torch.optim.AdamW(_param_groups(mllm, cfg), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                      eps=cfg.optim.eps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total_steps, warmup, cfg.optim.schedule, cfg.optim.min_lr_ratio))
        self.ds_config = resolve_deepspeed_config(inputs.deepspeed, cfg, world, inputs.bf16,
                                                  hidden_size=mllm.llm_dim)
        self.engine, _, _, _ = deepspeed.initialize(model=mllm, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=self.ds_config, dist_init_required=False)
        self.stage = zero_stage(self.ds_config)

        with self.session.latest_checkpoint() as d:
            if d:
                self.engine.load_checkpoint(d, tag=DS_TAG, load_module_strict=False, load_optimizer_states=True,
                                            load_lr_scheduler_states=True)
                self.state = json.loads(Path(d, STATE_FILE).read_text())["state"]
                self._last_ckpt_step = self.state["step"]
                log.info("rank %d resumed from step %d (epoch %d, micro-batch %d)", rank, self.state["step"],
                         self.state["epoch"], self.state["micro"])
        self.start_step = self.state["step"]
        self.setup_s = time.time() - t0

        self.tracker = _StepTracker(inputs.mlflow_run_id, inputs.tracking_uri) if rank == 0 else None
        if self.tracker:
            self.tracker.start(self.ds_config, {
                "trainable_parameters": self.n_trainable, "total_parameters": self.n_total, "world_size": world,
                "steps_total": total_steps, "start_step": self.start_step, "examples_train": len(self.train_set),
                "setup_s": round(self.setup_s, 2)})
        self.counter = _TokenCounter(mllm.llm)

    def train(self) -> dict[str, Any]:
        """Run optimizer steps up to the total; report a checkpoint every ``checkpoint.every_steps``,
        at the end, and at ``testing.fail_at_step`` (then raise). Returns the final metrics
        (``loss``, ``val_loss``, ``steps``)."""
        cfg, state, engine, mllm = self.cfg, self.state, self.engine, self.mllm
        rank, world = self.session.rank, self.session.world_size
        mb, acc, total_steps = cfg.micro_batch_size, cfg.gradient_accumulation_steps, self.total_steps
        window = {"loss": 0.0, "answer_tokens": 0.0, "tokens": 0.0, "samples": 0.0}
        t_step = time.time()
        done = state["step"] >= total_steps
        while not done:
            order = _rank_indices(len(self.train_set), world, rank, cfg.seed, state["epoch"], shuffle=True,
                                  drop_last=True)
            order = order[:self.micro_per_epoch * mb][state["micro"] * mb:]  # resume mid-epoch where we stopped
            for rows in _loader(self.train_set, order, mb, drop_last=True, workers=cfg.data.loader_workers):
                batch = mllm.collate(rows)
                n_answer = float(sum(len(a) for a in batch.answer_ids))
                loss = engine(batch).loss
                engine.backward(loss)
                engine.step()
                window["loss"] += float(loss.detach()) * n_answer
                window["answer_tokens"] += n_answer
                window["tokens"] += self.counter.take()
                window["samples"] += len(rows)
                state["micro"] += 1
                if state["micro"] % acc:
                    continue
                state["step"] += 1
                loss_sum, answer_tokens, tokens, samples = self.session.all_reduce_sum(
                    [window["loss"], window["answer_tokens"], window["tokens"], window["samples"]])
                elapsed = max(time.time() - t_step, 1e-9)
                metrics = {"step": state["step"], "epoch": state["epoch"] + state["micro"] / self.micro_per_epoch,
                           "loss": loss_sum / max(answer_tokens, 1.0), "lr": float(engine.get_lr()[0]),
                           "samples_per_s": samples / elapsed, "tokens_per_s": tokens / elapsed,
                           "step_time_s": elapsed}
                grad_norm = engine.get_global_grad_norm()
                if grad_norm is not None:
                    metrics["grad_norm"] = float(grad_norm)
                window = dict.fromkeys(window, 0.0)
                if cfg.val_every_steps and state["step"] % cfg.val_every_steps == 0:
                    self._last_val = metrics["val_loss"] = self.val_loss()
                self.history.append(metrics)
                if self.tracker and (state["step"] % cfg.log_every_steps == 0 or state["step"] == total_steps):
                    self.tracker.log_step(metrics)
                final = state["step"] >= total_steps
                failing = state["step"] == cfg.testing.fail_at_step
                if final or failing or state["step"] % cfg.checkpoint.every_steps == 0:
                    self.save_checkpoint({**metrics, "val_loss": self._last_val})
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
                    self._last_val = self.val_loss()
                    if self.tracker and self._last_val is not None:
                        self.tracker.log_step({"step": state["step"], "val_loss": self._last_val})

        if self._last_ckpt_step != state["step"]:  # a resumed run that had already finished training
            self.save_checkpoint({"step": state["step"], "val_loss": self._last_val})
        if not cfg.val_every_steps or self._last_val is None:
            self._last_val = self.val_loss()
        self.final_metrics = {"loss": self.history[-1]["loss"] if self.history else None,
                              "val_loss": self._last_val, "steps": state["step"]}
        return self.final_metrics

    def val_loss(self) -> float | None:
        """Mean answer-token loss on the validation examples over all ranks (None without any)."""
        import torch

        if self.val_set is None or len(self.val_set) == 0:
            return None
        rank, world = self.session.rank, self.session.world_size
        self.engine.eval()
        idx = _rank_indices(len(self.val_set), world, rank, self.cfg.seed, 0, shuffle=False, drop_last=False)
        total = tokens = 0.0
        with torch.no_grad():
            for rows in _batches(self.val_set, idx, self.cfg.micro_batch_size, drop_last=False):
                batch = self.mllm.collate(rows)
                n = float(sum(len(a) for a in batch.answer_ids))
                total += float(self.engine(batch).loss) * n
                tokens += n
        self.counter.take()
        self.engine.train()
        total, tokens = self.session.all_reduce_sum([total, tokens])
        return total / tokens if tokens else None

    def save_checkpoint(self, metrics: Mapping[str, Any]) -> None:
        """Write this rank's DeepSpeed files (and rank 0 the loop state) and report them."""
        with tempfile.TemporaryDirectory(prefix="mien-ckpt-") as tmp:
            d = os.path.join(tmp, f"checkpoint_{self.state['step']:08d}")
            os.makedirs(os.path.join(d, DS_TAG), exist_ok=True)  # every rank writes its own shard files
            self.engine.save_checkpoint(d, tag=DS_TAG, save_latest=False, exclude_frozen_parameters=True)
            if self.session.rank == 0:
                Path(d, STATE_FILE).write_text(json.dumps({"state": self.state, "metrics": dict(metrics)}))
            self.session.report(metrics, checkpoint_dir=d)
        self._last_ckpt_step = self.state["step"]

    def export(self) -> str | None:
        """Write the model directory to ``inputs.output`` (ZeRO-3 shards of what is saved gathered
        first; rank 0 writes), record the outcome in ``RUN/mien/result.json`` and report the final
        metrics. Returns the model id on rank 0, None elsewhere."""
        import deepspeed

        rank = self.session.rank
        self.mllm.eval()
        model_id = None
        saved_metrics = {k: float(v) for k, v in self.final_metrics.items() if isinstance(v, int | float)}
        if self.stage == 3:
            with deepspeed.zero.GatheredParameters(_export_parameters(self.mllm), modifier_rank=None):
                if rank == 0:
                    model_id = _save(self.mllm, self.inputs.output, saved_metrics)
        elif rank == 0:
            model_id = _save(self.mllm, self.inputs.output, saved_metrics)
        self.session.barrier()
        if rank == 0:
            # Ray's Result.metrics are those of the last checkpoint; the driver reads the whole outcome here.
            outcome = {**self.final_metrics, "model_id": model_id, "start_step": self.start_step,
                       "total_steps": self.total_steps, "history": self.history,
                       "trainable_parameters": self.n_trainable, "total_parameters": self.n_total,
                       "world_size": self.session.world_size, "deepspeed": self.ds_config,
                       "setup_s": self.setup_s}
            storage.write_text(storage.join(self.inputs.run_uri, "mien", "result.json"),
                               json.dumps(outcome, default=str))
        if self.tracker:
            self.tracker.finish(self.final_metrics)
        self.session.report({**self.final_metrics, "model_id": model_id, "start_step": self.start_step})
        return model_id

    def cleanup(self) -> None:
        """Remove the token-counting hook and drop the engine, optimizer and model."""
        self.counter.handle.remove()
        del self.engine, self.mllm, self.train_set, self.val_set


# ---------------------------------------------------------------------------------------------
# environment: caches, DeepSpeed on CPU


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
    """Warmup length in optimizer steps: ``warmup_steps``, else ``warmup_ratio`` of ``total``."""
    return cfg.warmup_steps or int(cfg.warmup_ratio * total)


# ---------------------------------------------------------------------------------------------
# parameters, sample order, micro-batches


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


# ---------------------------------------------------------------------------------------------
# export and per-step tracking


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

    def __init__(self, run_id: str | None, tracking_uri: str | None):
        self.run = Tracker(tracking_uri, run_id) if run_id and tracking_uri else None

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
