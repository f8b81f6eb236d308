"""Image-level detection metrics, computed from per-image scores and 0/1 labels.

Pure numpy, so they are cheap to import and exact to test: average precision and ROC AUC give
the same numbers as scikit-learn's ``average_precision_score`` and ``roc_auc_score``. Scores are
any monotone confidence (logits or probabilities); a sample is predicted positive when its score
is ``>= threshold``.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1]); s = np.array([0.1, 0.4, 0.35, 0.8])
>>> round(average_precision(y, s), 4), round(auroc(y, s), 4)
(0.8333, 0.75)
>>> at_threshold(y, s, 0.3)["recall"]
1.0
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

UNDEFINED_NO_POSITIVES = "undefined: the set has no positive (defective) images"
UNDEFINED_ONE_CLASS = "undefined: the set holds only one class"


def _check(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def precision_recall_curve(labels: Any, scores: Any
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score used as threshold, highest threshold last.

    Returns ``(precision, recall, thresholds)`` like scikit-learn: ``precision`` and ``recall``
    have one more entry than ``thresholds`` (the final point ``precision=1, recall=0``).
    Thresholds run in increasing order, one per distinct score.
    """
    y, s = _check(labels, scores)
    tps, fps, thr = _counts(y, s)
    precision = np.divide(tps, tps + fps, out=np.zeros_like(tps, dtype=float),
                          where=(tps + fps) > 0)
    recall = tps / tps[-1] if tps.size and tps[-1] > 0 else np.ones_like(tps, dtype=float)
    # where nothing is predicted positive, precision is 1 by convention (as in sklearn)
    precision = np.where((tps + fps) > 0, precision, 1.0)
    return (np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1])


def _counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true/false positive counts at each distinct threshold, high to low."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.where(np.diff(s))[0]
    idx = np.r_[distinct, y.size - 1] if y.size else np.array([], dtype=int)
    tps = np.cumsum(y)[idx].astype(float)
    fps = (idx + 1 - tps).astype(float)
    return tps, fps, s[idx]


def average_precision(labels: Any, scores: Any) -> float:
    """Area under the step PR curve, ``sum_n (R_n - R_{n-1}) P_n`` (no interpolation).

    Returns NaN when there are no positives (AP is undefined then).
    """
    y, s = _check(labels, scores)
    if y.sum() == 0:
        return math.nan
    precision, recall, _ = precision_recall_curve(y, s)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (probability a positive outscores a negative, ties count half).

    Returns NaN when only one class is present.
    """
    y, s = _check(labels, scores)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=float)
    sorted_s = s[order]
    # average ranks of tied groups
    starts = np.r_[0, np.where(np.diff(sorted_s))[0] + 1]
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def at_threshold(labels: Any, scores: Any, threshold: float) -> dict[str, float | int]:
    """Confusion counts and precision / recall / F1 / accuracy for ``score >= threshold``.

    Precision is 0 when nothing is predicted positive, recall 0 when there are no positives
    (scikit-learn's ``zero_division=0``).
    """
    y, s = _check(labels, scores)
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "precision": precision, "recall": recall, "f1": f1,
            "accuracy": (tp + tn) / y.size if y.size else math.nan}


def best_f1(labels: Any, scores: Any) -> dict[str, float | int]:
    """The threshold (one of the scores) that maximises F1, with its confusion counts.

    Ties go to the highest threshold (fewest positive predictions). With no positives, F1 is 0
    everywhere and the threshold is just above the highest score.
    """
    y, s = _check(labels, scores)
    if y.sum() == 0 or y.size == 0:
        top = float(s.max()) if s.size else 0.0
        return at_threshold(y, s, math.nextafter(top, math.inf))
    tps, fps, thr = _counts(y, s)
    f1 = 2 * tps / (tps + fps + y.sum())
    i = int(np.argmax(f1))  # first maximum = highest threshold
    return at_threshold(y, s, float(thr[i]))


def _clean(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


def detection_report(labels: Any, scores: Any, threshold: float | None = None
                     ) -> dict[str, Any]:
    """Every detection metric of one set of scores, JSON-ready (undefined values are None).

    Args:
        labels: 0/1 ground truth per image.
        scores: The model's score per image (higher = more defective).
        threshold: The decision threshold chosen beforehand (on validation data). When None,
            the ``at_threshold`` block is left out.

    Returns:
        ``n``, ``positives``, ``negatives``, ``ap``, ``auroc``, optional ``at_threshold``,
        and ``best_f1_on_this_set`` (a threshold chosen on the very data it is scored on:
        optimistic, reported only for comparison with the reference code), plus ``notes``
        explaining any undefined metric.
    """
    y, s = _check(labels, scores)
    pos = int(y.sum())
    rep: dict[str, Any] = {"n": int(y.size), "positives": pos, "negatives": int(y.size - pos),
                           "ap": _clean(average_precision(y, s)),
                           "auroc": _clean(auroc(y, s))}
    notes = []
    if pos == 0:
        notes.append(f"ap: {UNDEFINED_NO_POSITIVES}")
    if pos == 0 or pos == y.size:
        notes.append(f"auroc: {UNDEFINED_ONE_CLASS}")
    if threshold is not None:
        rep["at_threshold"] = at_threshold(y, s, threshold)
    rep["best_f1_on_this_set"] = dict(best_f1(y, s), optimistic=True)
    if notes:
        rep["notes"] = notes
    return rep
