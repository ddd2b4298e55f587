"""Account-level detection metrics in numpy (no scikit-learn needed at run time)."""

from __future__ import annotations

import numpy as np


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and thresholds, scores descending; ties grouped."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    p, n = max(y.sum(), 1e-12), max(len(y) - y.sum(), 1e-12)
    tpr = np.r_[0.0, tps / p]
    fpr = np.r_[0.0, fps / n]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels)
    if labels.min(initial=1) == labels.max(initial=0):
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: precision at each positive, averaged (as scikit-learn computes it)."""
    labels = np.asarray(labels, dtype=np.float64)
    if labels.sum() == 0:
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    p, n = labels.sum(), len(labels) - labels.sum()
    tp, fp = tpr * p, fpr * n
    precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=(tp + fp) > 0)
    return float(np.sum(np.diff(tpr) * precision[1:]))


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, max_fpr: float) -> float:
    """Highest TPR over thresholds whose FPR does not exceed max_fpr; NaN with one class only
    (without negatives every threshold has FPR 0, which read as a perfect TPR)."""
    labels = np.asarray(labels)
    if labels.min(initial=1) == labels.max(initial=0):
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def queries_to_detection(flags_in_order: list[bool]) -> int | None:
    """Requests an account sent before its first non-allow action; None if never acted on."""
    for i, f in enumerate(flags_in_order):
        if f:
            return i
    return None
