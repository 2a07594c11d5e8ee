"""Metrics on hand-made cases whose answers were worked out on paper."""

from __future__ import annotations

import numpy as np
import pytest

from carclf.evaluate.metrics import (
    accuracy,
    class_report,
    confusion_matrix,
    nll,
    top_k_accuracy,
)

Y_TRUE = [0, 0, 1, 2, 2, 2]
Y_PRED = [0, 1, 1, 2, 0, 2]


def test_accuracy():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([0, 1], [0])


def test_confusion_matrix_rows_are_truth():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert confusion_matrix([], [], 2).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix([0, 3], [0, 0], 3)


def test_class_report_by_hand():
    rep = class_report(confusion_matrix(Y_TRUE, Y_PRED, 3))
    # precision: column-wise tp / predicted; recall: row-wise tp / true
    np.testing.assert_allclose(rep.precision, [1 / 2, 1 / 2, 2 / 2])
    np.testing.assert_allclose(rep.recall, [1 / 2, 1 / 1, 2 / 3])
    np.testing.assert_allclose(rep.f1, [0.5, 2 / 3, 0.8])
    assert rep.support.tolist() == [2, 1, 3]
    assert rep.macro_f1 == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert rep.weighted_f1 == pytest.approx((0.5 * 2 + 2 / 3 * 1 + 0.8 * 3) / 6)


def test_class_report_zero_division_is_zero_not_nan():
    # class 2 has no samples and no predictions; class 1 is never predicted
    rep = class_report(confusion_matrix([0, 1], [0, 0], 3))
    assert rep.precision.tolist() == [0.5, 0.0, 0.0]
    assert rep.recall.tolist() == [1.0, 0.0, 0.0]
    assert np.isfinite(rep.f1).all()


def test_top_k_accuracy():
    scores = np.array(
        [
            [0.5, 0.3, 0.2],  # true 0: rank 1
            [0.5, 0.3, 0.2],  # true 1: rank 2
            [0.5, 0.3, 0.2],  # true 2: rank 3
            [0.1, 0.1, 0.8],  # true 0: tie with 1 at rank 2, broken towards index 0
        ]
    )
    y = [0, 1, 2, 0]
    assert top_k_accuracy(scores, y, 1) == pytest.approx(1 / 4)
    assert top_k_accuracy(scores, y, 2) == pytest.approx(3 / 4)
    assert top_k_accuracy(scores, y, 3) == 1.0
    assert top_k_accuracy(scores, y, 10) == 1.0  # k > K is all classes
    assert top_k_accuracy(scores, y, 1) == accuracy(y, scores.argmax(1))
    with pytest.raises(ValueError, match="must be"):
        top_k_accuracy(scores[:, 0], y)


def test_nll():
    probs = np.array([[0.5, 0.5], [0.25, 0.75]])
    assert nll(probs, [0, 1]) == pytest.approx(-(np.log(0.5) + np.log(0.75)) / 2)
    assert np.isfinite(nll(np.array([[1.0, 0.0]]), [1]))  # clipped, not inf


def test_matches_scikit_learn_on_random_data():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 7, 300), rng.integers(0, 7, 300)
    rep = class_report(confusion_matrix(y, p, 7))
    pr, rc, f1, sup = metrics.precision_recall_fscore_support(
        y, p, labels=range(7), zero_division=0
    )
    np.testing.assert_allclose(rep.precision, pr)
    np.testing.assert_allclose(rep.recall, rc)
    np.testing.assert_allclose(rep.f1, f1)
    scores = rng.random((300, 7))
    assert top_k_accuracy(scores, y, 3) == pytest.approx(
        metrics.top_k_accuracy_score(y, scores, k=3, labels=range(7))
    )
