"""``mien evaluate``: score held-out faces with a model and report FE / AU metrics.

Data is anything :func:`workflows.training.data.load_instructions` reads (instruction Parquet, a
``mien annotate`` output, labeled records Parquet, or ``FORMAT:LABEL_FILE`` such as
``rafdb:/data/RAF-DB/EmoLabel/list_patition_label.txt``). Every face is scored once through the
model's ``annotate()`` API (the same call the annotate pipeline makes); the prediction is the
arg-max FE class with its probability as confidence, and every AU whose probability reaches
``au_threshold``. Metrics come from :mod:`workflows.evaluation.metrics`: FE accuracy, UAR, WAR, per-class
recall, confusion matrix, ECE; per-AU F1 and mean F1. The report is written as JSON with PNG
plots beside it and logged to MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Literal

import numpy as np

from model.taxonomy import AU_NAMES, FE_BASIC
from workflows.core import storage
from workflows.core.tracking import MlflowConfig, Tracker, resolve_tracking_uri, use_tracking_for
from workflows.training.instructions import DEFAULT_SPLITS, PseudoLabelFilter

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EvaluateConfig:
    format: Literal["auto", "instructions", "annotations", "records", "labeled"] = "auto"
    split: str | None = None  # only rows of this split; None = all rows
    # Data without a split column is split here as `mien train` splits it (same hash of group_id):
    # keep these equal to the training run's data.splits and `--split holdout` is its holdout.
    splits: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_SPLITS))
    filter: PseudoLabelFilter = dataclasses.field(default_factory=PseudoLabelFilter.all_faces)
    crop_size: int = 224
    batch_size: int = 32
    max_faces: int = 0  # 0 = all; otherwise a seeded sample
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    au_threshold: float = 0.5
    fe_classes: list[str] = dataclasses.field(default_factory=lambda: list(FE_BASIC))
    mlflow: MlflowConfig = dataclasses.field(default_factory=lambda: MlflowConfig(experiment="mien-evaluate"))

    def validate(self) -> list[str]:
        problems = []
        if not 16 <= self.crop_size <= 1024:
            problems.append(f"crop_size: must be in [16, 1024], got {self.crop_size}")
        if self.batch_size < 1:
            problems.append(f"batch_size: must be >= 1, got {self.batch_size}")
        if not 0 < self.au_threshold < 1:
            problems.append(f"au_threshold: must be in (0, 1), got {self.au_threshold}")
        unknown = [c for c in self.fe_classes if c not in FE_BASIC]
        if unknown or len(self.fe_classes) < 2:
            problems.append(f"fe_classes: need at least two of {list(FE_BASIC)}; unknown: {unknown}")
        return problems + self.mlflow.unused_settings("evaluate", ("registered_model", "alias"))


@dataclasses.dataclass
class EvaluationResult:
    report: dict[str, Any]
    model_id: str
    output: str | None
    files: dict[str, str]
    mlflow_run_id: str | None
    wall_s: float

    def render(self) -> str:
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"

        n = self.report.get("n_faces", 0)
        lines = [f"model {self.model_id}: {n} faces scored in {self.wall_s:.1f} s"]
        lines += [f"WARNING {w}" for w in self.report.get("warnings", [])]
        fe, au = self.report.get("fe"), self.report.get("au")
        if fe and fe.get("n"):
            lines.append(f"FE  accuracy {fmt(fe['accuracy'])}  UAR {fmt(fe['uar'])}  WAR {fmt(fe['war'])}  "
                         f"ECE {fmt(fe.get('ece'))}  (n={fe['n']})")
            lines.append("    recall: " + ", ".join(f"{c} {fmt(r)}" for c, r in fe["per_class_recall"].items()
                                                   if r is not None))
        if au and au.get("n"):
            lines.append(f"AU  mean F1 {fmt(au['mean_f1'])}  (n={au['n']})")
            f1 = ", ".join(f"{a} {fmt(f)}" for a, f in au["f1"].items() if f is not None)
            lines.append(f"    F1: {f1}")
        if self.output:
            lines.append(f"report: {self.output}")
        if self.mlflow_run_id:
            lines.append(f"mlflow run: {self.mlflow_run_id}")
        return "\n".join(lines)


def _needs_crops(annotator: Any) -> bool:
    cfg = annotator.config
    # pixels matter only where the MLLM scores (the calibrated prior reads features, not pixels)
    return bool(cfg.uses_llm_for_scores and cfg.reads_pixels)


def predict_faces(annotator: Any, faces: Any, *, crop_size: int = 224,
                  batch_size: int = 32) -> dict[str, np.ndarray]:
    """``annotate()`` over a face table (:data:`workflows.training.data.FACE_SCHEMA`) in batches.

    Returns ``fe_probs`` (N, 7) in FE_BASIC order and ``au_probs`` (N, 23) (NaN = not scored)."""
    from model.face_batch import build_face_batch
    from workflows.training.data import face_dict

    with_crop = _needs_crops(annotator)
    rows = faces.to_pylist()
    fe = np.zeros((len(rows), len(FE_BASIC)), np.float32)
    au = np.full((len(rows), len(AU_NAMES)), np.nan, np.float32)
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        out = annotator.annotate(build_face_batch([face_dict(r, crop_size, with_crop) for r in chunk]))
        fe[s:s + len(chunk)] = out["fe_probs"]
        au[s:s + len(chunk)] = out["au_probs"]
    return {"fe_probs": fe, "au_probs": au}


def report_from_predictions(faces: Any, fe_probs: np.ndarray, au_probs: np.ndarray, *,
                            fe_classes: list[str] | tuple[str, ...] = FE_BASIC,
                            au_threshold: float = 0.5) -> dict[str, Any]:
    """The :func:`workflows.evaluation.metrics.evaluation_report` of predictions against a face table's truth.

    FE prediction = arg-max over ``fe_classes`` of the (renormalised) probabilities, confidence =
    its probability; AU prediction = AUs whose probability is at least ``au_threshold``."""
    from workflows.evaluation.metrics import active_from_probs, evaluation_report

    cols = [FE_BASIC.index(c) for c in fe_classes]
    p = np.asarray(fe_probs, np.float64)[:, cols]
    p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
    fe_pred = [fe_classes[i] for i in p.argmax(axis=1)] if len(p) else []
    fe_conf = [float(v) for v in p.max(axis=1)] if len(p) else []
    au_pred = [active_from_probs({a: float(v) for a, v in zip(AU_NAMES, row, strict=True) if v == v},
                                 au_threshold) for row in np.asarray(au_probs)]
    fe_true = faces.column("fe_label").to_pylist()
    labeled = faces.column("au_labeled").to_pylist()
    active = faces.column("au_active").to_pylist()
    au_true = [list(a or []) if lab is not None else None for a, lab in zip(active, labeled, strict=True)]
    has_fe = any(t is not None for t in fe_true)
    has_au = any(t is not None for t in au_true)
    report = evaluation_report(
        fe_true=fe_true if has_fe else None, fe_pred=fe_pred if has_fe else None,
        fe_confidence=fe_conf if has_fe else None, fe_classes=list(fe_classes),
        au_true=au_true if has_au else None, au_pred=au_pred if has_au else None,
        au_labeled=labeled if has_au else None)
    report["n_faces"] = faces.num_rows
    report["au_threshold"] = au_threshold
    return report


def evaluate_faces(annotator: Any, faces: Any, *, crop_size: int = 224, batch_size: int = 32,
                   fe_classes: list[str] | tuple[str, ...] = FE_BASIC,
                   au_threshold: float = 0.5) -> dict[str, Any]:
    """Score ``faces`` with ``annotator`` and return the metrics report (JSON-able)."""
    preds = predict_faces(annotator, faces, crop_size=crop_size, batch_size=batch_size)
    report = report_from_predictions(faces, preds["fe_probs"], preds["au_probs"], fe_classes=fe_classes,
                                     au_threshold=au_threshold)
    report["model_id"] = annotator.model_id
    return report


def load_faces(data_uri: str, cfg: EvaluateConfig, with_crops: bool = True) -> tuple[Any, dict[str, Any]]:
    """Face table (:data:`workflows.training.data.FACE_SCHEMA`) of ``data_uri`` and a load report."""
    import pyarrow.compute as pc

    from workflows.training.data import embed_images, face_id_of, faces_from_instructions, load_instructions

    table, load_report = load_instructions(data_uri, cfg.format, tasks=("fe_category", "au_detection"),
                                           flt=cfg.filter)
    if cfg.split is not None:
        if table.num_rows and table.column("split").null_count == table.num_rows:
            from workflows.training.instructions import assign_splits

            table = assign_splits(table, cfg.splits)
        table = table.filter(pc.equal(table.column("split"), cfg.split))
    label_models: dict[str, int] = {}  # faces whose pseudo-labels each model made
    if table.num_rows and "model_id" in table.column_names:
        seen: set[str] = set()
        for rid, source, mid in zip(table.column("id").to_pylist(), table.column("source").to_pylist(),
                                    table.column("model_id").to_pylist(), strict=True):
            face = face_id_of(rid)
            if source == "pseudo" and mid and face not in seen:
                seen.add(face)
                label_models[mid] = label_models.get(mid, 0) + 1
    images: dict[str, int] = {}
    if with_crops and table.num_rows:
        table, images = embed_images(table)
    faces = faces_from_instructions(table)
    if cfg.max_faces and faces.num_rows > cfg.max_faces:
        idx = np.sort(np.random.default_rng(cfg.seed).permutation(faces.num_rows)[:cfg.max_faces])
        faces = faces.take(idx)
    dropped = 0
    if with_crops:
        keep = pc.invert(pc.is_null(faces.column("image")))
        dropped = faces.num_rows - int(pc.sum(keep.cast("int64")).as_py() or 0)
        faces = faces.filter(keep)
    return faces, {"load": load_report, "images": images, "faces": faces.num_rows, "dropped_no_crop": dropped,
                   "split": cfg.split, "label_models": label_models}


def self_graded_warning(model_id: str, data_report: dict[str, Any]) -> str | None:
    """The warning for labels made by the model under test (it would be graded against itself),
    or None when the labels are independent of it. Ids are compared without their description
    settings: a run of the model with descriptions on made the same scores."""
    from model.model_dir import base_model_id

    label_models = data_report.get("label_models") or {}
    own = sum(n for m, n in label_models.items() if base_model_id(m) == base_model_id(model_id))
    if not own:
        return None
    share = own / max(sum(label_models.values()), 1)
    return (f"NOT A RESULT: {share:.0%} of these labels are pseudo-labels made by {model_id} itself, so this "
            "grades the model against its own output. Evaluate on a labeled holdout (RAF-DB, AffectNet, DISFA, "
            "... via `mien evaluate --data LABELED_DIR`) or on pseudo-labels of another model")


def plots_dir_for(json_uri: str) -> str:
    """``out/eval.json`` → ``out/eval_plots`` (several reports can share a directory)."""
    stem = json_uri[:-5] if json_uri.endswith(".json") else json_uri
    return f"{stem}_plots"


def evaluate(model_uri: str, data_uri: str, cfg: EvaluateConfig | None = None,
             output: str | None = None) -> EvaluationResult:
    """Load ``model_uri``, score the faces of ``data_uri``, write ``output`` (JSON + plots), log to MLflow."""
    from model import load_model, resolve_device
    from workflows.evaluation.metrics import write_report

    cfg = cfg or EvaluateConfig()
    t0 = time.time()
    model_uri, data_uri = storage.absolute(model_uri), storage.absolute(data_uri)
    output = storage.absolute(output) if output else output
    use_tracking_for(model_uri, resolve_tracking_uri(cfg.mlflow.tracking_uri))
    annotator = load_model(model_uri, device=resolve_device(cfg.device))
    faces, data_report = load_faces(data_uri, cfg, with_crops=_needs_crops(annotator))
    if faces.num_rows == 0:
        raise ValueError(f"{data_uri}: no faces to evaluate ({json.dumps(data_report, default=str)[:2000]})")
    log.info("evaluating %s on %d faces of %s", annotator.model_id, faces.num_rows, data_uri)
    report = evaluate_faces(annotator, faces, crop_size=cfg.crop_size, batch_size=cfg.batch_size,
                            fe_classes=cfg.fe_classes, au_threshold=cfg.au_threshold)
    report["model_uri"] = model_uri
    report["data"] = {"uri": data_uri, **data_report}
    warning = self_graded_warning(annotator.model_id, data_report)
    report["self_graded"] = warning is not None
    if warning:
        report["warnings"] = [*report.get("warnings", []), warning]
        log.warning(warning)
    files: dict[str, str] = {}
    if output:
        files = write_report(report, output, plots_dir_for(output))
    wall = time.time() - t0
    run_id = _log_mlflow(cfg, report, model_uri, data_uri, annotator.model_id) if cfg.mlflow.enabled else None
    return EvaluationResult(report, annotator.model_id, output, files, run_id, wall)


def _log_mlflow(cfg: EvaluateConfig, report: dict[str, Any], model_uri: str, data_uri: str,
                model_id: str) -> str | None:
    """Metrics, params, the JSON report and its plots into a new run (or ``mlflow.run_id``)."""
    try:
        from workflows.evaluation.metrics import flat_metrics, report_plots

        m = cfg.mlflow
        tracking = resolve_tracking_uri(m.tracking_uri)
        prefix = "eval/" if m.run_id else ""
        if m.run_id:
            run = Tracker(tracking, m.run_id)
        else:
            run = Tracker.start(tracking, m.experiment, run_name=f"eval-{model_id}", tags={"mien.job": "evaluate"},
                                artifact_location=m.artifact_location)
            run.log_params({"model_uri": model_uri, "data_uri": data_uri, "split": cfg.split,
                            "au_threshold": cfg.au_threshold, "crop_size": cfg.crop_size,
                            "fe_classes": ",".join(cfg.fe_classes), "n_faces": report.get("n_faces")})
        run.log_metrics({f"{prefix}{k}": v for k, v in flat_metrics(report).items()})
        run.set_tags({"mien.model_id": model_id, "mien.eval_data": data_uri})
        run.log_dict(report, f"{prefix}report.json")
        run.log_files(report_plots(report), prefix.rstrip("/") or None)
        if not m.run_id:
            run.end("FINISHED")
        return run.run_id
    except Exception as e:  # noqa: BLE001 - the report is complete without tracking
        log.warning("MLflow logging failed (%s: %s)", type(e).__name__, e)
        return None

