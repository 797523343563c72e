"""Evaluation metrics for FE classification and AU detection, with plots and a JSON report.

Definitions (as in the DFEW / FERV39k and BP4D / DISFA literature):

- ``accuracy`` = correct / N over samples whose true label is one of ``classes``.
- ``per_class_recall[c]`` = correct predictions of c / samples whose true label is c. A
  prediction outside ``classes`` (unparseable, or a class the benchmark does not score) counts
  as wrong; samples whose *true* label is outside ``classes`` are excluded and counted.
- ``uar`` (unweighted average recall) = mean of per-class recalls over classes present in
  the ground truth; ``war`` (weighted average recall) = recalls weighted by class support,
  which equals accuracy.
- AU ``f1`` per AU = 2·TP / (2·TP + FP + FN) over samples where that AU is annotated
  (``au_labeled``); None when TP + FP + FN = 0 (nothing to score). ``mean_f1`` averages the
  defined ones.
- ``ece`` (expected calibration error, Guo et al. 2017) on the top-class confidence:
  15 equal-width bins (lo, hi] over [0, 1]; ECE = Σ_b |b|/N · |accuracy(b) − confidence(b)|.

Everything returned is JSON-able (plain ints, floats, None for undefined values).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from model.taxonomy import AU_NAMES, FE_BASIC
from workflows.core import storage

N_BINS = 15


def _float(value: float) -> float | None:
    """Plain float, or None for NaN / inf (JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _check_same_length(**arrays: Sequence[Any]) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs differ in length: {lengths}")
    return next(iter(lengths.values()), 0)


# ---------------------------------------------------------------------------------------------
# facial expression


def confusion_matrix(y_true: Sequence[str | None], y_pred: Sequence[str | None],
                     classes: Sequence[str] = FE_BASIC) -> np.ndarray:
    """K×K int64 counts, rows = true class, columns = predicted class, in ``classes`` order.

    Pairs whose true or predicted label is outside ``classes`` are not in the matrix.
    """
    _check_same_length(y_true=y_true, y_pred=y_pred)
    index = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        if t in index and p in index:
            cm[index[t], index[p]] += 1
    return cm


def fe_metrics(y_true: Sequence[str | None], y_pred: Sequence[str | None],
               classes: Sequence[str] = FE_BASIC) -> dict[str, Any]:
    """Accuracy, UAR, WAR, per-class recall, support and confusion matrix (see module doc).

    Returns ``{"n", "n_excluded", "n_invalid_pred", "accuracy", "war", "uar", "classes",
    "support", "per_class_recall", "confusion_matrix"}``; rates are None when undefined.
    """
    _check_same_length(y_true=y_true, y_pred=y_pred)
    known = set(classes)
    pairs = [(t, p) for t, p in zip(y_true, y_pred, strict=True) if t in known]
    n = len(pairs)
    cm = confusion_matrix([t for t, _ in pairs], [p for _, p in pairs], classes)
    support = {c: sum(1 for t, _ in pairs if t == c) for c in classes}
    correct = {c: int(cm[i, i]) for i, c in enumerate(classes)}
    recall = {c: (correct[c] / support[c] if support[c] else None) for c in classes}
    defined = [r for r in recall.values() if r is not None]
    accuracy = sum(correct.values()) / n if n else None
    war = sum(support[c] / n * recall[c] for c in classes if recall[c] is not None) if n else None
    return {
        "n": n,
        "n_excluded": len(y_true) - n,
        "n_invalid_pred": sum(1 for _, p in pairs if p not in known),
        "accuracy": accuracy,
        "war": war,
        "uar": sum(defined) / len(defined) if defined else None,
        "classes": list(classes),
        "support": support,
        "per_class_recall": recall,
        "confusion_matrix": cm.tolist(),
    }


# ---------------------------------------------------------------------------------------------
# calibration


def calibration(confidences: Sequence[float], correct: Sequence[bool],
                n_bins: int = N_BINS) -> dict[str, Any]:
    """ECE and per-bin statistics (reliability diagram data) of top-class confidences.

    Bins are (lo, hi] of width 1/``n_bins``; a confidence of exactly 0 falls in the first.
    Returns ``{"n", "n_bins", "ece", "bins": [{"lower", "upper", "count", "accuracy",
    "confidence"}]}``, accuracy/confidence None for empty bins and ece None when n = 0.
    """
    n = _check_same_length(confidences=confidences, correct=correct)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = np.asarray(confidences, dtype=np.float64)
    hit = np.asarray(correct, dtype=bool)
    if n and (np.isnan(conf).any() or conf.min() < 0.0 or conf.max() > 1.0):
        raise ValueError("confidences must be within [0, 1] and not NaN")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], conf, side="left")  # upper edge inclusive
    bins = []
    ece = 0.0
    for b in range(n_bins):
        mask = idx == b
        count = int(mask.sum())
        acc = float(hit[mask].mean()) if count else None
        avg = float(conf[mask].mean()) if count else None
        if count:
            ece += count / n * abs(acc - avg)  # type: ignore[operator]
        bins.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                     "accuracy": acc, "confidence": avg})
    return {"n": n, "n_bins": n_bins, "ece": ece if n else None, "bins": bins}


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool],
                               n_bins: int = N_BINS) -> float | None:
    """ECE over ``n_bins`` equal-width bins (None for no samples)."""
    return calibration(confidences, correct, n_bins)["ece"]


# ---------------------------------------------------------------------------------------------
# action units


def au_f1(au_true: Sequence[Iterable[str] | None], au_pred: Sequence[Iterable[str] | None],
          aus: Sequence[str] = AU_NAMES,
          au_labeled: Sequence[Iterable[str] | None] | None = None) -> dict[str, Any]:
    """Per-AU TP/FP/FN, precision, recall, F1 and their mean over AUs with a defined F1.

    ``au_true`` / ``au_pred``: per sample, the active AU names (None true = sample not AU-
    annotated, skipped; None pred = nothing predicted active). ``au_labeled``: per sample, the
    AUs annotated there (None = all of ``aus``); an AU is scored only where annotated.
    Returns ``{"aus", "per_au": {AU: {...}}, "f1": {AU: f1}, "mean_f1", "n"}``.
    """
    _check_same_length(au_true=au_true, au_pred=au_pred)
    if au_labeled is not None:
        _check_same_length(au_true=au_true, au_labeled=au_labeled)
    counts = {a: {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "n": 0} for a in aus}
    n = 0
    for i, (truth, pred) in enumerate(zip(au_true, au_pred, strict=True)):
        if truth is None:
            continue
        n += 1
        t, p = set(truth), set(pred or ())
        if au_labeled is None or au_labeled[i] is None:
            labeled: Sequence[str] = aus
        else:
            annotated = set(au_labeled[i])  # type: ignore[arg-type]
            labeled = [a for a in aus if a in annotated]
        for a in labeled:
            c = counts[a]
            c["n"] += 1
            key = ("tp" if a in p else "fn") if a in t else ("fp" if a in p else "tn")
            c[key] += 1
    per_au: dict[str, dict[str, Any]] = {}
    for a, c in counts.items():
        tp, fp, fn = c["tp"], c["fp"], c["fn"]
        f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else None
        per_au[a] = {**c, "precision": tp / (tp + fp) if tp + fp else None,
                     "recall": tp / (tp + fn) if tp + fn else None, "f1": f1}
    defined = [v["f1"] for v in per_au.values() if v["f1"] is not None]
    return {"aus": list(aus), "n": n, "per_au": per_au, "f1": {a: v["f1"] for a, v in per_au.items()},
            "mean_f1": sum(defined) / len(defined) if defined else None}


def active_from_probs(au_probs: Mapping[str, float] | None,
                      threshold: float | Mapping[str, float] = 0.5) -> list[str]:
    """AU names whose probability reaches ``threshold`` (one value or one per AU), AU_NAMES order."""
    if not au_probs:
        return []
    def thr(a: str) -> float:
        return threshold.get(a, 0.5) if isinstance(threshold, Mapping) else threshold
    return [a for a in AU_NAMES if a in au_probs and au_probs[a] >= thr(a)]


# ---------------------------------------------------------------------------------------------
# report


def evaluation_report(*, fe_true: Sequence[str | None] | None = None,
                      fe_pred: Sequence[str | None] | None = None,
                      fe_confidence: Sequence[float] | None = None, fe_classes: Sequence[str] = FE_BASIC,
                      au_true: Sequence[Iterable[str] | None] | None = None,
                      au_pred: Sequence[Iterable[str] | None] | None = None,
                      au_labeled: Sequence[Iterable[str] | None] | None = None,
                      aus: Sequence[str] = AU_NAMES, n_bins: int = N_BINS) -> dict[str, Any]:
    """One JSON-able report: ``{"fe": fe_metrics + "calibration", "au": au_f1}`` (None parts absent).

    Calibration uses the samples scored by :func:`fe_metrics` (true label in ``fe_classes``).
    """
    report: dict[str, Any] = {"fe": None, "au": None}
    if fe_true is not None and fe_pred is not None:
        fe = fe_metrics(fe_true, fe_pred, fe_classes)
        if fe_confidence is not None:
            _check_same_length(fe_true=fe_true, fe_confidence=fe_confidence)
            known = set(fe_classes)
            scored = [(c, t == p) for t, p, c in zip(fe_true, fe_pred, fe_confidence, strict=True)
                      if t in known]
            fe["calibration"] = calibration([c for c, _ in scored], [h for _, h in scored], n_bins)
            fe["ece"] = fe["calibration"]["ece"]
        report["fe"] = fe
    if au_true is not None and au_pred is not None:
        report["au"] = au_f1(au_true, au_pred, aus, au_labeled)
    return _jsonable(report)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return _float(value)
    return value


def flat_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """Scalar metrics for ``mlflow.log_metrics``: ``fe/accuracy``, ``fe/recall/happiness``,
    ``au/f1/AU12`` ..."""
    out: dict[str, float] = {}
    fe, au = report.get("fe"), report.get("au")
    if fe:
        for key in ("accuracy", "uar", "war", "ece"):
            if fe.get(key) is not None:
                out[f"fe/{key}"] = float(fe[key])
        for c, r in fe["per_class_recall"].items():
            if r is not None:
                out[f"fe/recall/{c}"] = float(r)
    if au:
        if au.get("mean_f1") is not None:
            out["au/mean_f1"] = float(au["mean_f1"])
        for a, f in au["f1"].items():
            if f is not None:
                out[f"au/f1/{a}"] = float(f)
    return out


# ---------------------------------------------------------------------------------------------
# plots (matplotlib Agg through the object API: no pyplot global state, safe in workers)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def confusion_matrix_png(cm: Sequence[Sequence[int]] | np.ndarray, classes: Sequence[str], *,
                         normalize: bool = True, title: str = "FE confusion matrix") -> bytes:
    """PNG of a confusion matrix; ``normalize`` shows row-normalised recall with counts beside."""
    counts = np.asarray(cm, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    shown = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0) if normalize else counts
    k = len(classes)
    fig = _figure(1.2 + 0.75 * k, 1.0 + 0.7 * k)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(float(shown.max()), 1.0))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = shown.max() if shown.size else 0.0
    for i in range(k):
        for j in range(k):
            text = f"{shown[i, j]:.2f}\n({int(counts[i, j])})" if normalize else str(int(counts[i, j]))
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if shown[i, j] > 0.5 * top else "black")
    return _png(fig)


def reliability_png(calib: Mapping[str, Any], title: str = "FE calibration") -> bytes:
    """PNG reliability diagram (accuracy per confidence bin vs the diagonal) from :func:`calibration`."""
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    bins = calib["bins"]
    width = bins[0]["upper"] - bins[0]["lower"] if bins else 0.1
    xs = [b["lower"] for b in bins if b["count"]]
    ax.bar(xs, [b["accuracy"] for b in bins if b["count"]], width=width, align="edge",
           edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ece = calib.get("ece")
    ax.set_title(f"{title} (ECE {ece:.3f})" if ece is not None else title)
    ax.legend(loc="upper left")
    return _png(fig)


def au_f1_png(au: Mapping[str, Any], title: str = "AU F1") -> bytes:
    """PNG bar chart of per-AU F1 (AUs with a defined F1) and the mean."""
    items = [(a, f) for a, f in au["f1"].items() if f is not None]
    fig = _figure(1.5 + 0.4 * max(len(items), 1), 3.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar([a for a, _ in items], [f for _, f in items], color="tab:orange", edgecolor="black")
    if au.get("mean_f1") is not None:
        ax.axhline(au["mean_f1"], linestyle="--", color="gray", label=f"mean {au['mean_f1']:.3f}")
        ax.legend(loc="upper right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=90)
    return _png(fig)


def report_plots(report: Mapping[str, Any]) -> dict[str, bytes]:
    """``{file name: PNG bytes}`` for what the report holds: confusion matrix, reliability, AU F1."""
    plots: dict[str, bytes] = {}
    fe, au = report.get("fe"), report.get("au")
    if fe and fe.get("n"):
        plots["confusion_matrix.png"] = confusion_matrix_png(fe["confusion_matrix"], fe["classes"])
        if fe.get("calibration") and fe["calibration"]["n"]:
            plots["reliability.png"] = reliability_png(fe["calibration"])
    if au and au.get("n"):
        plots["au_f1.png"] = au_f1_png(au)
    return plots


def write_report(report: Mapping[str, Any], json_uri: str, plots_dir: str | None = None) -> dict[str, str]:
    """Write the report JSON to ``json_uri`` and its PNGs to ``plots_dir`` (default: beside it).

    Returns ``{"report": json_uri, "<plot>.png": uri, ...}`` for logging as artifacts.
    """
    storage.write_text(json_uri, json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n")
    if plots_dir is None:
        plots_dir = json_uri.rsplit("/", 1)[0] if "/" in json_uri else "."
    written = {"report": json_uri}
    for name, png in report_plots(report).items():
        uri = storage.join(plots_dir, name)
        storage.write_bytes(uri, png)
        written[name] = uri
    return written
