"""Label doctor: rank the labelled photos whose given label is probably wrong, before training.

    python -m carclf.inspect.doctor PATH [--out DIR] [--folds 5]

How: every labelled photo goes once through a frozen pretrained backbone (the offline Lite0 by
default; globally pooled features, cached in ``DIR``); a logistic regression on those features is
fitted ``folds`` times, each time predicting the fold it did not see, so every photo gets
*out-of-fold* class probabilities from a model that never saw its label. Confident learning
(``cleanlab.filter.find_label_issues``: estimate the joint of given and true labels from
per-class confidence thresholds, then flag the photos that joint says are off-diagonal) turns
those probabilities into a list of likely label errors, ranked by cleanlab's self-confidence
score (the out-of-fold probability of the given label; lower = more suspicious) and each with
the class the model suggests.

A cheap frozen-feature model confuses look-alike classes (two Audi coupes), and confident
learning counts those confusions as label issues too: on stanford-cars-dev with 5% of the labels
flipped it flags 3.5 times as many photos as were flipped (precision 0.21). The doctor therefore
keeps only the flags whose given label the model finds implausible, an out-of-fold probability
under ``max_score`` (1%, see BENCHMARKS.md for the trade-off); ``max_score=1`` keeps them all.

Output: ``label_issues.csv`` (rank, path, id, given and suggested label and name, score,
probability of the suggestion), and a gallery page. ``train.py data.exclude=DIR/label_issues.csv``
trains without the flagged photos (:mod:`carclf.data.exclude`). Needs ``pip install
'carclf[doctor]'`` (cleanlab, scikit-learn).

The features come from :mod:`carclf.inspect.features` (a backbone from :mod:`carclf.models`: the
inspection app sits above the data and model layers).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from carclf import html as H
from carclf import io, phases
from carclf.cli import exit_code, main_exit
from carclf.data.layouts import DatasetIndex
from carclf.data.thumbs import Thumbnails
from carclf.errors import CarclfError
from carclf.inspect.dataset import dataset_parser, read_for_report
from carclf.inspect.features import pooled_features

log = logging.getLogger(__name__)

ISSUES_FILE = "label_issues.csv"
GALLERY_SHOWN = 40
NEIGHBOURS = 3  # photos of the given and of the suggested class beside each flagged one


class DoctorError(CarclfError):
    """The label doctor cannot run on this dataset (too few photos per class, missing extra)."""


@dataclass
class DoctorResult:
    """Out-of-fold probabilities and the flagged photos, most suspicious first."""

    issues: pd.DataFrame  # rank, path, id, given_*, suggested_*, score, suggested_prob
    paths: list[str]
    labels: np.ndarray
    pred_probs: np.ndarray
    folds: int
    backbone: str
    feature_seconds: float
    fit_seconds: float

    @property
    def oof_accuracy(self) -> float:
        return float((self.pred_probs.argmax(1) == self.labels).mean())

    def summary(self) -> dict:
        return {
            "photos": len(self.paths),
            "flagged": len(self.issues),
            "flagged_share": round(len(self.issues) / max(len(self.paths), 1), 4),
            "folds": self.folds,
            "backbone": self.backbone,
            "oof_accuracy": round(self.oof_accuracy, 4),
            "feature_seconds": round(self.feature_seconds, 1),
            "fit_seconds": round(self.fit_seconds, 1),
            "issues": self.issues.head(200).to_dict("records"),
        }


def _require():
    try:
        import cleanlab  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as e:
        raise DoctorError(
            f"the label doctor needs {e.name}: pip install 'carclf[doctor]'"
        ) from None


# -- the diagnosis ----------------------------------------------------------------------------


def out_of_fold_probs(
    features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int, seed: int, C: float
) -> np.ndarray:
    """Class probabilities of each row from a logistic regression that did not see it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probs = np.zeros((len(labels), num_classes), dtype=np.float64)
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    desc = f"label doctor: {folds} folds of a logistic regression"
    for fit_idx, held_idx in phases.track(split.split(features, labels), desc, folds, "fold"):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        clf.fit(features[fit_idx], labels[fit_idx])
        probs[np.ix_(held_idx, clf.classes_)] = clf.predict_proba(features[held_idx])
    return probs


def _check_classes(index: DatasetIndex, folds: int) -> None:
    """A DoctorError unless every one of at least 2 classes has a photo for each fold."""
    if index.num_classes < 2:
        raise DoctorError(f"{index.root}: the label doctor needs at least 2 classes")
    if folds < 2:
        raise DoctorError(f"folds={folds}: the label doctor needs at least 2 folds")
    counts = index.train["label"].value_counts()
    small = [
        f"{index.class_names[k]!r} ({counts.get(k, 0)})"
        for k in range(index.num_classes)
        if counts.get(k, 0) < folds
    ]
    if small:
        raise DoctorError(
            f"{index.root}: {len(small)} class(es) have fewer labelled photos than the {folds} "
            f"folds of the label doctor: {', '.join(small[:10])}"
            + (" ..." if len(small) > 10 else "")
            + "; add photos, or use fewer folds (--folds 3)"
        )


def _issues_table(
    index: DatasetIndex, rows: pd.DataFrame, probs: np.ndarray, scores: np.ndarray, flagged
) -> pd.DataFrame:
    """The flagged rows (most suspicious first) as label_issues.csv's table."""
    labels = rows["label"].to_numpy()
    suggested = probs.argmax(1)
    values = index.label_values
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(flagged) + 1),
            "path": rows["path"].to_numpy()[flagged],
            "id": rows["id"].to_numpy()[flagged],
            "given_label": [values[k] for k in labels[flagged]],
            "given_name": [index.class_names[k] for k in labels[flagged]],
            "suggested_label": [values[k] for k in suggested[flagged]],
            "suggested_name": [index.class_names[k] for k in suggested[flagged]],
            "score": np.round(scores[flagged], 4),
            "suggested_prob": np.round(probs[flagged, suggested[flagged]], 4),
        }
    )


def diagnose(
    index: DatasetIndex,
    *,
    backbone: str = "tf_efficientnet_lite0",
    weights: str = "auto",
    image_size: int = 224,
    folds: int = 5,
    C: float = 0.1,
    max_score: float = 0.01,
    seed: int = 0,
    num_workers: int = 2,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> DoctorResult:
    """Flag the labelled photos of ``index`` whose label is likely wrong (see the module doc)."""
    _require()
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    _check_classes(index, folds)
    t0 = time.perf_counter()
    feats, valid = pooled_features(
        index.train["path"].tolist(),
        backbone,
        weights,
        image_size,
        num_workers=num_workers,
        cache_dir=cache_dir,
        progress=progress,
    )
    feature_seconds = time.perf_counter() - t0
    keep = np.flatnonzero(valid)
    rows = index.train.iloc[keep].reset_index(drop=True)
    labels = rows["label"].to_numpy()
    t0 = time.perf_counter()
    probs = out_of_fold_probs(feats[keep], labels, index.num_classes, folds, seed, C)
    # n_jobs=1: cleanlab's default forks a process pool, and a fork of a process that has run
    # torch's thread pools can deadlock (it hung the test suite); the work is seconds anyway.
    issue = find_label_issues(labels, probs, n_jobs=1)
    scores = get_label_quality_scores(labels, probs)
    flagged = np.flatnonzero(issue & (scores < max_score))
    flagged = flagged[np.argsort(scores[flagged], kind="stable")]
    fit_seconds = time.perf_counter() - t0
    return DoctorResult(
        _issues_table(index, rows, probs, scores, flagged),
        rows["path"].tolist(),
        labels,
        probs,
        folds,
        backbone,
        feature_seconds,
        fit_seconds,
    )


def write_issues(result: DoctorResult, path: str | Path) -> Path:
    """``label_issues.csv``, written atomically (usable as ``data.exclude``)."""
    with io.atomic_path(path) as tmp:
        result.issues.to_csv(tmp, index=False)
    return Path(path)


# -- the gallery ------------------------------------------------------------------------------


def gallery_html(result: DoctorResult, index: DatasetIndex, thumbs=None) -> str:
    """Each flagged photo with its given and suggested class, and a few photos of both beside."""
    s = result.summary()
    head = (
        f"<p>{s['flagged']} of {s['photos']} labelled photos ({100 * s['flagged_share']:.1f}%) "
        f"are probably mislabelled. Out-of-fold probabilities from a logistic regression on frozen "
        f"{H.esc(result.backbone)} features ({result.folds} folds; out-of-fold accuracy "
        f"{s['oof_accuracy']:.3f}), then confident learning (cleanlab). Score: the out-of-fold "
        "probability of the given label (lower = more suspicious). The full list is in "
        f"{ISSUES_FILE}; train without them with <code>data.exclude={ISSUES_FILE}</code>. "
        "Look before you exclude: some flags are hard photos, not wrong labels.</p>"
    )
    if s["oof_accuracy"] < 0.5:  # e.g. a handful of photos per class: the flags are noise
        head += (
            f'<p class="card warn">The cheap model is right on only {s["oof_accuracy"]:.0%} of '
            "the photos it did not see, so these flags say little: the doctor needs more photos "
            "per class (dozens) to tell a wrong label from a hard photo.</p>"
        )
    if result.issues.empty or thumbs is None:
        return head
    flagged = set(result.issues["path"])
    by_class: dict[str, list[str]] = {}
    for p, k in zip(result.paths, result.labels, strict=True):
        if p not in flagged:
            by_class.setdefault(index.class_names[k], []).append(p)
    shown = result.issues.head(GALLERY_SHOWN)
    neighbours = {n: by_class.get(n, [])[:NEIGHBOURS] for n in shown["given_name"]}
    neighbours |= {n: by_class.get(n, [])[:NEIGHBOURS] for n in shown["suggested_name"]}
    thumbs.want(list(shown["path"]) + [p for ps in neighbours.values() for p in ps])
    out = [head]
    for r in shown.itertuples():
        photo = H.figure(
            thumbs[r.path], f"#{r.rank} {Path(r.path).name} · p(given) {r.score:.4f}", r.path
        )
        given = "".join(H.figure(thumbs[p], Path(p).name) for p in neighbours[r.given_name])
        sugg = "".join(H.figure(thumbs[p], Path(p).name) for p in neighbours[r.suggested_name])
        out.append(
            '<div class="pair issue">'
            f'<div class="side">{photo}</div>'
            f'<div class="side"><b>given: {H.esc(r.given_name)}</b><br>{given}</div>'
            f'<div class="side"><b>suggested: {H.esc(r.suggested_name)}</b> '
            f"(p = {r.suggested_prob:.2f})<br>{sugg}</div></div>"
        )
    if len(result.issues) > len(shown):
        out.append(
            f'<p class="note">... and {len(result.issues) - len(shown)} more in {ISSUES_FILE}.</p>'
        )
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = dataset_parser("carclf doctor", __doc__.splitlines()[0], "outputs/label-doctor")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--max-score",
        type=float,
        default=0.01,
        help="flag only photos whose given label has an out-of-fold probability under this",
    )
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    return exit_code(lambda: _doctor(args))


def _doctor(args) -> int:
    out = Path(args.out)
    created = not out.exists()
    try:
        return _diagnose_into(args, out)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a refused run leaves no empty --out behind
        raise


def _diagnose_into(args, out: Path) -> int:
    index, notes = read_for_report(args.path, args.layout, args.class_map)
    if index.num_classes < 2:
        raise DoctorError(notes[-1] if notes else "the label doctor needs labelled photos")
    out.mkdir(parents=True, exist_ok=True)
    result = diagnose(
        index,
        backbone=args.backbone,
        image_size=args.image_size,
        folds=args.folds,
        max_score=args.max_score,
        cache_dir=out,
        progress=sys.stderr.isatty(),
    )
    csv = write_issues(result, out / ISSUES_FILE)
    page = H.page(
        "carclf label doctor",
        f"{index.root}. Written {time.strftime('%Y-%m-%d %H:%M')}.",
        [("doctor", "Likely mislabelled photos", gallery_html(result, index, Thumbnails()))],
    )
    io.write_text(out / "label_issues.html", page)
    s = result.summary()
    print(
        f"label doctor: {s['flagged']} of {s['photos']} labelled photos flagged "
        f"(out-of-fold accuracy {s['oof_accuracy']:.3f}; features {s['feature_seconds']:.0f} s, "
        f"folds {s['fit_seconds']:.0f} s)\n  {csv}\n  {out / 'label_issues.html'}"
    )
    return 0


if __name__ == "__main__":
    main_exit(main)
