"""Label doctor: rank the labelled photos whose given label is probably wrong, before training.

    python -m carclf.inspect.doctor PATH [--out DIR] [--folds 5] [--review]
    carclf doctor PATH [--out DIR] [--review]

How: every labelled photo goes once through a frozen pretrained backbone (the offline Lite2 at
its native 260 px by default), seen plain and mirrored, the two views' globally pooled features
averaged (cached in ``DIR``). A logistic regression on those features is fitted ``folds`` times,
each time predicting the fold it did not see, so every photo gets *out-of-fold* class
probabilities from a model that never saw its label; its ``C`` is chosen by the same
cross-validation (:mod:`carclf.inspect.doctor_oof`). A class with fewer photos than folds means
fewer folds, and a message saying so. cleanlab's label-quality score (self-confidence: the
out-of-fold probability of the given label; lower = more suspicious) ranks the photos, and the
doctor flags those under ``max_score``, by default half the chance probability, ``0.5 / K`` for
``K`` classes (1% for 49): fixed a priori, it flags a photo when the model that never saw its
label gives that label less than half the share a blind guess would, and it scales with the
classes (a fixed 1% found 14-28% of the flips on 10 classes, half chance 52-66%, BENCHMARKS.md),
each with the class the model suggests.

cleanlab's own filter (``find_label_issues``: flag what the estimated joint of given and true
labels says is off-diagonal) is available as ``cleanlab_filter=True`` but off by default:
measured on stanford-cars-dev with 5% of the labels flipped, it finds only 62-80% of the flips
on its own, and added to the 1% cut it lowers recall from 0.75 to 0.52-0.63 for the same
precision. See BENCHMARKS.md for precision and recall at 2%, 5% and 10% noise.

Output: ``label_issues.csv`` (rank, path, id, given and suggested label and name, score,
probability of the suggestion), and a gallery page. ``--review`` then serves a page to keep,
relabel or exclude each flag (:mod:`carclf.inspect.review`), saved to ``decisions.csv`` as each
decision is made; ``train.py data.relabel=DIR/decisions.csv data.exclude=DIR/decisions.csv``
trains with them, and ``data.exclude=DIR/label_issues.csv`` without every flagged photo
(:mod:`carclf.data.exclude`). Needs ``pip install 'carclf[doctor]'`` (cleanlab, scikit-learn).

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
from carclf import io
from carclf.cli import exit_code, main_exit
from carclf.data.layouts import DatasetIndex
from carclf.data.thumbs import Thumbnails
from carclf.inspect.dataset import dataset_parser, read_for_report
from carclf.inspect.doctor_oof import C_GRID, DoctorError, fold_count, out_of_fold_probs
from carclf.inspect.features import VIEWS, native_size, pooled_features

log = logging.getLogger(__name__)

ISSUES_FILE = "label_issues.csv"
GALLERY_SHOWN = 40
NEIGHBOURS = 3  # photos of the given and of the suggested class beside each flagged one
DEFAULTS = {
    "backbone": "tf_efficientnet_lite2",
    "weights": "auto",
    "image_size": None,  # the backbone's native size (260 px for Lite2)
    "views": ("plain", "flip"),
    "folds": 5,
    "max_score": None,  # half the chance probability: 0.5 / classes (1% for 49 classes)
    "cleanlab_filter": False,
}
__all__ = ["DoctorError", "DoctorResult", "diagnose", "gallery_html", "main", "write_issues"]


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
    C: float = 0.0  # the logistic regression's C, chosen by cross-validation
    note: str | None = None  # e.g. fewer folds than asked for

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
            "C": self.C,
            "note": self.note,
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


def flag_rule(labels, probs, max_score: float, cleanlab_filter: bool = False):
    """The flagged rows, most suspicious first, and every row's score (see the module doc)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    scores = get_label_quality_scores(labels, probs)  # self-confidence: p(given label)
    flag = scores < max_score
    if cleanlab_filter:
        # n_jobs=1: cleanlab's default forks a process pool, and a fork of a process that has
        # run torch's thread pools can deadlock (it hung the test suite).
        flag &= find_label_issues(labels, probs, n_jobs=1)
    flagged = np.flatnonzero(flag)
    return flagged[np.argsort(scores[flagged], kind="stable")], scores


def diagnose(
    index: DatasetIndex,
    *,
    backbone: str = DEFAULTS["backbone"],
    weights: str = DEFAULTS["weights"],
    image_size: int | None = DEFAULTS["image_size"],
    views: tuple[str, ...] = DEFAULTS["views"],
    folds: int = DEFAULTS["folds"],
    C: float | tuple[float, ...] = C_GRID,
    max_score: float | None = DEFAULTS["max_score"],
    cleanlab_filter: bool = DEFAULTS["cleanlab_filter"],
    seed: int = 0,
    num_workers: int = 2,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> DoctorResult:
    """Flag the labelled photos of ``index`` whose label is likely wrong (see the module doc)."""
    _require()
    counts = index.train["label"].value_counts()
    names = {index.class_names[k]: int(counts.get(k, 0)) for k in range(index.num_classes)}
    folds, note = fold_count(names, folds, str(index.root))
    if note:
        log.warning(note)
        print(f"warning: {note}", file=sys.stderr, flush=True)
    size = image_size or native_size(backbone)
    t0 = time.perf_counter()
    feats, valid = pooled_features(
        index.train["path"].tolist(), backbone, weights, size, views=tuple(views),
        num_workers=num_workers, cache_dir=cache_dir, progress=progress,
    )  # fmt: skip
    feature_seconds = time.perf_counter() - t0
    keep = np.flatnonzero(valid)
    rows = index.train.iloc[keep].reset_index(drop=True)
    labels = rows["label"].to_numpy()
    t0 = time.perf_counter()
    probs, best_c, _ = out_of_fold_probs(feats[keep], labels, index.num_classes, folds, seed, C)
    cut = max_score if max_score is not None else 0.5 / index.num_classes
    flagged, scores = flag_rule(labels, probs, cut, cleanlab_filter)
    return DoctorResult(
        _issues_table(index, rows, probs, scores, flagged),
        rows["path"].tolist(),
        labels,
        probs,
        folds,
        f"{backbone} {size} px ({'+'.join(views)})",
        feature_seconds,
        time.perf_counter() - t0,
        best_c,
        note,
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
        f"{H.esc(result.backbone)} features ({result.folds} folds, C = {result.C:g} by "
        f"cross-validation; out-of-fold accuracy {s['oof_accuracy']:.3f}), ranked by cleanlab's "
        "label-quality score: the out-of-fold probability of the given label (lower = more "
        f"suspicious). The full list is in {ISSUES_FILE}. Review them one by one (keep / relabel "
        "/ exclude) with <code>carclf doctor PATH --review</code>, or train without them all "
        f"with <code>data.exclude={ISSUES_FILE}</code>. Look before you exclude: some flags are "
        "hard photos, not wrong labels.</p>"
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
    d = DEFAULTS
    parser.add_argument("--folds", type=int, default=d["folds"])
    parser.add_argument(
        "--max-score",
        type=float,
        default=d["max_score"],
        help="flag only photos whose given label has an out-of-fold probability under this "
        "(default: 0.5 / number of classes)",
    )
    parser.add_argument("--backbone", default=d["backbone"])
    parser.add_argument("--image-size", type=int, default=d["image_size"],
                        help="default: the backbone's native size")  # fmt: skip
    parser.add_argument("--views", default="+".join(d["views"]),
                        help="feature views averaged, + separated: plain, flip, crop")  # fmt: skip
    parser.add_argument("--review", action="store_true",
                        help="then serve the review page (keep / relabel / exclude each flag) "
                        "on the flags in --out (diagnosing first when there are none)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    return exit_code(lambda: _doctor(args))


def _doctor(args) -> int:
    out = Path(args.out)
    created = not out.exists()
    try:
        index, notes = read_for_report(args.path, args.layout, args.class_map)
        if index.num_classes < 2:
            raise DoctorError(notes[-1] if notes else "the label doctor needs labelled photos")
        if not (args.review and (out / ISSUES_FILE).is_file()):
            _diagnose_into(args, index, out)
        elif args.review:
            print(f"label doctor: reviewing the flags in {out / ISSUES_FILE} (run without "
                  "--review, or delete it, to diagnose again)", flush=True)  # fmt: skip
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a refused run leaves no empty --out behind
        raise
    if args.review:
        from carclf.inspect import review

        issues = review.read_issues(out / ISSUES_FILE, index)
        app = review.review_app(issues, index, out / review.DECISIONS_FILE, str(index.root))
        review.serve(app, args.host, args.port)
    return 0


def _diagnose_into(args, index: DatasetIndex, out: Path) -> None:
    views = tuple(v for v in args.views.split("+") if v)
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise DoctorError(f"--views {args.views}: choose from {'+'.join(VIEWS)}")
    out.mkdir(parents=True, exist_ok=True)
    result = diagnose(
        index,
        backbone=args.backbone,
        image_size=args.image_size,
        views=views,
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
        f"folds {s['fit_seconds']:.0f} s)\n  {csv}\n  {out / 'label_issues.html'}\n"
        f"  review them: carclf doctor {args.path} --out {out} --review",
        flush=True,
    )


if __name__ == "__main__":
    main_exit(main)
