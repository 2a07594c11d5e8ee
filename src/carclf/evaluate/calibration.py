"""How well calibrated a model is: reliability bins and expected calibration error (ECE).

The temperature itself is fitted in :mod:`carclf.inference.calibration` (training, ensembles and
pseudo-labels need it too); this module measures the result, before and after scaling, for the
evaluation report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carclf.inference.calibration import check_scores


@dataclass
class ReliabilityBins:
    """Per confidence bin: edges, sample count, mean confidence and accuracy (NaN when empty)."""

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        n = self.count.sum()
        used = self.count > 0
        gaps = np.abs(self.accuracy[used] - self.confidence[used])
        return float((gaps * self.count[used]).sum() / n) if n else 0.0


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> ReliabilityBins:
    """Bin the top-1 confidence into ``n_bins`` equal-width bins (lo, hi] over [0, 1]."""
    probs, labels = check_scores(probs, labels, "probs")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # (lo, hi] bins; the 1e-9 keeps 0.6 * 10 = 6.000000000000001 in the bin (0.5, 0.6].
    which = np.clip(np.ceil(conf * n_bins - 1e-9).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=n_bins) / count
        mean_acc = np.bincount(which, weights=correct, minlength=n_bins) / count
    return ReliabilityBins(edges[:-1], edges[1:], count, mean_conf, mean_acc)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the sample-weighted mean |accuracy - confidence| over top-1 confidence bins.

    0 means "right 80% of the time when it says 0.8"; the same 15 equal-width bins as Guo et al.
    """
    return reliability_bins(probs, labels, n_bins).ece
