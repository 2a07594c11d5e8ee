"""Classification metrics in plain numpy: accuracy, top-k, confusion matrix, per-class report.

Pure functions of arrays so they can be checked on hand-made cases and reused anywhere (the
report, benchmarks, the lead's training summary) without torch or scikit-learn. A class with no
predictions (or no samples) gets precision (or recall) 0 rather than NaN, as scikit-learn's
``zero_division=0`` does, so averages stay defined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _labels(y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    return y.astype(np.int64)


def accuracy(y_true, y_pred) -> float:
    """Share of exact matches (0.0 for no samples)."""
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in length")
    return float((y_true == y_pred).mean()) if len(y_true) else 0.0


def top_k_accuracy(scores, y_true, k: int = 3) -> float:
    """Share of samples whose true class is among the ``k`` highest scores.

    Ties are broken towards the lower class index (as ``argmax`` does), so top-1 equals
    :func:`accuracy` of ``scores.argmax(1)``.
    """
    scores, y_true = np.asarray(scores), _labels(y_true)
    if scores.ndim != 2 or len(scores) != len(y_true):
        raise ValueError(f"scores must be (N, K) with N = {len(y_true)}, got {scores.shape}")
    if not len(y_true):
        return 0.0
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == y_true[:, None]).any(axis=1).mean())


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(K, K) counts; row = true class, column = predicted class."""
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside 0..{num_classes - 1}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


@dataclass
class ClassReport:
    """Per-class precision, recall, F1 and support (arrays of length K), plus their averages."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray

    @property
    def macro_f1(self) -> float:
        return float(self.f1.mean()) if len(self.f1) else 0.0

    @property
    def weighted_f1(self) -> float:
        total = self.support.sum()
        return float((self.f1 * self.support).sum() / total) if total else 0.0

    def rows(self) -> list[dict]:
        return [
            {
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for p, r, f, s in zip(self.precision, self.recall, self.f1, self.support, strict=True)
        ]


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = num.astype(float), den.astype(float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def class_report(cm: np.ndarray) -> ClassReport:
    """Precision, recall and F1 per class from a confusion matrix (zero-division gives 0)."""
    cm = np.asarray(cm)
    tp = np.diag(cm)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, cm.sum(axis=1))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return ClassReport(precision, recall, f1, cm.sum(axis=1))


def nll(probs, y_true, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class (log loss)."""
    probs, y_true = np.asarray(probs, dtype=float), _labels(y_true)
    if not len(y_true):
        return 0.0
    return float(-np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0)).mean())


# -- telling known from unknown photos (open set) ----------------------------------------------
def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Area under the ROC curve of telling known (positive, higher score) from unknown photos:
    the probability that a random known photo scores above a random unknown one (ties: half)."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if not len(known) or not len(unknown):
        raise ValueError("AUROC needs known and unknown scores")
    both = np.concatenate([known, unknown])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    # average rank (1-based) of each distinct value, ties sharing the mean of their ranks
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0
    ranks = mean_rank[inverse]
    n1, n0 = len(known), len(unknown)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def roc_curve(known: np.ndarray, unknown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to
    (1, 1): the share of unknown and of known photos accepted (``score >= threshold``)."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    thresholds = np.unique(np.concatenate([known, unknown]))[::-1]
    k, u = np.sort(known), np.sort(unknown)
    tpr = (len(k) - np.searchsorted(k, thresholds, side="left")) / max(len(k), 1)
    fpr = (len(u) - np.searchsorted(u, thresholds, side="left")) / max(len(u), 1)
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])
