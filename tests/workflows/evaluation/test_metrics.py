"""Metrics against a hand-computed example (arithmetic written out), plots and the JSON report."""

from __future__ import annotations

import json

import pytest

from workflows.evaluation.metrics import (
    active_from_probs,
    au_f1,
    calibration,
    confusion_matrix,
    evaluation_report,
    expected_calibration_error,
    fe_metrics,
    flat_metrics,
    report_plots,
    write_report,
)

H, S, N = "happiness", "sadness", "neutral"
CLASSES = (H, S, N)
# 11 samples; the last has a true label outside CLASSES (excluded, counted).
FE_TRUE = [H, H, H, H, S, S, N, N, N, N, "contempt"]
FE_PRED = [H, H, H, S, S, N, N, N, H, None, H]
FE_CONF = [0.95, 0.95, 0.95, 0.95, 0.62, 0.62, 0.30, 0.30, 0.30, 0.30, 0.50]
#          ok    ok    ok    x     ok    x     ok    ok    x     x


def test_fe_metrics_hand_computed():
    m = fe_metrics(FE_TRUE, FE_PRED, CLASSES)
    # rows = true (h, s, n), columns = predicted (h, s, n); the None prediction is in no cell
    assert m["confusion_matrix"] == [[3, 1, 0],
                                     [0, 1, 1],
                                     [1, 0, 2]]
    assert m["n"] == 10 and m["n_excluded"] == 1 and m["n_invalid_pred"] == 1
    assert m["support"] == {H: 4, S: 2, N: 4}
    # recall: happiness 3/4, sadness 1/2, neutral 2/4 (the unparseable prediction counts as wrong)
    assert m["per_class_recall"] == {H: 0.75, S: 0.5, N: 0.5}
    # accuracy = (3 + 1 + 2) / 10 = 0.6
    assert m["accuracy"] == pytest.approx(0.6)
    # UAR = (0.75 + 0.5 + 0.5) / 3 = 0.58333
    assert m["uar"] == pytest.approx(1.75 / 3)
    # WAR = 4/10 * 0.75 + 2/10 * 0.5 + 4/10 * 0.5 = 0.3 + 0.1 + 0.2 = 0.6 = accuracy
    assert m["war"] == pytest.approx(0.6)


def test_uar_ignores_classes_absent_from_ground_truth():
    m = fe_metrics([H, H], [H, S], CLASSES)
    assert m["per_class_recall"] == {H: 0.5, S: None, N: None}
    assert m["uar"] == 0.5 and m["accuracy"] == 0.5
    empty = fe_metrics([], [], CLASSES)
    assert empty["accuracy"] is None and empty["uar"] is None
    assert confusion_matrix([H], [S], CLASSES).tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]


def test_ece_hand_computed():
    correct = [t == p for t, p in zip(FE_TRUE[:10], FE_PRED[:10], strict=True)]
    calib = calibration(FE_CONF[:10], correct, n_bins=15)
    # 15 bins of width 1/15 = 0.0667, upper edge inclusive:
    #   0.95 → bin 14 (0.933, 1.0]: 4 samples, accuracy 3/4 = 0.75, |0.75 - 0.95| = 0.20, weight 4/10 → 0.080
    #   0.62 → bin 9 (0.600, 0.667]: 2 samples, accuracy 1/2 = 0.50, |0.50 - 0.62| = 0.12, weight 2/10 → 0.024
    #   0.30 → bin 4 (0.267, 0.333]: 4 samples, accuracy 2/4 = 0.50, |0.50 - 0.30| = 0.20, weight 4/10 → 0.080
    # ECE = 0.080 + 0.024 + 0.080 = 0.184
    assert calib["ece"] == pytest.approx(0.184)
    counts = {i: b["count"] for i, b in enumerate(calib["bins"]) if b["count"]}
    assert counts == {4: 4, 9: 2, 14: 4}
    assert calib["bins"][14]["accuracy"] == 0.75
    assert expected_calibration_error([1.0, 0.0], [True, False]) == pytest.approx(0.0)
    assert expected_calibration_error([], []) is None
    with pytest.raises(ValueError, match="within"):
        calibration([1.5], [True])


def test_au_f1_hand_computed():
    aus = ("AU01", "AU02", "AU06", "AU12")
    au_true = [{"AU06", "AU12"}, {"AU12"}, {"AU01"}, set(), None]
    au_pred = [{"AU06", "AU12"}, {"AU06", "AU12"}, None, {"AU01", "AU12"}, {"AU01"}]
    # sample 4 has AU12 unannotated (its AU12 prediction is not scored); sample 5 has no AU truth
    au_labeled = [None, None, None, ["AU01", "AU02", "AU06"], None]
    r = au_f1(au_true, au_pred, aus, au_labeled)
    # AU01: s3 FN, s4 FP                       → F1 = 2*0 / (0 + 1 + 1) = 0
    # AU02: never true, never predicted        → undefined (None), not averaged
    # AU06: s1 TP, s2 FP                       → F1 = 2*1 / (2 + 1 + 0) = 2/3
    # AU12: s1 TP, s2 TP (s4 not annotated)    → F1 = 2*2 / (4 + 0 + 0) = 1
    assert r["f1"] == {"AU01": 0.0, "AU02": None, "AU06": pytest.approx(2 / 3), "AU12": 1.0}
    assert r["per_au"]["AU12"]["n"] == 3 and r["per_au"]["AU01"]["n"] == 4
    # mean F1 = (0 + 2/3 + 1) / 3 = 5/9
    assert r["mean_f1"] == pytest.approx(5 / 9)
    assert r["n"] == 4
    assert active_from_probs({"AU12": 0.7, "AU06": 0.4, "AU01": 0.9}, {"AU01": 0.95}) == ["AU12"]


def test_report_json_plots_and_flat_metrics(tmp_path):
    report = evaluation_report(fe_true=FE_TRUE, fe_pred=FE_PRED, fe_confidence=FE_CONF, fe_classes=CLASSES,
                               au_true=[{"AU12"}, set()], au_pred=[{"AU12"}, {"AU06"}], aus=("AU06", "AU12"))
    # the excluded 'contempt' sample is not in calibration either
    assert report["fe"]["ece"] == pytest.approx(0.184) and report["fe"]["calibration"]["n"] == 10
    assert report["au"]["mean_f1"] == pytest.approx(0.5)  # AU06 F1 0 (one FP), AU12 F1 1
    json.dumps(report, allow_nan=False)  # JSON-able as is
    flat = flat_metrics(report)
    assert flat["fe/uar"] == pytest.approx(1.75 / 3) and flat["fe/recall/sadness"] == 0.5
    assert flat["au/f1/AU12"] == 1.0 and "au/f1/AU06" in flat
    plots = report_plots(report)
    assert set(plots) == {"confusion_matrix.png", "reliability.png", "au_f1.png"}
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in plots.values())
    written = write_report(report, str(tmp_path / "eval" / "report.json"))
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["fe"]["accuracy"] == pytest.approx(0.6)
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000
    assert set(written) == {"report", "confusion_matrix.png", "reliability.png", "au_f1.png"}
    assert evaluation_report() == {"fe": None, "au": None}
