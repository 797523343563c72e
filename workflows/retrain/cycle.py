"""``mien retrain``: retrain on new pseudo-labels and promote the result only when it is better.

One invocation is one retraining cycle; there is no scheduler loop (run it from cron, a
Kubernetes CronJob or a KubeRay RayCronJob)::

    champion @champion ─► its data watermark (MLflow tag mien.data_watermark: per annotate output,
                          the newest committed finished_at it was trained up to)
    annotate outputs ─► committed ok videos rows newer than the watermark ─► none: "no new data", exit
                     ─► their faces ─► PseudoLabelFilter ─► instruction rows ─► hash split by group
    train (workflows.training.ray_train, from the champion's weights by default) ─► registered @candidate
    evaluate candidate AND champion on the same fixed holdout ─► decide ─► record ─► move @champion

The holdout is either a labeled data set (``holdout.uri``) or the ``holdout`` split of the
pseudo-labels; group → split is a hash of the group id, so a video never moves between
splits and is never trained on in any cycle once it hashed into the holdout.

Idempotency: the cycle has a deterministic id (watermark range + base champion version +
configuration hash). Everything it produces lives under ``WORK/<id>/`` and in MLflow under
that id, and every step first looks for its finished result there::

    WORK/<id>/plan.json          what the cycle is about (sources, counts, configuration)
    WORK/<id>/data/              training instruction Parquet (+ _SUCCESS.json)
    WORK/<id>/holdout/           pseudo-label holdout instruction Parquet, if no holdout.uri
    WORK/<id>/train/             Ray Train checkpoints (a rerun resumes an interrupted fit)
    WORK/<id>/model/             the candidate model directory
    WORK/<id>/train.json         training finished and the candidate's registered version
    WORK/<id>/eval/*.json        holdout reports of the candidate and the champion
    WORK/<id>/decision.json      the decision and its reasons (also MLflow tags / metrics)

The ``champion`` alias is moved last and only from the champion the decision was made
against (compare and set), so a rerun never promotes twice and never demotes a champion
that someone else promoted in the meantime. One retrain per model name at a time (the
CronJob's ``concurrencyPolicy: Forbid``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from workflows.core import faults, storage
from workflows.core.tracking import (
    MlflowConfig,
    Registry,
    Tracker,
    config_params,
    resolve_tracking_uri,
    store_exists,
)
from workflows.corpus.reader import AnnotationOutput, discover_outputs
from workflows.training.instructions import (
    DEFAULT_SPLITS,
    DEFAULT_TASKS,
    PseudoLabelFilter,
    task_and_split_problems,
)

log = logging.getLogger(__name__)

WATERMARK_TAG = "mien.data_watermark"
RETRAIN_ID_TAG = "mien.retrain_id"


# ---------------------------------------------------------------------------------------------
# configuration


@dataclasses.dataclass
class RetrainDataConfig:
    """Which pseudo-labels a cycle trains on."""

    sources: list[str] = dataclasses.field(default_factory=list)  # annotate outputs or prefixes holding them
    # new: only videos annotated after the champion's watermark (fine-tuning the champion);
    # all: every committed video up to the new watermark (a full retrain; new data only triggers it).
    window: Literal["new", "all"] = "new"
    tasks: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_TASKS))
    filter: PseudoLabelFilter = dataclasses.field(default_factory=PseudoLabelFilter)
    # Hash split of group ids (video, or video/track); rows of other splits than the training
    # config's train/val splits (e.g. holdout) are never trained on.
    splits: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_SPLITS))
    min_train_rows: int = 1  # fewer training rows after filtering: wait for more data, train nothing

    def validate(self) -> list[str]:
        problems = task_and_split_problems(self.tasks, self.splits)
        if self.min_train_rows < 1:
            problems.append(f"min_train_rows: must be >= 1, got {self.min_train_rows}")
        return problems


@dataclasses.dataclass
class HoldoutConfig:
    """The fixed set both candidate and champion are scored on."""

    # Labeled data (anything `mien evaluate --data` reads). null: the `split` split of the
    # pseudo-labels of every source, which is biased towards the model that made those labels.
    uri: str | None = None
    format: Literal["auto", "instructions", "annotations", "records", "labeled"] = "auto"
    # Only rows of this split of `uri` (data without a split column is hash-split as `mien
    # evaluate --split` does); null: every row.
    uri_split: str | None = None
    split: str = "holdout"  # the pseudo-label holdout: this split of data.splits
    filter: PseudoLabelFilter | None = None  # pseudo-label holdout filter; null: data.filter
    max_faces: int = 2000  # a seeded sample beyond this (the same faces for both models)
    min_faces: int = 20  # a smaller holdout cannot support a decision: nothing is trained

    def validate(self) -> list[str]:
        problems = []
        if self.uri is None and not self.split:
            problems.append("split: the pseudo-label holdout needs a split name (or give uri)")
        if self.uri is not None and self.filter is not None:
            problems.append("filter: only applies to the pseudo-label holdout (uri is set)")
        if self.min_faces < 1:
            problems.append(f"min_faces: must be >= 1, got {self.min_faces}")
        return problems


@dataclasses.dataclass
class RetrainTrainConfig:
    """How the candidate is trained: a `mien train` config plus overrides."""

    config: str = "jobs/configs/train/tiny_cpu.yaml"  # relative: to the working dir, the retrain config's dir, the install
    overrides: list[str] = dataclasses.field(default_factory=list)  # `--set` style, e.g. optim.lr=1e-4
    # Start from the champion's weights (and architecture) when there is one; else the config's model.
    init_from_champion: bool = True


@dataclasses.dataclass
class EvaluationConfig:
    """How the holdout is scored (the same settings for candidate and champion)."""

    batch_size: int = 32
    au_threshold: float = 0.5
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Score in a Ray task with these resources (GPU clusters: the driver has no GPU); false: in
    # this process.
    ray_task: bool = False
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def validate(self) -> list[str]:
        problems = []
        if self.batch_size < 1 or not 0 < self.au_threshold < 1:
            problems.append("batch_size must be >= 1 and au_threshold in (0, 1)")
        return problems


@dataclasses.dataclass
class PromotionConfig:
    """When the candidate replaces the champion."""

    metric: str = "fe/uar"  # a key of workflows.evaluation.metrics.flat_metrics: fe/accuracy, fe/uar, fe/ece, au/mean_f1
    mode: Literal["max", "min"] = "max"  # min for metrics where lower is better (fe/ece)
    margin: float = 0.01  # the candidate must beat the champion by at least this (absolute)
    minimum: float = 0.0  # and reach this (max mode; at most this in min mode), with or without a champion
    alias: str = "champion"
    candidate_alias: str = "candidate"

    def validate(self) -> list[str]:
        problems = []
        if not self.metric or "/" not in self.metric:
            problems.append(f"metric: a report metric such as fe/uar, got {self.metric!r}")
        if not self.alias or self.alias == self.candidate_alias:
            problems.append("alias/candidate_alias: must be two different, non-empty aliases")
        return problems


@dataclasses.dataclass
class RetrainTestingConfig:
    # Raise right after this step completed (its results persisted): exercises crash safety.
    fail_after: Literal["", "data", "train", "register", "evaluate", "decide"] = ""


@dataclasses.dataclass
class RetrainConfig:
    """Everything ``mien retrain`` reads from ``--config`` (plus ``--set`` overrides)."""

    model_name: str = "mien"  # registered model name in MLflow
    work_dir: str = "retrain"  # local or s3://; one sub-directory per cycle
    data: RetrainDataConfig = dataclasses.field(default_factory=RetrainDataConfig)
    holdout: HoldoutConfig = dataclasses.field(default_factory=HoldoutConfig)
    train: RetrainTrainConfig = dataclasses.field(default_factory=RetrainTrainConfig)
    evaluate: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    promotion: PromotionConfig = dataclasses.field(default_factory=PromotionConfig)
    # Always on (the champion and every decision live there); the registered model is model_name.
    mlflow: MlflowConfig = dataclasses.field(default_factory=lambda: MlflowConfig(experiment="mien-retrain"))
    testing: RetrainTestingConfig = dataclasses.field(default_factory=RetrainTestingConfig)

    def validate(self) -> list[str]:
        from workflows.core.config import ConfigError

        problems = []
        if not self.model_name or "/" in self.model_name or "@" in self.model_name:
            problems.append(f"model_name: a registered model name without '/' or '@', got {self.model_name!r}")
        if self.holdout.uri is None and self.holdout.split not in self.data.splits:
            problems.append(f"holdout.split: {self.holdout.split!r} is not one of data.splits "
                            f"{list(self.data.splits)} (or set holdout.uri to a labeled set)")
        try:
            tcfg = load_candidate_train_config(self)
        except ConfigError as e:
            problems += [f"train.config: {p}" for p in e.problems]
        else:
            if tcfg.data.train_split not in self.data.splits:
                problems.append(f"data.splits: lacks the training config's train split {tcfg.data.train_split!r}")
            if self.holdout.uri is None and self.holdout.split in (tcfg.data.train_split, tcfg.data.val_split):
                problems.append(f"holdout.split: {self.holdout.split!r} is trained on (the training config's "
                                "train/val split)")
        return problems + self.mlflow.unused_settings("retrain", ("enabled", "registered_model", "alias", "run_id"))


def load_retrain_config(path: str | None, overrides: Sequence[str] = (),
                        search_dirs: Sequence[str | Path] = ()) -> RetrainConfig:
    """Validated :class:`RetrainConfig` (the training config it names is validated too).

    A relative ``train.config`` is resolved here, on the driver, against the working directory,
    then the directory of ``path``, then ``search_dirs`` (the CLI adds the directory that holds
    the shipped ``jobs/configs``)."""
    from workflows.core.config import deep_merge, from_dict, parse_overrides, read_yaml, resolve_relative

    merged = deep_merge(read_yaml(path) if path is not None else {}, parse_overrides(list(overrides)))
    train = merged.get("train")
    if train is None:
        train = merged["train"] = {}
    if isinstance(train, dict):
        rel = train.get("config", RetrainTrainConfig.config)
        if isinstance(rel, str):
            dirs = ([os.path.dirname(os.path.abspath(path))] if path and not storage.is_remote(path) else [])
            train["config"] = resolve_relative(rel, [*dirs, *search_dirs])
    return from_dict(RetrainConfig, merged, source=str(path) if path else None)


def _train_config_data(cfg: RetrainConfig) -> dict[str, Any]:
    """The training config file merged with ``train.overrides`` (what identifies the training)."""
    from workflows.core.config import deep_merge, parse_overrides, read_yaml

    return deep_merge(read_yaml(cfg.train.config), parse_overrides(cfg.train.overrides))


def load_candidate_train_config(cfg: RetrainConfig, runtime: Mapping[str, Any] | None = None) -> Any:
    """The :class:`workflows.training.config.TrainConfig` of the candidate: file, ``train.overrides``, then
    ``runtime`` (settings the retrain owns: checkpoint path, registry name, init_from ...)."""
    from workflows.core.config import deep_merge, from_dict
    from workflows.training.config import TrainConfig

    data = _train_config_data(cfg)
    if runtime:
        data = deep_merge(data, runtime)
    return from_dict(TrainConfig, data, source=cfg.train.config)


# ---------------------------------------------------------------------------------------------
# watermarks: per annotate output root, the newest committed finished_at in ms


def _ms_to_iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def _iso_to_ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * 1000)


# ---------------------------------------------------------------------------------------------
# the plan


@dataclasses.dataclass
class SourcePlan:
    root: str
    watermark_from: str | None  # the champion's (exclusive)
    watermark_to: str | None  # the newest committed finished_at now (inclusive)
    new_videos: int
    new_runs: list[str]


@dataclasses.dataclass
class RetrainPlan:
    """What a cycle is about; ``--dry-run`` prints it, ``plan.json`` stores it."""

    model_name: str
    retrain_id: str | None
    work_uri: str | None
    champion_version: str | None
    champion_uri: str | None  # what the champion is loaded from (init_from and evaluation)
    sources: list[SourcePlan]
    watermark: dict[str, str]  # the new data watermark (tagged on the candidate)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # counts after filtering and split
    holdout: dict[str, Any] = dataclasses.field(default_factory=dict)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    promotion: dict[str, Any] = dataclasses.field(default_factory=dict)
    done: list[str] = dataclasses.field(default_factory=list)  # steps an earlier attempt finished
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def new_videos(self) -> int:
        return sum(s.new_videos for s in self.sources)

    @property
    def new_runs(self) -> list[str]:
        return sorted({r for s in self.sources for r in s.new_runs})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def render(self) -> str:
        champ = (f"{self.model_name} v{self.champion_version} ({self.champion_uri})" if self.champion_version
                 else f"{self.model_name}: none yet (first champion needs {self.promotion.get('metric')} "
                      f"{'>=' if self.promotion.get('mode') == 'max' else '<='} {self.promotion.get('minimum')})")
        lines = [f"retrain {self.retrain_id}" + (f" -> {self.work_uri}" if self.work_uri else ""),
                 f"champion: {champ}",
                 f"new data: {self.new_videos} video(s) from {len(self.new_runs)} annotate run(s)"]
        for s in self.sources:
            if s.new_videos:
                lines.append(f"  {s.root}: {s.new_videos} video(s) after {s.watermark_from or 'the beginning'} "
                             f"up to {s.watermark_to}; runs {', '.join(s.new_runs[:8])}"
                             + (" ..." if len(s.new_runs) > 8 else ""))
        d = self.data
        if d:
            dropped = ", ".join(f"{k} {v}" for k, v in sorted(d.get("dropped", {}).items()) if v) or "none"
            lines.append(f"pseudo-labels ({d.get('window')} window): {d.get('faces_read')} faces read, "
                         f"{d.get('faces_kept')} kept (dropped: {dropped})")
            splits = ", ".join(f"{k} {v['rows']} rows/{v['groups']} groups" for k, v in d.get("splits", {}).items())
            lines.append(f"  splits: {splits or '-'}; training rows {d.get('train_rows')} "
                         f"(train + val), {d.get('leak_dropped', 0)} dropped as holdout overlap")
        h = self.holdout
        if h:
            lines.append(f"holdout: {h.get('source')} ({h.get('faces')} faces)")
        t = self.train
        if t:
            init = t.get("init_from") or "the config's architecture (random init where it has no source)"
            lines.append(f"train: {t.get('config')} {' '.join(t.get('overrides', []))}".rstrip())
            lines.append(f"  from {init}; registered as {self.model_name}@{self.promotion.get('candidate_alias')}")
        p = self.promotion
        if p:
            against = f"v{self.champion_version}" if self.champion_version else "no champion"
            lines.append(f"evaluate: candidate and {against} on the holdout; promote to @{p.get('alias')} when "
                         f"{p.get('metric')} is better by >= {p.get('margin')} ({p.get('mode')}) and reaches "
                         f"{p.get('minimum')}")
        if self.done:
            lines.append(f"already done by an earlier attempt: {', '.join(self.done)}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the champion's watermark


def watermark_of(version: Any) -> dict[str, int]:
    """Per annotate output, the newest ``finished_at`` (ms) the version was trained up to."""
    if version is None:
        return {}
    text = (version.tags or {}).get(WATERMARK_TAG)
    if not text:
        log.warning("champion %s v%s has no %s tag: every annotated video counts as new", version.name,
                    version.version, WATERMARK_TAG)
        return {}
    return {k: _iso_to_ms(v) for k, v in json.loads(text).items()}


# ---------------------------------------------------------------------------------------------
# the decision


@dataclasses.dataclass
class Decision:
    promote: bool
    reasons: list[str]
    metric: str
    mode: str
    margin: float
    minimum: float
    candidate_value: float | None
    champion_value: float | None
    candidate_version: str | None
    champion_version: str | None
    delta: float | None
    counts: dict[str, Any] = dataclasses.field(default_factory=dict)
    decided_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def decide(candidate: Mapping[str, Any], champion: Mapping[str, Any] | None, p: PromotionConfig, *,
           holdout_faces: int, min_faces: int, candidate_version: str | None = None,
           champion_version: str | None = None) -> Decision:
    """Compare two holdout reports (``workflows.evaluation.metrics`` reports; ``champion`` None: no champion).

    Promote when the candidate's ``p.metric`` reaches ``p.minimum`` and, with a champion, beats
    it by at least ``p.margin`` (``mode`` max: higher is better; min: lower is better)."""
    from workflows.evaluation.metrics import flat_metrics

    sign = 1.0 if p.mode == "max" else -1.0
    cand = flat_metrics(candidate).get(p.metric)
    champ = flat_metrics(champion).get(p.metric) if champion is not None else None
    reasons: list[str] = []
    ok = True
    if holdout_faces < min_faces:
        ok = False
        reasons.append(f"holdout has {holdout_faces} faces, fewer than holdout.min_faces={min_faces}")
    if cand is None:
        ok = False
        reasons.append(f"the candidate's report has no {p.metric} (labels for it missing on the holdout?)")
    else:
        if sign * (cand - p.minimum) >= 0:
            reasons.append(f"{p.metric} {cand:.4f} reaches the minimum {p.minimum}")
        else:
            ok = False
            reasons.append(f"{p.metric} {cand:.4f} does not reach the minimum {p.minimum}")
    delta = None
    if champion is None:
        reasons.append("no champion yet: the minimum decides")
    elif champ is None:
        ok = False
        reasons.append(f"the champion's report has no {p.metric}: not comparable, champion kept")
    elif cand is not None:
        delta = cand - champ
        better = sign * delta
        verdict = ">=" if better >= p.margin - 1e-12 else "<"
        reasons.append(f"{p.metric} {cand:.4f} vs champion v{champion_version} {champ:.4f}: "
                       f"{'improvement' if p.mode == 'max' else 'reduction'} {better:+.4f} {verdict} margin "
                       f"{p.margin}")
        if verdict == "<":
            ok = False
    for role, report in (("candidate", candidate), ("champion", champion)):
        if report is not None and report.get("self_graded"):
            warning = (f"WARNING: the holdout's labels are pseudo-labels of the {role} itself, so its score "
                       "grades it against its own output; set holdout.uri to a labeled holdout")
            reasons.append(warning)
            log.warning(warning)
    return Decision(promote=ok, reasons=reasons, metric=p.metric, mode=p.mode, margin=p.margin,
                    minimum=p.minimum, candidate_value=cand, champion_value=champ,
                    candidate_version=candidate_version, champion_version=champion_version, delta=delta,
                    decided_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))


# ---------------------------------------------------------------------------------------------
# the cycle


class RetrainInterrupted(faults.InjectedFailure):
    """Raised by ``testing.fail_after``: a simulated crash between two persisted steps."""


@dataclasses.dataclass
class RetrainResult:
    status: Literal["no_new_data", "not_enough_data", "dry_run", "promoted", "not_promoted", "superseded"]
    message: str
    plan: RetrainPlan | None = None
    decision: Decision | None = None
    candidate_version: str | None = None
    mlflow_run_id: str | None = None
    reused: list[str] = dataclasses.field(default_factory=list)

    @property
    def retrain_id(self) -> str | None:
        return self.plan.retrain_id if self.plan else None

    def render(self) -> str:
        lines = []
        if self.plan is not None and self.status in ("dry_run", "not_enough_data"):
            lines.append(self.plan.render())
        lines.append(self.message)
        if self.decision is not None:
            lines += [f"  - {r}" for r in self.decision.reasons]
        if self.reused:
            lines.append(f"reused from an earlier attempt: {', '.join(self.reused)}")
        if self.mlflow_run_id:
            lines.append(f"mlflow run: {self.mlflow_run_id}")
        return "\n".join(lines)


@dataclasses.dataclass
class _Selected:
    """Instruction tables built for a cycle (before anything is written)."""

    train: Any  # instruction rows of the train/val splits
    holdout: Any | None  # pseudo-label holdout rows (None with a labeled holdout.uri)
    data_report: dict[str, Any]
    holdout_report: dict[str, Any]


class _Cycle:
    """One retraining cycle; each method is one step that reuses what an earlier attempt persisted."""

    def __init__(self, cfg: RetrainConfig, extra_sources: Sequence[str], dry_run: bool,
                 ray_address: str | None):
        from workflows.training.recipe import default_environment

        default_environment()
        self.cfg = cfg
        self.dry_run = dry_run
        self.ray_address = ray_address
        self.tracking = resolve_tracking_uri(cfg.mlflow.tracking_uri)
        self.sources = list(dict.fromkeys([*cfg.data.sources, *extra_sources]))
        self.reused: list[str] = []
        self.registry: Registry | None = None  # once the store is opened
        self.run: Tracker | None = None  # the cycle's run, one shared by every attempt
        self.work = ""  # WORK/<retrain id>, set once the id is known

    # -- plan -------------------------------------------------------------------------------
    def open_registry(self) -> None:
        if self.registry is None:
            self.registry = Registry(self.tracking)

    def champion(self) -> Any | None:
        if not store_exists(self.tracking):
            return None  # opening a sqlite store creates it: not before there is something to record
        self.open_registry()
        return self.registry.aliased_version(self.cfg.model_name, self.cfg.promotion.alias)

    def scan(self, champion: Any | None) -> tuple[list[SourcePlan], dict[str, Any], dict[str, dict[str, int]]]:
        """Committed videos per output; the rows of the training window; the new watermark."""
        from workflows.core.config import ConfigError

        if not self.sources:
            raise ConfigError(["data.sources: no annotate outputs; list them in the config or pass --data URI"])
        roots: list[str] = []
        for s in self.sources:
            roots += [r for r in discover_outputs(s) if r not in roots]
        old = watermark_of(champion)
        plans, videos, new_wm = [], {}, {}
        for root in roots:
            rows = AnnotationOutput(root).committed_videos()
            videos[root] = rows
            frm = old.get(root)
            new = rows[rows["finished_ms"] > frm] if frm is not None else rows
            top = int(rows["finished_ms"].max()) if len(rows) else None
            if top is not None or frm is not None:
                new_wm[root] = max(t for t in (top, frm) if t is not None)
            plans.append(SourcePlan(root, _ms_to_iso(frm) if frm is not None else None,
                                    _ms_to_iso(new_wm[root]) if root in new_wm else None, len(new),
                                    sorted(new["run_id"].dropna().unique().tolist())))
        for root, ms in old.items():  # outputs no longer listed keep their watermark
            new_wm.setdefault(root, ms)
        return plans, videos, {"old": old, "new": new_wm}

    def identity(self, champion: Any | None, marks: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        from workflows.core.config import to_dict

        c = to_dict(self.cfg)
        ident = {"model_name": self.cfg.model_name, "base_version": str(champion.version) if champion else None,
                 "from": {k: v for k, v in sorted(marks["old"].items())},
                 "to": {k: v for k, v in sorted(marks["new"].items())},
                 "data": {k: v for k, v in c["data"].items() if k != "sources"},
                 "holdout": c["holdout"], "promotion": c["promotion"],
                 "evaluate": {k: c["evaluate"][k] for k in ("au_threshold",)},
                 "train": {"config": _train_config_data(self.cfg),
                           "init_from_champion": self.cfg.train.init_from_champion}}
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:10]
        newest = max(marks["new"].values())
        stamp = dt.datetime.fromtimestamp(newest / 1000, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        return f"rt-{stamp}-{digest}", ident

    def select(self, videos: Mapping[str, Any], marks: Mapping[str, Any], train_cfg: Any) -> _Selected:
        """Read, filter and split the pseudo-labels of the window (and the pseudo-label holdout)."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.compute as pc

        from workflows.training.instructions import assign_splits, instructions_from_annotations, split_counts

        d, h = self.cfg.data, self.cfg.holdout
        window = []
        for root, rows in videos.items():
            frm = marks["old"].get(root)
            chosen = rows[rows["finished_ms"] > frm] if (d.window == "new" and frm is not None) else rows
            window.append(AnnotationOutput(root).faces_of(chosen))
        faces = pd.concat([f for f in window if len(f)], ignore_index=True) if any(len(f) for f in window) \
            else pd.DataFrame()
        built = instructions_from_annotations(",".join(videos), flt=d.filter, tasks=d.tasks, faces=faces)
        table = assign_splits(built.table, d.splits)
        trained = [train_cfg.data.train_split, train_cfg.data.val_split]
        split_col = table.column("split")
        rows = table.filter(pc.is_in(split_col, value_set=pa.array(trained, pa.string())))
        report: dict[str, Any] = {"window": d.window, "faces_read": len(faces),
                                  "faces_kept": built.report.get("n_kept_faces", 0),
                                  "dropped": built.report.get("dropped", {}), "tasks": built.report.get("tasks", {}),
                                  "splits": split_counts(table) if table.num_rows else {}}
        holdout_rows = None
        if h.uri is None:
            flt = h.filter or d.filter
            keep = _holdout_video_filter(flt, d.splits, h.split)
            parts = [AnnotationOutput(root).faces_of(rows_, keep) for root, rows_ in videos.items()]
            hfaces = pd.concat([f for f in parts if len(f)], ignore_index=True) if any(len(f) for f in parts) \
                else pd.DataFrame()
            hbuilt = instructions_from_annotations(",".join(videos), flt=flt,
                                                   tasks=("fe_category", "au_detection"), faces=hfaces)
            htable = assign_splits(hbuilt.table, d.splits)
            holdout_rows = htable.filter(pc.equal(htable.column("split"), h.split))
            n_faces = _n_faces(holdout_rows)
            holdout_report = {"source": f"pseudo-labels, split {h.split!r} of every source",
                              "faces": min(n_faces, h.max_faces) if h.max_faces else n_faces,
                              "rows": holdout_rows.num_rows}
            overlap = set(holdout_rows.column("group_id").to_pylist()) & set(rows.column("group_id").to_pylist())
            if overlap:  # impossible by construction (hash of the group); a bug must not leak silently
                raise RuntimeError(f"holdout and training share groups {sorted(overlap)[:5]}")
            ids = {m for m in holdout_rows.column("model_id").to_pylist() if m}
            holdout_report["label_models"] = sorted(ids)
            report["leak_dropped"] = 0
        else:
            rows, dropped, holdout_report = self._drop_labeled_holdout_overlap(rows)
            report["leak_dropped"] = dropped
        report["train_rows"] = rows.num_rows
        by_split = Counter(rows.column("split").to_pylist())
        report["rows_by_split"] = {s: by_split.get(s, 0) for s in trained}
        return _Selected(rows, holdout_rows, report, holdout_report)

    def _drop_labeled_holdout_overlap(self, rows: Any) -> tuple[Any, int, dict[str, Any]]:
        """A labeled holdout's videos / images are never trained on, even if they were annotated."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from workflows.training.data import faces_from_instructions, load_instructions
        from workflows.training.instructions import assign_splits

        h = self.cfg.holdout
        table, _ = load_instructions(h.uri, h.format, tasks=("fe_category", "au_detection"),
                                     flt=PseudoLabelFilter.all_faces())
        if h.uri_split is not None:  # the rows `mien evaluate --split` scores
            if table.num_rows and table.column("split").null_count == table.num_rows:
                table = assign_splits(table, self.cfg.data.splits)
            table = table.filter(pc.equal(table.column("split"), h.uri_split))
        videos = {v for v in table.column("video_id").to_pylist() if v}
        images = {u for u in table.column("image_uri").to_pylist() if u}
        overlap = pc.or_(pc.fill_null(pc.is_in(rows.column("video_id"), value_set=pa.array(sorted(videos),
                                                                                           pa.string())), False),
                         pc.fill_null(pc.is_in(rows.column("image_uri"), value_set=pa.array(sorted(images),
                                                                                            pa.string())), False))
        dropped = int(pc.sum(overlap.cast("int64")).as_py() or 0)
        n_faces = faces_from_instructions(table).num_rows if table.num_rows else 0
        if h.max_faces:
            n_faces = min(n_faces, h.max_faces)
        where = h.uri + (f" (split {h.uri_split})" if h.uri_split else "")
        return rows.filter(pc.invert(overlap)), dropped, {"source": where, "faces": n_faces,
                                                          "rows": table.num_rows}

    # -- persisted steps ---------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return storage.join(self.work, *parts)

    def read_json(self, *parts: str) -> Any | None:
        uri = self.path(*parts)
        return json.loads(storage.read_text(uri)) if storage.exists(uri) else None

    def write_json(self, obj: Any, *parts: str) -> None:
        storage.write_text(self.path(*parts), json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def checkpoint(self, step: str) -> None:
        faults.fail_at("testing.fail_after", self.cfg.testing.fail_after, step,
                       f"simulated crash after the {step} step", RetrainInterrupted)

    def open_run(self, plan: RetrainPlan) -> Tracker:
        """The cycle's MLflow run: the one an earlier attempt of this cycle opened, else a new one
        with the config as params."""
        from workflows.core.config import to_dict

        m = self.cfg.mlflow
        run = Tracker.find(self.tracking, m.experiment, {RETRAIN_ID_TAG: str(plan.retrain_id)}, m.artifact_location)
        if run is not None:
            return run
        run = Tracker.start(self.tracking, m.experiment, run_name=f"retrain-{plan.retrain_id}", tags={
            "mien.job": "retrain", RETRAIN_ID_TAG: plan.retrain_id, "mien.model_name": self.cfg.model_name,
            "mien.work_uri": plan.work_uri, "mien.base_version": plan.champion_version},
            artifact_location=m.artifact_location)
        # testing.* differs between the attempts that share this run
        run.log_params({**config_params(to_dict(self.cfg), drop=("testing.",)),
                        "data.sources": ",".join(self.sources)})
        run.log_dict(plan.to_dict(), "retrain/plan.json")
        return run

    def write_data(self, selected: _Selected) -> None:
        from workflows.training.instructions import write_instructions

        for name, table in (("data", selected.train), ("holdout", selected.holdout)):
            if table is None:
                continue
            if self.read_json(name, "_SUCCESS.json") is not None:
                self.reused.append(name)
                continue
            storage.remove(self.path(name))  # leftovers of an interrupted write
            write_instructions(table, self.path(name))
            self.write_json({"rows": table.num_rows}, name, "_SUCCESS.json")

    def train_candidate(self, plan: RetrainPlan) -> dict[str, Any]:
        """Train (or find the finished training of an earlier attempt) and register the candidate."""
        from workflows.training.ray_train import train
        from workflows.training.staging import run_uri_of

        done = self.read_json("train.json")
        if done is not None:
            self.reused.append("train")
            return done
        train_cfg = self.train_config(plan)
        output = self.path("model")
        _, run_uri = run_uri_of(train_cfg, output)
        finished = (storage.exists(storage.join(run_uri, "mien", "result.json"))
                    and storage.exists(storage.join(output, "mien_model.json")))
        if finished:  # trained, but the attempt died before train.json: never fit (or register) again
            self.reused.append("train")
            record = json.loads(storage.read_text(storage.join(run_uri, "mien", "run.json")))
            outcome = json.loads(storage.read_text(storage.join(run_uri, "mien", "result.json")))
            info = {"model_id": outcome.get("model_id"), "steps": outcome.get("steps"),
                    "loss": outcome.get("loss"), "val_loss": outcome.get("val_loss"),
                    "train_run_id": record.get("mlflow_run_id"), "version": None}
        else:
            result = train(train_cfg, self.path("data"), output)
            info = {"model_id": result.model_id, "steps": result.steps, "loss": result.loss,
                    "val_loss": result.val_loss, "train_run_id": result.mlflow_run_id,
                    "version": result.model_version}
        info["output"] = output
        info["version"] = self.register(info)
        self.write_json(info, "train.json")
        return info

    def train_config(self, plan: RetrainPlan) -> Any:
        c, p = self.cfg, self.cfg.promotion
        runtime: dict[str, Any] = {
            "data": {"format": "instructions"},
            "checkpoint": {"storage_path": self.work, "name": "train"},
            # the configured value, not the resolved one: train resolves it the same way (the
            # environment wins) and logs its config as params, where a database password must not go
            "mlflow": {"enabled": True, "tracking_uri": c.mlflow.tracking_uri, "registered_model": c.model_name,
                       "alias": p.candidate_alias},
            "evaluate": {"enabled": False},  # scored below on the cycle's fixed holdout
        }
        if self.ray_address:
            runtime["ray"] = {"address": self.ray_address}
        if plan.train.get("init_from"):
            runtime.update(model=None, init_from=plan.train["init_from"])
        return load_candidate_train_config(c, runtime)

    def register(self, info: dict[str, Any]) -> str:
        """The candidate's version: the one `mien train` registered from its run, else registered here."""
        from model.model_dir import materialize

        name = self.cfg.model_name
        for run_id in (info.get("train_run_id"), self.run.run_id):
            versions = self.registry.run_versions(name, run_id) if run_id else []
            if versions:
                return versions[-1]
        log.warning("training did not register the candidate; registering %s from run %s", info["output"],
                    self.run.run_id)
        logged = self.run.log_model_dir(materialize(info["output"]), artifact_path="candidate",
                                        registered_model_name=name, alias=self.cfg.promotion.candidate_alias)
        return str(logged.version)

    def tag_candidate(self, plan: RetrainPlan, version: str, info: Mapping[str, Any]) -> None:
        tags = {RETRAIN_ID_TAG: plan.retrain_id, WATERMARK_TAG: json.dumps(plan.watermark, sort_keys=True),
                "mien.data_runs": ",".join(plan.new_runs)[:5000], "mien.data_videos": str(plan.new_videos),
                "mien.data_train_rows": str(plan.data.get("train_rows")),
                "mien.retrain.base_version": str(plan.champion_version), "mien.retrain.run_id": self.run.run_id,
                "mien.model_id": str(info.get("model_id"))}
        self.registry.tag_version(self.cfg.model_name, version, tags)

    def evaluate(self, role: str, model_uri: str, holdout_uri: str, train_cfg: Any) -> dict[str, Any]:
        """The holdout report of one model (reused when an earlier attempt wrote it)."""
        report = self.read_json("eval", f"{role}.json")
        if report is not None:
            self.reused.append(f"evaluate:{role}")
            return report
        ecfg = _evaluate_config(self.cfg, train_cfg, pseudo=self.cfg.holdout.uri is None, tracking=self.tracking)
        output = self.path("eval", f"{role}.json")
        e = self.cfg.evaluate
        log.info("evaluating the %s %s on %s", role, model_uri, holdout_uri)
        if e.ray_task:
            import ray

            from workflows.core.cluster import init_ray

            init_ray(self.ray_address or train_cfg.ray.address, train_cfg.ray.num_cpus)
            task = ray.remote(_evaluate_model).options(num_cpus=e.num_cpus, num_gpus=e.num_gpus)
            return ray.get(task.remote(model_uri, holdout_uri, ecfg, output))
        return _evaluate_model(model_uri, holdout_uri, ecfg, output)

    def record(self, decision: Decision, reports: Mapping[str, Mapping[str, Any] | None]) -> None:
        """Decision, reasons and metrics as tags on the candidate version and on the retrain run."""
        from workflows.evaluation.metrics import flat_metrics

        verdict = "promote" if decision.promote else "keep_champion"
        tags = {"mien.retrain.decision": verdict, "mien.retrain.reasons": "\n".join(decision.reasons)[:5000],
                "mien.retrain.metric": decision.metric, "mien.retrain.margin": str(decision.margin),
                "mien.retrain.minimum": str(decision.minimum),
                "mien.retrain.candidate_value": _fmt(decision.candidate_value),
                "mien.retrain.champion_value": _fmt(decision.champion_value),
                "mien.retrain.champion_version": str(decision.champion_version),
                "mien.retrain.delta": _fmt(decision.delta)}
        holdout = {f"holdout.{k}": f"{v:.6g}" for k, v in flat_metrics(reports.get("candidate") or {}).items()
                   if k.count("/") == 1}
        self.registry.tag_version(self.cfg.model_name, decision.candidate_version, {**tags, **holdout})
        metrics = {f"{role}/{k}": v for role, rep in reports.items() if rep for k, v in flat_metrics(rep).items()}
        metrics["decision/promote"] = float(decision.promote)
        if decision.delta is not None:
            metrics["decision/delta"] = decision.delta
        metrics.update({f"data/{k}": v for k, v in decision.counts.items()})
        self.run.log_metrics(metrics)
        self.run.set_tags({**tags, "mien.candidate_version": decision.candidate_version})
        self.run.log_dict(decision.to_dict(), "retrain/decision.json")
        for role, rep in reports.items():
            if rep:
                self.run.log_dict(rep, f"retrain/eval_{role}.json")

    def move_alias(self, decision: Decision) -> tuple[str, str | None]:
        """Compare and set: move the alias only from the champion the decision was made against.
        Returns the status and the version the alias pointed at when compared (None: unset)."""
        name, alias = self.cfg.model_name, self.cfg.promotion.alias
        current = self.registry.aliased_version(name, alias)
        now = str(current.version) if current is not None else None
        if not decision.promote:
            return "not_promoted", now
        if now == decision.candidate_version:
            return "promoted", now  # an earlier attempt already moved it
        if now != decision.champion_version:
            log.warning("%s@%s is %s now, not %s as the decision compared against: not moving it", name, alias,
                        f"v{now}" if now else "unset",
                        f"v{decision.champion_version}" if decision.champion_version else "unset")
            self.registry.tag_version(name, decision.candidate_version,
                                      {"mien.retrain.superseded_by": now or "alias removed"})
            return "superseded", now
        self.registry.set_alias(name, alias, decision.candidate_version)
        at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.registry.tag_version(name, decision.candidate_version, {"mien.retrain.promoted_at": at})
        if now is not None:  # the replaced champion says by what and when, for whoever looks at it later
            self.registry.tag_version(name, now, {"mien.retrain.replaced_by": decision.candidate_version,
                                                  "mien.retrain.replaced_at": at})
        log.info("%s@%s -> v%s (was v%s)", name, alias, decision.candidate_version, now)
        return "promoted", now


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


def _n_faces(table: Any) -> int:
    from workflows.training.data import face_id_of

    return len({face_id_of(i) for i in table.column("id").to_pylist()}) if table.num_rows else 0


def _holdout_video_filter(flt: PseudoLabelFilter, splits: Mapping[str, float],
                          split: str | None) -> Callable[[str], bool] | None:
    """With video groups, only the videos that hash into the holdout are read at all."""
    if flt.group_by != "video" or split is None:
        return None
    from workflows.training.instructions import split_of

    return lambda video_id: split_of(str(video_id), splits) == split


def _evaluate_config(cfg: RetrainConfig, train_cfg: Any, pseudo: bool, tracking: str) -> Any:
    """Holdout scoring: nothing logged (the cycle records the reports), but a ``models:/`` champion
    resolves through the cycle's registry."""
    from workflows.evaluation.evaluate import EvaluateConfig

    h, e = cfg.holdout, cfg.evaluate
    return EvaluateConfig(format="instructions" if pseudo else h.format, split=None if pseudo else h.uri_split,
                          splits=dict(cfg.data.splits), crop_size=train_cfg.data.crop_size,
                          batch_size=e.batch_size, max_faces=h.max_faces, seed=0, device=e.device,
                          au_threshold=e.au_threshold, mlflow=MlflowConfig(enabled=False, tracking_uri=tracking))


def _evaluate_model(model_uri: str, holdout_uri: str, ecfg: Any, output: str) -> dict[str, Any]:
    """Score one model on the holdout (in this process or a Ray task) and write its report."""
    from workflows.evaluation.evaluate import evaluate

    return evaluate(model_uri, holdout_uri, ecfg, output=output).report


def retrain(cfg: RetrainConfig, extra_sources: Sequence[str] = (), *, dry_run: bool = False,
            ray_address: str | None = None) -> RetrainResult:
    """Run one retraining cycle (see the module doc); ``dry_run`` only plans and changes nothing.

    Raises ConfigError for configuration problems, FileNotFoundError for a missing source or
    holdout, :class:`workflows.training.ray_train.TrainingError` when training fails (rerun to resume)."""
    cyc = _Cycle(cfg, extra_sources, dry_run, ray_address)
    champion = cyc.champion()
    sources, videos, marks = cyc.scan(champion)
    plan = RetrainPlan(cfg.model_name, None, None, str(champion.version) if champion else None, None, sources,
                       {k: _ms_to_iso(v) for k, v in sorted(marks["new"].items())})
    if plan.new_videos == 0:
        since = ", ".join(f"{s.root} after {s.watermark_from}" for s in sources) or "-"
        return RetrainResult("no_new_data", f"no new data since the champion's watermark ({since}); nothing to do",
                             plan=plan)
    plan.retrain_id, _ = cyc.identity(champion, marks)
    cyc.work = storage.join(cfg.work_dir, plan.retrain_id)
    plan.work_uri = cyc.work if storage.is_remote(cyc.work) else os.path.abspath(cyc.work)
    cyc.work = plan.work_uri
    if champion is not None:
        plan.champion_uri = cyc.registry.model_source(cfg.model_name, str(champion.version))
    p = cfg.promotion
    plan.promotion = {"metric": p.metric, "mode": p.mode, "margin": p.margin, "minimum": p.minimum,
                      "alias": p.alias, "candidate_alias": p.candidate_alias}
    plan.train = {"config": cfg.train.config, "overrides": list(cfg.train.overrides),
                  "init_from": plan.champion_uri if (cfg.train.init_from_champion and plan.champion_uri) else None}
    plan.done = [s for s, f in (("data", "data/_SUCCESS.json"), ("train", "train.json"),
                                ("evaluate:candidate", "eval/candidate.json"),
                                ("evaluate:champion", "eval/champion.json"), ("decision", "decision.json"))
                 if storage.exists(storage.join(cyc.work, f))]

    recorded = cyc.read_json("decision.json")
    if recorded is not None:  # decided by an earlier attempt: only the alias move may be left
        decision = Decision(**recorded)
        if dry_run:
            return RetrainResult("dry_run", f"dry run: cycle {plan.retrain_id} was decided already "
                                 f"({'promote' if decision.promote else 'keep the champion'})", plan=plan,
                                 decision=decision)
        cyc.open_registry()
        status, alias_at = cyc.move_alias(decision)
        return _finished(cyc, plan, decision, status, alias_at, reused=["decision"])

    train_cfg = cyc.train_config(plan)
    stored = cyc.read_json("plan.json")
    written = [cyc.path("data", "_SUCCESS.json")] + ([] if cfg.holdout.uri else [cyc.path("holdout", "_SUCCESS.json")])
    selected = None
    if stored is not None and all(storage.exists(u) for u in written):  # no need to read the faces again
        plan.data, plan.holdout = stored["data"], stored["holdout"]
        plan.warnings = stored.get("warnings", [])
    else:
        selected = cyc.select(videos, marks, train_cfg)
        plan.data, plan.holdout = selected.data_report, selected.holdout_report
        _warn_about_holdout(plan, champion)
    short = _shortage(cfg, plan)
    if short:
        return RetrainResult("not_enough_data", short, plan=plan)
    if dry_run:
        return RetrainResult("dry_run", "dry run: nothing was written, trained or promoted", plan=plan)

    # ---- from here on, every step persists its result before the next one starts ----
    cyc.open_registry()
    if selected is not None:
        cyc.write_json(plan.to_dict(), "plan.json")
    cyc.run = cyc.open_run(plan)
    try:
        decision = _execute(cyc, plan, selected, champion, train_cfg)
    except RetrainInterrupted:
        raise  # a simulated crash leaves everything as a real one would
    except BaseException:
        try:
            cyc.run.end("FAILED")  # the next attempt reopens it
        except Exception as e:  # noqa: BLE001 - the original error matters more
            log.warning("could not mark MLflow run %s failed: %s", cyc.run.run_id, e)
        raise
    status, alias_at = cyc.move_alias(decision)
    return _finished(cyc, plan, decision, status, alias_at)


def _execute(cyc: _Cycle, plan: RetrainPlan, selected: _Selected | None, champion: Any | None,
             train_cfg: Any) -> Decision:
    """Data → train → register → evaluate → decide and record; everything but the alias move."""
    cfg = cyc.cfg
    if selected is not None:
        cyc.write_data(selected)
    else:
        cyc.reused += ["data"] + (["holdout"] if cfg.holdout.uri is None else [])
    cyc.checkpoint("data")

    info = cyc.train_candidate(plan)
    cyc.checkpoint("train")
    version = info["version"]
    cyc.tag_candidate(plan, version, info)
    cyc.checkpoint("register")

    holdout_uri = cfg.holdout.uri or cyc.path("holdout")
    reports: dict[str, dict[str, Any] | None] = {
        "candidate": cyc.evaluate("candidate", info["output"], holdout_uri, train_cfg), "champion": None}
    if champion is not None:
        reports["champion"] = cyc.evaluate("champion", plan.champion_uri, holdout_uri, train_cfg)
    cyc.checkpoint("evaluate")

    n_faces = int(reports["candidate"].get("n_faces") or 0)
    decision = decide(reports["candidate"], reports["champion"], cfg.promotion, holdout_faces=n_faces,
                      min_faces=cfg.holdout.min_faces, candidate_version=version,
                      champion_version=plan.champion_version)
    decision.counts = {"new_runs": len(plan.new_runs), "new_videos": plan.new_videos,
                       "faces_read": plan.data.get("faces_read"), "faces_kept": plan.data.get("faces_kept"),
                       "train_rows": plan.data.get("train_rows"), "holdout_faces": n_faces,
                       "train_steps": info.get("steps")}
    # Recorded (MLflow and decision.json) and the run closed BEFORE the alias moves: a crash after
    # this point leaves only the compare-and-set move, which the next attempt does.
    cyc.record(decision, reports)
    cyc.write_json(decision.to_dict(), "decision.json")
    cyc.run.end("FINISHED")
    cyc.checkpoint("decide")
    return decision


def _finished(cyc: _Cycle, plan: RetrainPlan, decision: Decision, status: str, alias_at: str | None,
              reused: Sequence[str] = ()) -> RetrainResult:
    """The cycle's result; ``alias_at``: the version the alias pointed at when the move was tried."""
    name, alias = cyc.cfg.model_name, cyc.cfg.promotion.alias
    v = decision.candidate_version
    target = (f"replaced v{decision.champion_version} at @{alias}" if decision.champion_version
              else f"become the first @{alias}")
    moved = (f"moved to v{alias_at} since the decision: left at v{alias_at} (the next retrain starts from it)"
             if alias_at else "was removed since the decision: left unset")
    messages = {
        "promoted": f"promoted {name} v{v} to @{alias}" + (f" (was v{decision.champion_version})"
                                                           if decision.champion_version else " (first champion)"),
        "not_promoted": f"kept {name}@{alias}" + (f" v{decision.champion_version}" if decision.champion_version
                                                 else " (none)") + f"; candidate v{v} not promoted",
        "superseded": f"candidate v{v} would have {target}, but @{alias} {moved}",
    }
    run_id = cyc.run.run_id if cyc.run is not None else None
    if run_id is None and cyc.registry is not None:
        version = cyc.registry.version(name, v)
        run_id = version.tags.get("mien.retrain.run_id") if version is not None else None
    already = " (decided by an earlier attempt)" if "decision" in reused else ""
    return RetrainResult(status, f"cycle {plan.retrain_id}: {messages[status]}{already}",  # type: ignore[arg-type]
                         plan=plan, decision=decision, candidate_version=v, mlflow_run_id=run_id,
                         reused=[*reused, *cyc.reused])


def _shortage(cfg: RetrainConfig, plan: RetrainPlan) -> str | None:
    rows, faces = plan.data.get("train_rows", 0), plan.holdout.get("faces", 0)
    if rows < cfg.data.min_train_rows:
        return (f"not enough new pseudo-labels: {rows} training rows after filtering, data.min_train_rows is "
                f"{cfg.data.min_train_rows}; nothing trained (waits for more data)")
    if faces < cfg.holdout.min_faces:
        return (f"holdout too small: {faces} faces, holdout.min_faces is {cfg.holdout.min_faces}; nothing trained. "
                + _holdout_fix(cfg, plan))
    return None


def _holdout_fix(cfg: RetrainConfig, plan: RetrainPlan) -> str:
    """Why the holdout is small and what makes it larger. The pseudo-label holdout is never split
    differently on its own (e.g. by track for a small corpus): a group's split is fixed for good, so
    a video trained on once must never turn up in a later cycle's holdout."""
    h = cfg.holdout
    if h.uri is not None:
        return f"Fix: give a larger labeled set as holdout.uri (now {h.uri}), or lower holdout.min_faces"
    by = (h.filter or cfg.data.filter).group_by
    unit = "videos" if by == "video" else "face tracks"
    groups = sum(int(s.get("groups", 0)) for s in plan.data.get("splits", {}).values())
    share = cfg.data.splits.get(h.split, 0.0)
    fixes = ["set holdout.uri to a labeled set (a fairer judge, too)", "annotate more videos"]
    if by == "video":
        key = "data.filter.group_by" + ("" if h.filter is None else " and holdout.filter.group_by")
        fixes.append(f"split by face track with {key}=track (best before a first champion: it changes "
                     "which faces are held out, and one person's tracks can land on both sides)")
    fixes.append("or lower holdout.min_faces")
    return (f"The pseudo-label holdout is the {unit} whose id hashes into split {h.split!r} "
            f"(data.splits: {share:.0%} of them), and {groups} {unit} have faces that pass the filter. "
            f"Fix: {', '.join(fixes)}")


def _warn_about_holdout(plan: RetrainPlan, champion: Any | None) -> None:
    from model.model_dir import base_model_id  # a labeling run with descriptions on is still the champion

    labelers = plan.holdout.get("label_models") or []
    champ_id = (champion.tags or {}).get("mien.model_id") if champion is not None else None
    if champ_id and base_model_id(champ_id) in {base_model_id(m) for m in labelers}:
        plan.warnings.append(f"the pseudo-label holdout was labeled by the champion itself ({champ_id}); its "
                             "score is inflated. Set holdout.uri to a labeled set for a fair comparison")
