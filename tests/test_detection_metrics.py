"""diag.metrics.detection against scikit-learn, on random, tied and degenerate inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from diag.metrics import detection as D


def _cases(n_cases: int = 200):
    rng = np.random.default_rng(0)
    for _ in range(n_cases):
        n = int(rng.integers(2, 80))
        y = rng.integers(0, 2, n)
        s = np.round(rng.normal(size=n) + y * rng.uniform(0, 2), int(rng.integers(0, 3)))
        if 0 < y.sum() < n:
            yield y, s


@pytest.mark.parametrize("case", list(_cases()))
def test_ap_auroc_curve_match_sklearn(case):
    y, s = case
    assert D.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert D.auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    p, r, t = skm.precision_recall_curve(y, s)
    p2, r2, t2 = D.precision_recall_curve(y, s)
    np.testing.assert_allclose(p2, p)
    np.testing.assert_allclose(r2, r)
    np.testing.assert_allclose(t2, t)


@pytest.mark.parametrize("case", list(_cases(40)))
def test_threshold_metrics_match_sklearn(case):
    y, s = case
    for thr in np.unique(s)[::3]:
        m = D.at_threshold(y, s, thr)
        pred = (s >= thr).astype(int)
        tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
        assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
        assert m["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
        assert m["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
        assert m["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))


@pytest.mark.parametrize("case", list(_cases(40)))
def test_best_f1_is_the_maximum_over_all_thresholds(case):
    y, s = case
    best = D.best_f1(y, s)
    brute = max(skm.f1_score(y, (s >= t).astype(int), zero_division=0) for t in np.unique(s))
    assert best["f1"] == pytest.approx(brute)
    assert D.at_threshold(y, s, best["threshold"])["f1"] == pytest.approx(brute)


def test_perfect_and_inverted_scores():
    y = np.array([0, 0, 0, 1, 1])
    assert D.average_precision(y, [0, 1, 2, 3, 4]) == 1.0
    assert D.auroc(y, [0, 1, 2, 3, 4]) == 1.0
    assert D.auroc(y, [4, 3, 2, 1, 0]) == 0.0
    assert D.best_f1(y, [0, 1, 2, 3, 4])["f1"] == 1.0


def test_all_tied_scores():
    y = np.array([0, 1, 0, 1])
    s = np.zeros(4)
    assert D.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s))
    assert D.auroc(y, s) == 0.5


def test_no_positives_is_undefined_and_said_so():
    y, s = np.zeros(5, int), np.arange(5.0)
    assert math.isnan(D.average_precision(y, s))
    rep = D.detection_report(y, s, threshold=2.0)
    assert rep["ap"] is None and rep["auroc"] is None
    assert any("no positive" in n for n in rep["notes"])
    assert rep["at_threshold"]["fp"] == 3
    assert rep["best_f1_on_this_set"]["fp"] == 0  # threshold above every score


def test_report_flags_best_f1_as_optimistic_and_is_json_ready():
    import json

    y = np.array([0, 1, 1, 0, 1])
    s = np.array([0.2, 0.9, 0.4, 0.5, 0.7])
    rep = D.detection_report(y, s, threshold=0.6)
    assert rep["best_f1_on_this_set"]["optimistic"] is True
    assert rep["at_threshold"]["tp"] == 2 and rep["at_threshold"]["fn"] == 1
    json.dumps(rep)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        D.average_precision([0, 1], [0.1])
    with pytest.raises(ValueError):
        D.average_precision([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        D.auroc([0, 1], [0.1, float("nan")])
