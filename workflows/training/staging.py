"""Driver side of ``mien train``: stage the training data and open the run directory.

::

    data URI ─► instruction rows ─► splits ─► example tables    RUN/mien/{train,val}.parquet
    (annotate output, instruction Parquet,    (hash of group_id)  RUN/mien/eval_faces.parquet
     labeled records, FORMAT:LABEL_FILE)                          RUN/mien/data_report.json
                                                                  RUN/mien/run.json (identity)

``RUN`` is ``checkpoint.storage_path/checkpoint.name`` (default ``OUTPUT-checkpoints/run``), local
or ``s3://``. A run directory that already holds a run is resumed with its staged data when the
config and data are the same, and refused otherwise (resuming would mix two trainings).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from model.config import ModelConfig
from workflows.core import storage
from workflows.training.config import TrainConfig

log = logging.getLogger(__name__)

# Config sections that may change between a run and its resumption.
RESUMABLE_SECTIONS = ("checkpoint", "mlflow", "evaluate", "testing", "ray", "log_every_steps")


# ---------------------------------------------------------------------------------------------
# data staging


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
    crops = model_cfg.reads_pixels
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


def save_record(run_uri: str, record: Mapping[str, Any]) -> None:
    """Rewrite the run record ``RUN/mien/run.json`` (e.g. with the MLflow run id once known)."""
    storage.write_text(storage.join(run_uri, "mien", "run.json"), json.dumps(record, indent=2))
