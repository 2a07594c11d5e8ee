"""Stratified splits and k folds: seeded, disjoint, every class represented."""

import numpy as np
import pytest

from carclf.data.split import fold_split, kfold_indices, stratified_split


def test_stratified_split_is_seeded_disjoint_and_balanced():
    labels = np.repeat(np.arange(5), [20, 10, 7, 3, 1])
    tr, va = stratified_split(labels, 0.2, seed=3)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == len(labels)
    counts = np.bincount(labels[va], minlength=5)
    assert counts.tolist() == [4, 2, 1, 1, 0]  # a singleton class stays in train
    assert np.array_equal(stratified_split(labels, 0.2, seed=3)[1], va)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=4)[1], va)
    assert len(stratified_split(labels, 0.0)[1]) == 0
    with pytest.raises(ValueError):
        stratified_split(labels, 1.0)


def test_kfold_covers_everything_once():
    labels = np.repeat(np.arange(4), [10, 9, 5, 2])
    folds = kfold_indices(labels, 5, seed=0)
    allidx = np.concatenate(folds)
    assert sorted(allidx.tolist()) == list(range(len(labels)))
    for c in range(4):
        per_fold = [int((labels[f] == c).sum()) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1
    tr, va = fold_split(labels, 2, 5, seed=0)
    assert np.array_equal(va, folds[2]) and set(tr).isdisjoint(va)
