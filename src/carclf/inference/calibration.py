"""Temperature scaling: one scalar that makes a model's probabilities mean what they say.

A fine-tuned network is usually over-confident: it says 0.95 where it is right 80% of the time.
Temperature scaling (Guo et al., 2017) divides the logits by one scalar T fitted on held-out data;
it changes no prediction (argmax is unchanged) but makes the probabilities mean what they say,
which matters for the "top-3 with confidence" the service shows and for thresholding.

``fit_temperature`` is called at the end of training on the validation split's logits and stored
in the bundle as ``meta.temperature``; the Classifier applies it in ``probabilities``. Ensembles
and pseudo-labels refit or use it too. How well it worked is measured here too (reliability bins,
expected calibration error), for the evaluation report and the TensorBoard summaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

T_MIN, T_MAX = 0.05, 20.0


def check_scores(
    scores: np.ndarray, labels: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores as float64 (N, K), labels as int64 (N,))``, or a ValueError saying what is wrong."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (N, K), got shape {scores.shape}")
    if labels.ndim != 1 or len(labels) != len(scores):
        raise ValueError(f"labels must be 1-D with N = {len(scores)} entries, got {labels.shape}")
    if not len(labels):
        raise ValueError(f"no samples: {what} is empty")
    if not np.isfinite(scores).all():
        raise ValueError(f"{what} hold NaN or infinite values")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"labels must be in 0..{scores.shape[1] - 1}")
    return scores, labels


def _nll_at(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float((log_norm - z[np.arange(len(labels)), labels]).mean())


def temperature_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    logits, labels = check_scores(logits, labels, "logits")
    return _nll_at(logits, labels, temperature)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T in [0.05, 20] that minimises the NLL of ``softmax(logits / T)``.

    The NLL is convex in 1/T, hence unimodal in log T, so a golden-section search over log T
    finds the optimum to ~1e-6 relative without a gradient or an optimiser dependency.

    Args:
        logits: (N, K) raw network outputs on held-out data (not probabilities).
        labels: (N,) true class indices 0..K-1.
    """
    logits, labels = check_scores(logits, labels, "logits")
    lo, hi = np.log(T_MIN), np.log(T_MAX)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll_at(logits, labels, np.exp(a)), _nll_at(logits, labels, np.exp(b))
    while hi - lo > 1e-7:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll_at(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll_at(logits, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2.0))


# -- measuring calibration (the evaluation report, the TensorBoard summaries) -----------------
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
    correct = (probs.argmax(axis=1) == labels).astype(float)
    return confidence_bins(probs.max(axis=1), correct, n_bins)


def confidence_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> ReliabilityBins:
    """Reliability bins of top-1 confidences ``conf`` and whether each answer was ``correct``."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, correct = np.asarray(conf, np.float64), np.asarray(correct, np.float64)
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
