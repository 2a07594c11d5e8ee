"""Stratified, seeded splits: one train/val split, or k folds (every class spread evenly)."""

from __future__ import annotations

import numpy as np


def kfold_indices(labels, k: int = 5, seed: int = 0) -> list[np.ndarray]:
    """``k`` disjoint index arrays covering ``labels``, each holding ~1/k of every class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        for j, i in enumerate(idx):
            folds[(j + offset) % k].append(int(i))
        offset += len(idx)  # rotate so small classes do not all land in fold 0
    return [np.sort(np.array(f, dtype=int)) for f in folds]


def stratified_split(
    labels, val_fraction: float = 0.15, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices); every class with 2+ images keeps at least one in train and
    puts ``round(n * val_fraction)`` (at least one) in val."""
    labels = np.asarray(labels)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = (
            0
            if val_fraction == 0 or len(idx) < 2
            else min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        )
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return np.sort(np.array(train, dtype=int)), np.sort(np.array(val, dtype=int))


def fold_split(labels, fold: int, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices) with fold ``fold`` of ``k`` as validation."""
    folds = kfold_indices(labels, k, seed)
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1}, got {fold}")
    val = folds[fold]
    train = np.sort(np.concatenate([f for j, f in enumerate(folds) if j != fold]))
    return train, val
