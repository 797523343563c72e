"""``mien train`` on Ray Train: the driver and the adapter that runs the Ray-free recipe
(:mod:`workflows.training.recipe`) on TorchTrainer workers, tracked in MLflow.

Driver (:func:`train`)::

    data URI ─► staged examples, run directory (workflows.training.staging)    RUN/mien/...
    TorchTrainer(num_workers) ─► per worker (_train_worker): RayTrainSession + FinetuneRecipe
        setup ─► train (checkpoints through ray.train.report) ─► export (rank 0) ─► OUTPUT
    evaluate OUTPUT on the holdout (a Ray task) ─► MLflow: report, plots, registry @candidate

``RUN`` is ``checkpoint.storage_path/checkpoint.name`` (default ``OUTPUT-checkpoints/run``), local
or ``s3://``. Ray Train keeps its checkpoints there, so rerunning the same command resumes from
the last one (a run whose recorded config differs is refused, not silently mixed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from model.config import ModelConfig
from workflows.core import storage
from workflows.core.tracking import (
    Registry,
    Tracker,
    config_params,
    resolve_tracking_uri,
    system_info,
    use_tracking_for,
)
from workflows.training.config import TrainConfig, deepspeed_json, resolve_deepspeed_config
from workflows.training.recipe import FinetuneRecipe, TrainInputs, default_environment
from workflows.training.staging import StagedData, open_run, read_parquet, run_uri_of, save_record

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# the session over Ray Train, and the worker


class RayTrainSession:
    """The recipe's :class:`~workflows.training.recipe.TrainSession` on a Ray Train worker: rank and
    checkpoints from ``ray.train``, collectives over the process group Ray Train set up."""

    def __init__(self, use_gpu: bool):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = str(ray.train.torch.get_device()) if use_gpu else "cpu"

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as d:
            yield d

    def report(self, metrics: Mapping[str, Any], checkpoint_dir: str | None = None) -> None:
        import ray.train
        from ray.train import Checkpoint

        if checkpoint_dir is None:
            ray.train.report(dict(metrics))
        else:
            ray.train.report(dict(metrics), checkpoint=Checkpoint.from_directory(checkpoint_dir),
                             checkpoint_dir_name=Path(checkpoint_dir).name)

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


def _train_worker(loop: dict[str, Any]) -> None:
    """Ray Train loop: the recipe on this worker's session (``loop``: config, inputs, device)."""
    import torch.distributed as dist

    from workflows.core.config import from_dict

    session = RayTrainSession(use_gpu=loop["device"] == "cuda")
    recipe = FinetuneRecipe(from_dict(TrainConfig, loop["config"]), TrainInputs(**loop["inputs"]), session)
    recipe.setup()
    recipe.train()
    recipe.export()
    recipe.cleanup()
    dist.barrier()
    dist.destroy_process_group()  # before exit, or a ZeRO-3 rank may abort at interpreter shutdown


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
    warnings: list[str] = dataclasses.field(default_factory=list)

    def render(self) -> str:
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"

        resumed = " (resumed)" if self.start_step else ""
        lines = [f"model {self.model_id} -> {self.output}",
                 f"steps {self.start_step} -> {self.steps}{resumed}; loss {fmt(self.loss)}, "
                 f"val loss {fmt(self.val_loss)}; {self.wall_s:.0f} s",
                 f"checkpoints: {self.run_uri}"]
        losses = [(h["step"], h["loss"]) for h in self.history if h.get("loss") is not None]
        if len(losses) >= 2:  # did it help? the first and last training loss of this attempt
            (s0, l0), (s1, l1) = losses[0], losses[-1]
            change = f" ({(l1 - l0) / l0:+.0%})" if l0 else ""
            lines.append(f"training loss: {l0:.4f} at step {s0} -> {l1:.4f} at step {s1}{change}")
        lines += [f"WARNING {w}" for w in self.warnings]
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

    # Workers run in Ray's session directory: every path the user gave is fixed here, on the driver.
    data_uri, output_uri = storage.absolute(data_uri), storage.absolute(output_uri)
    if cfg.init_from:
        cfg.init_from = storage.absolute(cfg.init_from)
    if cfg.checkpoint.storage_path:
        cfg.checkpoint.storage_path = storage.absolute(cfg.checkpoint.storage_path)
    if cfg.model is not None and cfg.model.vlm.source:  # the base a saved model directory references
        cfg.model.vlm.source = storage.absolute(cfg.model.vlm.source)
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
        save_record(run_uri, record)

    inputs = TrainInputs(train=staged.train, val=staged.val, output=output_uri, run_uri=run_uri,
                         deepspeed=ds_config, bf16=bf16, needs_crops=model_cfg.reads_pixels,
                         mlflow_run_id=run_id, tracking_uri=tracking)
    loop = {"config": to_dict(cfg), "inputs": dataclasses.asdict(inputs), "device": device}
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
    try:
        _check_exported(out)
    except TrainingError:
        _mlflow_close(tracking, run_id, "FAILED")
        raise

    if staged.eval_faces:
        out.eval_report, out.eval_report_uri = _final_evaluation(cfg, staged, output_uri, run_uri, device)
    elif cfg.evaluate.enabled:
        out.warnings.append(f"no faces in split {cfg.evaluate.split!r}: the final evaluation was skipped, so this "
                            "run does not say whether training helped. Give more data (a holdout split needs whole "
                            "videos), or evaluate on a labeled set: `mien evaluate --model "
                            f"{output_uri} --data LABELED_DIR`")
        log.warning(out.warnings[-1])
    if run_id:
        _mlflow_finish(cfg, tracking, run_id, out)  # type: ignore[arg-type]
    out.wall_s = time.time() - t0
    return out


def _check_exported(out: TrainResult) -> None:
    """The exported model directory is complete and is the model trained (nothing is evaluated or
    registered otherwise): its manifest and every part verify, and its id is the worker's."""
    from model import open_model
    from model.model_dir import ModelDirError, compute_model_id, verify_parts

    try:
        directory, manifest = open_model(out.output)
        verify_parts(directory, manifest)
    except (ModelDirError, ValueError) as e:
        raise TrainingError(f"the trained model was not written completely to {out.output} ({e}); nothing "
                            "was registered. Rerun the same command: training resumes from its checkpoint") from e
    found = manifest.get("model_id") or compute_model_id(manifest)
    if found != out.model_id:
        raise TrainingError(f"{out.output} holds model {found}, not the trained {out.model_id}; nothing was "
                            "registered. Rerun the same command")


def _architecture_of(uri: str) -> ModelConfig:
    from model import open_model
    from model.config import config_from_dict

    _, manifest = open_model(uri)
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
