"""Exact and near duplicates inside train, inside test, and across them (leakage).

A photo in both train and test inflates every score measured on that test set; two copies of a
photo inside train give it double weight and, with different labels, teach the model nothing.
Exact duplicates share their bytes (MD5). Near duplicates (resized, re-encoded, slightly cropped
copies) have perceptual hashes a few bits apart: the distance of a pair is the Hamming distance of
the phash plus that of the dhash (128 bits in all, see :mod:`carclf.data.facts`).

Measured on stanford-cars-dev: among 682 of its photos no two distinct ones came closer than 21
bits (and the whole set of 2,045 has no pair within 16); a half-size or quality-30 copy moved the
phash alone by at most 4 bits; a copy cropped by 2% per side came within 14 bits for 9 in 10
photos (19 at most; 3% crops: median 15, so about half are found). ``NEAR_DISTANCE`` sits between.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

NEAR_DISTANCE = 16
_CHUNK = 2048


@dataclass
class DuplicatePair:
    a: str
    b: str
    scope: str  # train | test | train/test (leakage)
    distance: int  # 0 for identical bytes
    exact: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    return np.unpackbits(x[..., None].view(np.uint8), axis=-1).sum(-1)


def _scope(split_a: str, split_b: str) -> str:
    return split_a if split_a == split_b else "train/test"


def exact_pairs(paths: list[str], md5s: list[str], splits: list[str]) -> list[DuplicatePair]:
    """One pair per extra copy: each copy is paired with the first file of its MD5 group."""
    first: dict[str, int] = {}
    pairs = []
    for i, h in enumerate(md5s):
        if h in first:
            j = first[h]
            pairs.append(DuplicatePair(paths[j], paths[i], _scope(splits[j], splits[i]), 0, True))
        else:
            first[h] = i
    return pairs


def near_pairs(
    paths: list[str],
    md5s: list[str],
    splits: list[str],
    phash: np.ndarray,
    dhash: np.ndarray,
    max_distance: int = NEAR_DISTANCE,
) -> list[DuplicatePair]:
    """Pairs of different files whose hashes are within ``max_distance`` bits (exact ones left
    out: they are reported by :func:`exact_pairs`). Quadratic, in chunks: ~1 s per 10k photos."""
    ph = np.asarray(phash, dtype=np.uint64)
    dh = np.asarray(dhash, dtype=np.uint64)
    pairs = []
    for start in range(0, len(ph), _CHUNK):
        stop = min(start + _CHUNK, len(ph))
        dist = _popcount(ph[start:stop, None] ^ ph[None, :]).astype(np.int16)
        dist += _popcount(dh[start:stop, None] ^ dh[None, :])
        rows, cols = np.nonzero(dist <= max_distance)
        for r, j in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if j <= i or md5s[i] == md5s[j]:
                continue
            pairs.append(
                DuplicatePair(
                    paths[i], paths[j], _scope(splits[i], splits[j]), int(dist[r, j]), False
                )
            )
    return sorted(pairs, key=lambda p: (p.distance, p.a, p.b))
