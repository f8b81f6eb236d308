"""diag.metrics.detection on hand-computed cases and against definitions written out in the test.

The module wraps scikit-learn, so the expected numbers here are worked out by hand (the
arithmetic is in the comments) or come from brute-force definitions (pairs for AUROC,
precision at each positive's rank for AP), never from scikit-learn itself.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from diag.metrics import detection as D

# scores high to low: 0.8 (pos), 0.4 (neg), 0.35 (pos), 0.1 (neg)
Y4 = np.array([0, 0, 1, 1])
S4 = np.array([0.1, 0.4, 0.35, 0.8])
# scores high to low: 0.9 (pos), 0.9 (neg) tied, 0.5 (pos), 0.3 (pos), 0.1 (neg)
Y5 = np.array([1, 0, 1, 1, 0])
S5 = np.array([0.9, 0.9, 0.5, 0.3, 0.1])


def test_pr_curve_by_hand():
    p, r, t = D.precision_recall_curve(Y4, S4)
    # >= 0.1: 2 of 4 right; >= 0.35: 2 of 3; >= 0.4: 1 of 2; >= 0.8: 1 of 1; then (1, 0)
    np.testing.assert_allclose(t, [0.1, 0.35, 0.4, 0.8])
    np.testing.assert_allclose(p, [1 / 2, 2 / 3, 1 / 2, 1, 1])
    np.testing.assert_allclose(r, [1, 1, 1 / 2, 1 / 2, 0])
    p, r, t = D.precision_recall_curve(Y5, S5)
    np.testing.assert_allclose(t, [0.1, 0.3, 0.5, 0.9])  # one threshold per distinct score
    np.testing.assert_allclose(p, [3 / 5, 3 / 4, 2 / 3, 1 / 2, 1])
    np.testing.assert_allclose(r, [1, 1, 2 / 3, 1 / 3, 0])


def test_average_precision_by_hand():
    # sum over thresholds, high to low, of (recall gain) x precision:
    # 0.8: 1/2 x 1;  0.4: 0 x 1/2;  0.35: 1/2 x 2/3  ->  1/2 + 1/3 = 5/6
    assert D.average_precision(Y4, S4) == pytest.approx(5 / 6, abs=1e-12)
    # 0.9 (tied pair): 1/3 x 1/2;  0.5: 1/3 x 2/3;  0.3: 1/3 x 3/4;  0.1: 0  ->  23/36
    assert D.average_precision(Y5, S5) == pytest.approx(23 / 36, abs=1e-12)
    # every score tied: one threshold, precision 1/2 at recall 1
    assert D.average_precision([0, 1, 0, 1], np.zeros(4)) == pytest.approx(0.5)


def test_auroc_by_hand():
    # positive/negative pairs won: 0.35 > 0.1, 0.8 > 0.1, 0.8 > 0.4 (0.35 < 0.4): 3 of 4
    assert D.auroc(Y4, S4) == pytest.approx(3 / 4, abs=1e-12)
    # pairs (pos, neg): (.9,.9) tie = 1/2, (.9,.1) 1, (.5,.9) 0, (.5,.1) 1, (.3,.9) 0, (.3,.1) 1
    assert D.auroc(Y5, S5) == pytest.approx(3.5 / 6, abs=1e-12)
    assert D.auroc([0, 1, 0, 1], np.zeros(4)) == 0.5


def test_at_threshold_by_hand():
    m = D.at_threshold(Y5, S5, 0.5)  # predicted: 0.9, 0.9, 0.5 -> tp 2, fp 1, fn 1, tn 1
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 1)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(3 / 5)
    none = D.at_threshold(Y5, S5, 5.0)  # nothing predicted positive: precision 0, not NaN
    assert (none["tp"], none["fp"], none["precision"], none["f1"]) == (0, 0, 0.0, 0.0)


def test_best_f1_by_hand():
    # F1 = 2 tp / (predicted + positives): 0.1: 4/6, 0.35: 4/5, 0.4: 2/4, 0.8: 2/3
    b = D.best_f1(Y4, S4)
    assert b["threshold"] == 0.35 and b["f1"] == pytest.approx(0.8)
    assert (b["tp"], b["fp"], b["tn"], b["fn"]) == (2, 1, 1, 0)


def test_best_f1_ties_go_to_the_highest_threshold():
    # scores high to low 4 (pos), 3, 2 (neg), 1 (pos): F1 at 4 = 2/3, at 3 = 2/4, at 2 = 2/5,
    # at 1 = 4/6: a tie between the highest and the lowest threshold
    y, s = np.array([1, 0, 0, 1]), np.array([4.0, 3.0, 2.0, 1.0])
    b = D.best_f1(y, s)
    assert b["threshold"] == 4.0 and b["f1"] == pytest.approx(2 / 3)
    assert (b["tp"], b["fp"]) == (1, 0)


def test_reference_best_f1_by_hand():
    r = D.reference_best_f1(Y4, S4)
    # F at curve points 0.1, 0.35, 0.4, 0.8, end: 2/3, 0.8, 1/2, 2/3, 0: best is 0.35 (index 1),
    # the threshold the midpoint (0.35 + 0.1) / 2
    assert r["curve_threshold"] == 0.35 and r["threshold"] == pytest.approx(0.225)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == 1.0
    assert r["f1"] == pytest.approx(0.8, abs=1e-9)
    # score > 0.225 predicts 0.4, 0.35, 0.8: only the 0.4 negative is wrong
    assert r["accuracy"] == pytest.approx(3 / 4)
    # at the midpoint our own counts give the same point of the curve
    m = D.at_threshold(Y4, S4, r["threshold"])
    assert (m["precision"], m["recall"]) == pytest.approx((r["precision"], r["recall"]))


def test_reference_best_f1_ties_go_to_the_lowest_threshold_and_index_0_has_no_midpoint():
    # the tie of test_best_f1_ties...: np.argmax takes the first maximum = threshold 1.0, the
    # lowest; at index 0 the reference uses that threshold itself, and its accuracy counts
    # score > 1.0, so the last positive is predicted negative: 1 of 4 right
    y, s = np.array([1, 0, 0, 1]), np.array([4.0, 3.0, 2.0, 1.0])
    r = D.reference_best_f1(y, s)
    assert r["threshold"] == 1.0 and r["curve_threshold"] == 1.0
    assert (r["precision"], r["recall"]) == (0.5, 1.0)
    assert r["accuracy"] == pytest.approx(1 / 4)
    assert D.best_f1(y, s)["threshold"] == 4.0  # our rule breaks the tie the other way


def _cases(n_cases: int = 60):
    rng = np.random.default_rng(0)
    for _ in range(n_cases):
        n = int(rng.integers(2, 60))
        y = rng.integers(0, 2, n)
        s = np.round(rng.normal(size=n) + y * rng.uniform(0, 2), int(rng.integers(0, 3)))
        if 0 < y.sum() < n:
            yield y, s


@pytest.mark.parametrize("case", list(_cases()))
def test_properties_on_random_scores(case):
    y, s = case
    pos, neg = s[y == 1], s[y == 0]
    # AUROC: share of positive/negative pairs the positive wins, ties counting half
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert D.auroc(y, s) == pytest.approx(pairs / (pos.size * neg.size), abs=1e-12)
    # AP: mean over positives of the precision at their score (tied scores count together)
    ap = np.mean([np.sum(y[s >= t]) / np.sum(s >= t) for t in pos])
    assert D.average_precision(y, s) == pytest.approx(ap, abs=1e-12)
    # a monotone transform (logit -> probability) changes no ranking metric
    prob = 1 / (1 + np.exp(-s))
    assert D.average_precision(y, prob) == pytest.approx(D.average_precision(y, s), abs=1e-12)
    assert D.auroc(y, prob) == pytest.approx(D.auroc(y, s), abs=1e-12)
    # best F1 is the maximum over every score used as threshold, at the highest such score
    f1 = {float(t): D.at_threshold(y, s, t)["f1"] for t in np.unique(s)}
    top = max(f1.values())
    best = D.best_f1(y, s)
    assert best["f1"] == pytest.approx(top)
    assert best["threshold"] == max(t for t, v in f1.items() if v == pytest.approx(top))
    # the reference's point reaches the same F1 (up to its 1e-10)
    assert D.reference_best_f1(y, s)["f1"] == pytest.approx(top, abs=1e-8)
    p, r, t = D.precision_recall_curve(y, s)
    assert p.size == r.size == t.size + 1 and (p[-1], r[-1]) == (1.0, 0.0)
    assert np.all(np.diff(t) > 0) and np.all(np.diff(r) <= 0)


def test_perfect_and_inverted_scores():
    y = np.array([0, 0, 0, 1, 1])
    assert D.average_precision(y, [0, 1, 2, 3, 4]) == 1.0
    assert D.auroc(y, [0, 1, 2, 3, 4]) == 1.0
    assert D.auroc(y, [4, 3, 2, 1, 0]) == 0.0
    # inverted: positives last; AP = (1/4 + 2/5) / 2
    assert D.average_precision(y, [4, 3, 2, 1, 0]) == pytest.approx(0.325)
    assert D.best_f1(y, [0, 1, 2, 3, 4])["f1"] == 1.0
    r = D.reference_best_f1(y, [0, 1, 2, 3, 4])
    assert (r["precision"], r["recall"], r["threshold"], r["accuracy"]) == (1.0, 1.0, 2.5, 1.0)


def test_no_positives_is_undefined_and_said_so():
    y, s = np.zeros(5, int), np.arange(5.0)
    assert math.isnan(D.average_precision(y, s))
    assert math.isnan(D.auroc(y, s))
    assert all(math.isnan(v) for v in D.reference_best_f1(y, s).values())
    rep = D.detection_report(y, s, threshold=2.0)
    assert rep["ap"] is None and rep["auroc"] is None
    assert any("no positive" in n for n in rep["notes"])
    assert rep["at_threshold"]["fp"] == 3
    assert rep["best_f1_on_this_set"]["fp"] == 0  # threshold above every score


def test_only_positives_has_ap_but_no_auroc():
    y, s = np.ones(3, int), np.array([0.1, 0.2, 0.3])
    assert D.average_precision(y, s) == 1.0
    assert math.isnan(D.auroc(y, s))
    rep = D.detection_report(y, s)
    assert rep["ap"] == 1.0 and rep["auroc"] is None and "at_threshold" not in rep
    assert rep["notes"] == [f"auroc: {D.UNDEFINED_ONE_CLASS}"]


def test_report_flags_best_f1_as_optimistic_and_is_json_ready():
    rep = D.detection_report(Y5, S5, threshold=0.6)
    assert set(rep) == {"n", "positives", "negatives", "ap", "auroc", "at_threshold",
                        "best_f1_on_this_set"}
    assert (rep["n"], rep["positives"], rep["negatives"]) == (5, 3, 2)
    assert rep["ap"] == pytest.approx(23 / 36)
    assert rep["best_f1_on_this_set"]["optimistic"] is True
    # >= 0.6 predicts the tied 0.9 pair only: tp 1, fp 1, fn 2
    assert rep["at_threshold"]["tp"] == 1 and rep["at_threshold"]["fn"] == 2
    json.dumps(rep)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        D.average_precision([0, 1], [0.1])
    with pytest.raises(ValueError):
        D.average_precision([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        D.auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError):
        D.reference_best_f1([0, 1, 1], [0.1, 0.2])
