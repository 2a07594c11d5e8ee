"""Pseudo-labels: the threshold reaches its precision on a synthetic case with known answers, and
a model without a fitted temperature refuses a precision target."""

from __future__ import annotations

import numpy as np
import pytest

from carclf.errors import ModelError
from carclf.pseudo import choose_threshold
from carclf.pseudo.threshold import precision_curve, wilson_lower


def _calibrated(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Confidences whose answers are right with exactly that probability (perfect calibration)."""
    conf = rng.beta(5, 1.5, size=n)
    return conf, rng.random(n) < conf


@pytest.mark.parametrize("target", [0.9, 0.95])
def test_threshold_reaches_its_precision_on_unseen_photos(target):
    rng = np.random.default_rng(0)
    val_conf, val_ok = _calibrated(2000, rng)
    rule = choose_threshold(val_conf, val_ok, target)
    assert rule is not None and rule.val_precision >= target
    # unseen photos from the same model: keep those at or above the cut
    test_conf, test_ok = _calibrated(50_000, rng)
    kept = test_conf >= rule.threshold
    assert test_ok[kept].mean() >= target  # precise as asked on photos it never saw
    assert 0.05 < kept.mean() < 0.95  # and not by keeping (almost) nothing
    # the point estimate (z=0) picks a lucky, lower cut: why the rule uses the lower bound
    naive = choose_threshold(val_conf, val_ok, target, z=0)
    assert naive.threshold < rule.threshold
    assert test_ok[test_conf >= naive.threshold].mean() < test_ok[kept].mean()


def test_threshold_keeps_the_largest_precise_set_and_can_refuse():
    # sorted by confidence: 10 right, 1 wrong, 9 right, 10 wrong
    conf = np.linspace(1.0, 0.5, 30)
    ok = np.ones(30, dtype=bool)
    ok[10] = False
    ok[20:] = False
    rule = choose_threshold(conf, ok, 0.95, min_count=5, z=0)
    assert rule.val_kept == 20 and rule.val_precision == 0.95  # 19/20, past the dip at 11
    assert rule.threshold == pytest.approx(conf[19])
    assert choose_threshold(conf, ok, 0.96, min_count=5, z=0).val_kept == 10
    assert choose_threshold(conf[::-1], ok[::-1], 0.95, min_count=5) is None  # top 5 all wrong
    # with the lower bound, 10/10 right is not yet proof of 0.95 (bound 0.79)
    assert choose_threshold(conf, ok, 0.95, min_count=5) is None
    assert choose_threshold(conf, ok, 0.75, min_count=5).val_kept == 20  # bound 0.80


def test_precision_curve_groups_ties_and_wilson_bound():
    t, kept, prec = precision_curve([0.9, 0.9, 0.8, 0.7], [True, False, True, True])
    assert t.tolist() == [0.9, 0.8, 0.7] and kept.tolist() == [2, 3, 4]
    assert prec.tolist() == [0.5, 2 / 3, 0.75]
    assert 0.0 < wilson_lower(95, 100) < 0.95 < wilson_lower(990, 1000)
    assert wilson_lower(95, 100, z=0) == pytest.approx(0.95)


def test_uncalibrated_model_refuses_a_precision_target(tmp_path_factory, tmp_path):
    from test_serve_helpers import PHOTOS, tiny_bundle

    from carclf.pseudo import pseudo_label

    bundle = tiny_bundle(tmp_path_factory, onnx=False)  # temperature never fitted
    with pytest.raises(ModelError, match="no fitted temperature"):
        pseudo_label(bundle, PHOTOS, tmp_path / "p.csv", min_precision=0.95)
    res = pseudo_label(
        bundle, PHOTOS, tmp_path / "p.csv", min_precision=None, min_confidence=0.0, tta="none",
        num_workers=0,
    )  # fmt: skip
    assert res.kept == res.total > 10 and (tmp_path / "p.csv").is_file()
