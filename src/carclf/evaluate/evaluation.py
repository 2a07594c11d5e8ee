"""Scoring a labelled set: every number the report shows, computed once, from arrays.

Probabilities are taken at two temperatures: T = 1 (the raw network) and the model's fitted
``meta.temperature``. Accuracy does not depend on T (argmax is unchanged under logit merging);
the calibration numbers show what temperature scaling bought.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from carclf.data.classmaps import display_name
from carclf.evaluate.metrics import (
    ClassReport,
    accuracy,
    class_report,
    confusion_matrix,
    nll,
    top_k_accuracy,
)
from carclf.evaluate.plots import GalleryItem
from carclf.inference.calibration import ReliabilityBins, reliability_bins


@dataclass
class Evaluation:
    """Metrics of one model on one labelled set (scored = readable and labelled images)."""

    class_names: list[str]
    class_names_local: list[str] | None
    temperature: float
    num_images: int
    num_scored: int
    num_unreadable: int
    num_unlabelled: int
    accuracy: float
    top3: float
    report: ClassReport
    confusion: np.ndarray
    bins_raw: ReliabilityBins
    bins_scaled: ReliabilityBins
    nll_raw: float
    nll_scaled: float
    mistakes: list[GalleryItem] = field(default_factory=list)

    @property
    def display_names(self) -> list[str]:
        local = self.class_names_local or [None] * len(self.class_names)
        return [display_name(n, loc) for n, loc in zip(self.class_names, local, strict=True)]

    @property
    def ece_raw(self) -> float:
        return self.bins_raw.ece

    @property
    def ece_scaled(self) -> float:
        return self.bins_scaled.ece

    def top_confusions(self, n: int = 10) -> list[tuple[int, int, int]]:
        """The ``n`` most frequent (true, predicted, count) mistakes, most frequent first."""
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(-off, axis=None, kind="stable")[:n]
        pairs = [np.unravel_index(i, off.shape) for i in order]
        return [(int(t), int(p), int(off[t, p])) for t, p in pairs if off[t, p] > 0]

    def to_dict(self) -> dict:
        local = self.class_names_local or [None] * len(self.class_names)
        return {
            "num_images": self.num_images,
            "num_scored": self.num_scored,
            "num_unreadable": self.num_unreadable,
            "num_unlabelled": self.num_unlabelled,
            "accuracy": self.accuracy,
            "top3_accuracy": self.top3,
            "macro_f1": self.report.macro_f1,
            "temperature": self.temperature,
            "ece_t1": self.ece_raw,
            "ece_scaled": self.ece_scaled,
            "nll_t1": self.nll_raw,
            "nll_scaled": self.nll_scaled,
            "per_class": [
                {"index": i, "name": n, "name_local": loc, **row}
                for i, (n, loc, row) in enumerate(
                    zip(self.class_names, local, self.report.rows(), strict=True)
                )
            ],
            "confusion_matrix": self.confusion.tolist(),
        }


def score(
    probs_raw: np.ndarray,
    probs_scaled: np.ndarray,
    labels: np.ndarray,
    ok: np.ndarray,
    paths: list[str],
    class_names: list[str],
    class_names_local: list[str] | None = None,
    temperature: float = 1.0,
    n_bins: int = 15,
    gallery: int = 16,
) -> Evaluation:
    """Metrics over the rows that are readable (``ok``) and labelled (``labels >= 0``).

    Args:
        probs_raw: (N, K) probabilities at T = 1.
        probs_scaled: (N, K) probabilities at ``temperature`` (what the product reports).
        labels: (N,) model class indices, -1 where unknown.
    """
    labels = np.asarray(labels)
    use = ok & (labels >= 0)
    if not use.any():
        raise ValueError("no image is both readable and labelled: nothing to score")
    y, p1, pt = labels[use], probs_raw[use], probs_scaled[use]
    pred = pt.argmax(axis=1)
    cm = confusion_matrix(y, pred, len(class_names))
    local = class_names_local or [None] * len(class_names)
    names = [display_name(n, loc) for n, loc in zip(class_names, local, strict=True)]
    scored_paths = np.asarray(paths, dtype=object)[use]
    conf = pt.max(axis=1)
    wrong = np.flatnonzero(pred != y)
    worst = wrong[np.argsort(-conf[wrong], kind="stable")][:gallery]
    mistakes = [
        GalleryItem(str(scored_paths[i]), names[y[i]], names[pred[i]], float(conf[i]))
        for i in worst
    ]
    return Evaluation(
        class_names=list(class_names),
        class_names_local=class_names_local,
        temperature=float(temperature),
        num_images=len(labels),
        num_scored=int(use.sum()),
        num_unreadable=int((~ok).sum()),
        num_unlabelled=int((ok & (labels < 0)).sum()),
        accuracy=accuracy(y, pred),
        top3=top_k_accuracy(pt, y, 3),
        report=class_report(cm),
        confusion=cm,
        bins_raw=reliability_bins(p1, y, n_bins),
        bins_scaled=reliability_bins(pt, y, n_bins),
        nll_raw=nll(p1, y),
        nll_scaled=nll(pt, y),
        mistakes=mistakes,
    )
