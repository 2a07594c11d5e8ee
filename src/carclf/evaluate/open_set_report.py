"""The open-set section of the evaluation report: known test photos against photos of other cars.

``predict.py ... evaluate=true unknown=<folder>`` predicts the unknown photos too and scores how
well each open-set score tells them from the labelled (known) ones: the ROC curve, its area
(AUROC), and at the bundle's threshold (fitted to keep ``keep`` of the known *validation*
photos) the share of known test photos kept, the share of unknown photos wrongly accepted (false
positive rate) and the accuracy on the kept known photos. The maths is
:mod:`carclf.inference.open_set`; this module only measures, draws and writes.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from carclf import html as H  # noqa: E402
from carclf.evaluate.metrics import auroc, roc_curve  # noqa: E402
from carclf.evaluate.plots import _png  # noqa: E402
from carclf.inference.open_set import OpenSet, fit_threshold  # noqa: E402


@dataclass
class Separation:
    """How one score separates known from unknown photos (shares in 0..1)."""

    score: str
    auroc: float
    threshold: float
    known_kept: float  # share of known photos accepted at ``threshold``
    fpr: float  # share of unknown photos accepted at ``threshold``
    fpr_at_95: float  # share of unknown photos accepted where 95% of these known ones are

    def to_dict(self) -> dict:
        return {k: float(v) if k != "score" else v for k, v in self.__dict__.items()}


def separation(name: str, known: np.ndarray, unknown: np.ndarray, threshold: float) -> Separation:
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    t95 = fit_threshold(known, 0.95)
    return Separation(
        score=name,
        auroc=auroc(known, unknown),
        threshold=float(threshold),
        known_kept=float((known >= threshold).mean()),
        fpr=float((unknown >= threshold).mean()),
        fpr_at_95=float((unknown >= t95).mean()),
    )


@dataclass
class OpenSetEvaluation:
    """Every figure of the open-set section (shares in 0..1)."""

    score: str  # the model's default score
    keep: float
    known: int
    unknown: int
    unknown_source: str
    separations: list[Separation]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False, default_factory=dict)
    accuracy_kept: float = float("nan")  # accuracy of the known photos kept by the default score
    accuracy_all: float = float("nan")

    @property
    def default(self) -> Separation:
        return next(s for s in self.separations if s.score == self.score)

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "keep": self.keep,
            "known_photos": self.known,
            "unknown_photos": self.unknown,
            "unknown_source": self.unknown_source,
            "accuracy_kept": self.accuracy_kept,
            "accuracy_all": self.accuracy_all,
            "scores": [s.to_dict() for s in self.separations],
        }


def evaluate_open_set(
    open_set: OpenSet,
    known: dict[str, np.ndarray],
    unknown: dict[str, np.ndarray],
    correct: np.ndarray,
    source: str,
) -> OpenSetEvaluation:
    """Figures per score from the scores of known (labelled) and unknown photos.

    Args:
        known, unknown: score name -> scores (:meth:`OpenSet.scores`) of each set.
        correct: per known photo, whether its top-1 class is right.
    """
    names = [n for n in open_set.names if n in known and n in unknown]
    seps = [separation(n, known[n], unknown[n], open_set.thresholds[n]) for n in names]
    curves = {n: roc_curve(known[n], unknown[n]) for n in names}
    kept = known[open_set.score] >= open_set.threshold
    correct = np.asarray(correct, dtype=bool)
    return OpenSetEvaluation(
        score=open_set.score,
        keep=open_set.keep,
        known=len(correct),
        unknown=len(next(iter(unknown.values()))) if unknown else 0,
        unknown_source=source,
        separations=seps,
        curves=curves,
        accuracy_kept=float(correct[kept].mean()) if kept.any() else float("nan"),
        accuracy_all=float(correct.mean()) if len(correct) else float("nan"),
    )


def roc_png(oe: OpenSetEvaluation) -> bytes:
    """ROC curves of every score, the default bold, its operating point marked."""
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    for sep in oe.separations:
        fpr, tpr = oe.curves[sep.score]
        bold = sep.score == oe.score
        ax.plot(fpr, tpr, lw=2.4 if bold else 1.2, label=f"{sep.score}: AUROC {sep.auroc:.3f}")
    d = oe.default
    ax.plot([d.fpr], [d.known_kept], "o", color="black", label=f"threshold ({oe.score})")
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="unknown photos accepted (false positive rate)")
    ax.set_ylabel("known photos kept (true positive rate)")
    ax.set_title(f"Known vs unknown: {oe.known} vs {oe.unknown} photos")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def section(oe: OpenSetEvaluation, png: bytes) -> tuple[str, str, str]:
    """(id, title, html) of the report section."""
    d = oe.default
    head = (
        "<tr><th>score</th><th>AUROC</th><th>threshold</th><th>known kept</th>"
        "<th>unknown accepted (FPR)</th><th>FPR at 95% known kept</th></tr>"
    )
    rows = "".join(
        f"<tr><td>{html.escape(s.score)}{' (default)' * (s.score == oe.score)}</td>"
        f"<td class=num>{s.auroc:.3f}</td><td class=num>{s.threshold:.4g}</td>"
        f"<td class=num>{s.known_kept:.1%}</td><td class=num>{s.fpr:.1%}</td>"
        f"<td class=num>{s.fpr_at_95:.1%}</td></tr>"
        for s in oe.separations
    )
    text = (
        f"{oe.known} known (labelled) photos against {oe.unknown} photos of other things "
        f"({oe.unknown_source}). The model's threshold was fitted to keep {oe.keep:.0%} of its "
        f"known validation photos; on these photos its {oe.score} score keeps {d.known_kept:.1%} "
        f"of the known ones and wrongly accepts {d.fpr:.1%} of the unknown ones. Accuracy of the "
        f"kept known photos: {oe.accuracy_kept:.1%} (all known photos: {oe.accuracy_all:.1%})."
    )
    cards = "".join(
        [
            H.card(f"{d.auroc:.3f}", f"AUROC ({oe.score})"),
            H.card(f"{d.fpr:.1%}", f"unknown accepted at keep {oe.keep:.0%}"),
            H.card(f"{d.known_kept:.1%}", "known photos kept"),
        ]
    )
    body = (
        f'<div class="cards">{cards}</div><p>{html.escape(text)}</p>'
        f"<table>{head}{rows}</table>{H.img(H.data_uri(png, 'image/png'), 'ROC curves')}"
    )
    return ("open-set", "Unknown photos (open set)", body)
