"""The label doctor's model: out-of-fold class probabilities from frozen features.

Every photo gets probabilities from a classifier that never saw its label: a logistic regression
(on standardised features) fitted ``k`` times, each time on ``k - 1`` folds, predicting the
fold it left out. Its inverse regularisation ``C`` is chosen by the same cross-validation,
with the one-standard-error rule (Breiman et al.; Hastie, Tibshirani & Friedman, 7.10): the
strongest regularisation whose out-of-fold accuracy against the *given* labels is within one
standard error of the best ``C``'s. No knowledge of which labels are wrong goes in. Why the
stronger end: a softer model gives a hard photo of a look-alike class a few percent, not
under 1%, for its given label, while a flipped label stays far below (measured on
stanford-cars-dev, BENCHMARKS.md); the out-of-fold log loss prefers weaker regularisation.
"""

from __future__ import annotations

import logging

import numpy as np

from carclf import phases
from carclf.errors import CarclfError

log = logging.getLogger(__name__)

C_GRID = (0.005, 0.01, 0.02, 0.05)


class DoctorError(CarclfError):
    """The label doctor cannot run on this dataset (too few photos per class, missing extra)."""


def fold_count(counts: dict[str, int], folds: int, where: str) -> tuple[int, str | None]:
    """The folds to use for these photos per class (name -> count), and a note when fewer than
    asked: k folds need k photos of every class, so the smallest class sets the limit."""
    if len(counts) < 2:
        raise DoctorError(f"{where}: the label doctor needs at least 2 classes")
    if folds < 2:
        raise DoctorError(f"folds={folds}: the label doctor needs at least 2 folds")
    tiny = [f"{n!r} ({c})" for n, c in counts.items() if c < 2]
    if tiny:
        raise DoctorError(
            f"{where}: {len(tiny)} class(es) have fewer than 2 labelled photos, so no model "
            f"that has not seen a photo can have seen its class: {', '.join(tiny[:10])}"
            + (" ..." if len(tiny) > 10 else "")
            + "; add photos of them or leave them out"
        )
    smallest = min(counts.values())
    if smallest >= folds:
        return folds, None
    small = [f"{n!r} ({c})" for n, c in counts.items() if c < folds]
    note = (
        f"{where}: {len(small)} class(es) have fewer labelled photos than the {folds} folds "
        f"asked for: {', '.join(small[:10])}{' ...' if len(small) > 10 else ''}; using "
        f"{smallest} folds instead (the doctor is less sure with fewer photos per class)"
    )
    return smallest, note


def _fit_predict(xtr, ytr, xte, C: float, num_classes: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scale = StandardScaler().fit(xtr)
    # tol 1e-3: 4-6 times fewer iterations than the default 1e-4, the same predictions
    clf = LogisticRegression(C=C, max_iter=2000, tol=1e-3).fit(scale.transform(xtr), ytr)
    out = np.zeros((len(xte), num_classes))
    out[:, clf.classes_] = clf.predict_proba(scale.transform(xte))
    return out


def out_of_fold_probs(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    folds: int,
    seed: int,
    C: float | tuple[float, ...] = C_GRID,
) -> tuple[np.ndarray, float, dict[float, float]]:
    """Class probabilities of each row from a logistic regression that did not see it, the ``C``
    used, and the out-of-fold accuracy (against the given labels) of each ``C`` tried."""
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    grid = (C,) if np.isscalar(C) else tuple(C)
    split = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(
        features, labels))  # fmt: skip
    probs = {c: np.zeros((len(labels), num_classes)) for c in grid}
    jobs = [(c, fit, held) for c in grid for fit, held in split]
    desc = f"label doctor: {folds} folds x {len(grid)} C of a logistic regression"
    # One BLAS thread: these are small problems, and threaded BLAS spin-waits on a busy CPU
    # (one fit on stanford-cars-dev: 1.3 s with one thread, 23 s with two at load ~10).
    with threadpool_limits(1):
        for c, fit, held in phases.track(jobs, desc, len(jobs), "fit"):
            probs[c][held] = _fit_predict(
                features[fit], labels[fit], features[held], c, num_classes
            )
    agree = {c: float((p.argmax(1) == labels).mean()) for c, p in probs.items()}
    top = max(agree.values())
    se = float(np.sqrt(top * (1 - top) / len(labels)))
    best = min(c for c in grid if agree[c] >= top - se)  # the strongest within one SE
    log.info("label doctor: out-of-fold accuracy by C %s (SE %.3f): C = %s", agree, se, best)
    return probs[best], best, agree
