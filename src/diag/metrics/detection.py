"""Image-level detection metrics, computed from per-image scores and 0/1 labels.

Average precision, ROC AUC and the precision-recall curve are scikit-learn's
(``average_precision_score``, ``roc_auc_score``, ``precision_recall_curve``); this module adds
input checks, NaN (not an exception or a warning) where a metric is undefined, the metrics at a
fixed threshold, the best-F1 threshold, and :func:`reference_best_f1`, the reference code's own
threshold rule. Scores are any monotone confidence (logits or probabilities); a sample is
predicted positive when its score is ``>= threshold``.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1]); s = np.array([0.1, 0.4, 0.35, 0.8])
>>> round(average_precision(y, s), 4), round(auroc(y, s), 4)
(0.8333, 0.75)
>>> at_threshold(y, s, 0.3)["recall"]
1.0
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm

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
    """scikit-learn's precision-recall curve: one point per distinct score used as threshold.

    Args:
        labels: 0/1 ground truth per image.
        scores: Score per image (higher = more defective).

    Returns:
        ``(precision, recall, thresholds)``: thresholds in increasing order, one per distinct
        score; ``precision`` and ``recall`` have one more entry (the final point
        ``precision=1, recall=0``). Where nothing is predicted positive precision is 1; with no
        positives at all, recall is 1 everywhere (scikit-learn's conventions, without its
        warning).
    """
    y, s = _check(labels, scores)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no positive class found"
        precision, recall, thresholds = skm.precision_recall_curve(y, s)
    return precision, recall, thresholds


def average_precision(labels: Any, scores: Any) -> float:
    """scikit-learn's average precision: ``sum_n (R_n - R_{n-1}) P_n`` (no interpolation).

    Returns NaN when there are no positives (AP is undefined then).
    """
    y, s = _check(labels, scores)
    if y.sum() == 0:
        return math.nan
    return float(skm.average_precision_score(y, s))


def auroc(labels: Any, scores: Any) -> float:
    """scikit-learn's ROC AUC (probability a positive outscores a negative, ties count half).

    Returns NaN when only one class is present.
    """
    y, s = _check(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return math.nan
    return float(skm.roc_auc_score(y, s))


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
    n_pos = int(y.sum())
    if n_pos == 0:
        top = float(s.max()) if s.size else 0.0
        return at_threshold(y, s, math.nextafter(top, math.inf))
    precision, recall, thresholds = precision_recall_curve(y, s)
    # back to integer counts, so that F1 ties are exact ties (2 tp / (tp + fp + P))
    tp = np.rint(recall[:-1] * n_pos)
    predicted = np.rint(np.divide(tp, precision[:-1], out=np.zeros_like(tp),
                                  where=precision[:-1] > 0))
    f1 = 2 * tp / (predicted + n_pos)
    i = int(f1.size - 1 - np.argmax(f1[::-1]))  # thresholds increase: last maximum = highest
    return at_threshold(y, s, float(thresholds[i]))


def reference_best_f1(labels: Any, scores: Any) -> dict[str, float]:
    """The reference code's operating point: best F1 on the PR curve of the scored set itself.

    Mirrors ``evaluate()`` of ``train_ResNet50.py`` (intelligolabs/DIAG), which runs it on the
    test set after every epoch::

        precision_, recall_, thresholds = precision_recall_curve(targets, predictions)
        f_measures = 2 * (precision_ * recall_) / (precision_ + recall_ + 0.0000000001)
        ix_best = np.argmax(f_measures)
        best_threshold = ((thresholds[ix_best] + thresholds[ix_best - 1]) / 2 if ix_best > 0
                          else thresholds[ix_best])
        precision, recall = precision_[ix_best], recall_[ix_best]
        accuracy = mean((predictions > best_threshold) == targets)

    Ties go to the first maximum, i.e. the lowest threshold. Applied to test data the result is
    optimistic: the threshold is chosen on the data it is scored on.

    Args:
        labels: 0/1 ground truth per image.
        scores: Score per image (the reference passes raw logits).

    Returns:
        ``precision``, ``recall``, ``f1`` (the reference's F-measure at that point, with its
        1e-10 in the denominator), ``threshold`` (the midpoint threshold the reference uses for
        accuracy), ``curve_threshold`` (the PR-curve threshold at the chosen point) and
        ``accuracy`` (of ``score > threshold``). All NaN when there are no positives.
    """
    y, s = _check(labels, scores)
    if y.sum() == 0:
        return dict.fromkeys(("precision", "recall", "f1", "threshold", "curve_threshold",
                              "accuracy"), math.nan)
    precision_, recall_, thresholds = precision_recall_curve(y, s)
    f_measures = 2 * (precision_ * recall_) / (precision_ + recall_ + 0.0000000001)
    ix_best = int(np.argmax(f_measures))
    best_threshold = ((thresholds[ix_best] + thresholds[ix_best - 1]) / 2 if ix_best > 0
                      else thresholds[ix_best])
    return {"precision": float(precision_[ix_best]), "recall": float(recall_[ix_best]),
            "f1": float(f_measures[ix_best]), "threshold": float(best_threshold),
            "curve_threshold": float(thresholds[ix_best]),
            "accuracy": float(np.mean((s > best_threshold) == y.astype(bool)))}


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
