"""Which confidence makes a pseudo-label precise enough: chosen on held-out labelled photos.

On the validation split (labels known, never trained on) every photo has a calibrated confidence
``c`` (the top probability after TTA and temperature) and is either right or wrong. Keeping the
photos with ``c >= t`` gives a precision ``P(t)`` (share right among those kept) and a coverage.
The threshold is the *lowest* ``t`` (most photos kept, at least ``min_count``) whose kept set is
at least ``target`` precise; unlabelled photos are then kept where ``c >= t``. The promise is
about the kept set as a whole, which is what training on it sees.

"At least ``target`` precise" means the one-sided Wilson lower bound of ``P(t)`` (``z = 1.645``,
95% confidence), not the point estimate: the lowest cut whose *estimate* crosses the target is
systematically a lucky one (on a synthetic, perfectly calibrated case the point estimate with a
0.95 target gave 0.933 on new photos; the bound keeps it above). A small validation split
therefore yields a stricter cut, never a broken promise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Threshold:
    """The chosen cut and what it did on the validation photos."""

    threshold: float
    target: float
    val_kept: int
    val_total: int
    val_precision: float
    val_precision_low: float  # the Wilson lower bound the cut was chosen on

    @property
    def val_coverage(self) -> float:
        return self.val_kept / self.val_total if self.val_total else 0.0

    def describe(self) -> str:
        return (
            f"threshold {self.threshold:.4f}: on the {self.val_total} validation photos it keeps "
            f"{self.val_kept} ({self.val_coverage:.0%}) with precision {self.val_precision:.3f} "
            f"(lower bound {self.val_precision_low:.3f}; target {self.target})"
        )


def wilson_lower(correct: int, n: int, z: float = 1.645) -> float:
    """Lower end of the Wilson score interval for a proportion ``correct / n``."""
    if n == 0:
        return 0.0
    p = correct / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z * z / n))


def precision_curve(confidence, correct) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds descending, photos kept, precision) for every distinct confidence."""
    c = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if c.shape != ok.shape or c.ndim != 1:
        raise ValueError("confidence and correct must be 1-D arrays of the same length")
    order = np.argsort(-c, kind="stable")
    c, ok = c[order], ok[order]
    hits = np.cumsum(ok)
    last = np.r_[np.flatnonzero(np.diff(c) != 0), len(c) - 1]  # last index of each tie group
    kept = last + 1
    return c[last], kept, hits[last] / kept


def choose_threshold(
    confidence, correct, target: float, min_count: int = 10, z: float = 1.645
) -> Threshold | None:
    """The lowest confidence whose kept photos (at least ``min_count``) are at least ``target``
    precise (Wilson lower bound at ``z``; ``z=0``: the point estimate); None if no cut is."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target}")
    thresholds, kept, precision = precision_curve(confidence, correct)
    n = len(np.asarray(confidence))
    eligible = kept >= min(min_count, n)
    hits = np.rint(precision * kept).astype(int)
    good = [
        j
        for j in np.flatnonzero(eligible)
        if wilson_lower(int(hits[j]), int(kept[j]), z) >= target - 1e-12
    ]
    if not good:
        return None
    chosen = good[-1]
    return Threshold(
        threshold=float(thresholds[chosen]),
        target=target,
        val_kept=int(kept[chosen]),
        val_total=n,
        val_precision=float(precision[chosen]),
        val_precision_low=wilson_lower(int(hits[chosen]), int(kept[chosen]), z),
    )
