"""Temperature scaling and ECE: hand-computed ECE, and a temperature recovered from simulation."""

from __future__ import annotations

import numpy as np
import pytest

from carclf.inference.calibration import (
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    temperature_nll,
)


def test_ece_by_hand():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.45, 0.55], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])
    # bin (0.9, 1.0]: conf 0.95, acc 1/2 -> gap 0.45, weight 2/4
    # bin (0.5, 0.6]: conf 0.55, acc 2/2 -> gap 0.45, weight 2/4
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.45)
    bins = reliability_bins(probs, labels, n_bins=10)
    assert bins.count.tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 0, 2]
    assert bins.accuracy[9] == pytest.approx(0.5) and bins.confidence[5] == pytest.approx(0.55)


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)  # right 80% of the time at confidence 0.8
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def _simulate(temperature: float, n: int = 20000, k: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, (n, k))
    p = np.exp(logits / temperature)
    p /= p.sum(axis=1, keepdims=True)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.0])
def test_fit_temperature_recovers_the_simulated_temperature(true_t):
    logits, labels = _simulate(true_t)
    t = fit_temperature(logits, labels)
    assert isinstance(t, float)
    assert t == pytest.approx(true_t, rel=0.06)
    # it is the minimum: nearby temperatures are worse
    nll = temperature_nll(logits, labels, t)
    assert nll <= temperature_nll(logits, labels, t * 1.1)
    assert nll <= temperature_nll(logits, labels, t / 1.1)


def test_fit_temperature_scales_with_the_logits_and_lowers_ece():
    logits, labels = _simulate(2.0, n=5000)
    t = fit_temperature(logits, labels)
    assert fit_temperature(logits * 3.0, labels) == pytest.approx(3.0 * t, rel=1e-4)

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits / t), labels)
    assert after < before / 2


def test_fit_temperature_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        fit_temperature(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(ValueError, match="0..2"):
        fit_temperature(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(np.full((2, 3), np.nan), np.array([0, 1]))
