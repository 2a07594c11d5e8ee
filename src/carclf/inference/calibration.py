"""Temperature scaling: one scalar that makes a model's probabilities mean what they say.

A fine-tuned network is usually over-confident: it says 0.95 where it is right 80% of the time.
Temperature scaling (Guo et al., 2017) divides the logits by one scalar T fitted on held-out data;
it changes no prediction (argmax is unchanged) but makes the probabilities mean what they say,
which matters for the "top-3 with confidence" the service shows and for thresholding.

``fit_temperature`` is called at the end of training on the validation split's logits and stored
in the bundle as ``meta.temperature``; the Classifier applies it in ``probabilities``. Ensembles
and pseudo-labels refit or use it too; how well it worked (ECE, reliability bins) is measured by
:mod:`carclf.evaluate.calibration`.
"""

from __future__ import annotations

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
