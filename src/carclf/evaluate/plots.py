"""Figures of the evaluation report, rendered with matplotlib's Agg backend to PNG bytes.

PNG bytes rather than files: the HTML report embeds them (one self-contained file to mail or
attach to a ticket), and the caller also writes them next to it.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from carclf.data.images import load_rgb  # noqa: E402
from carclf.errors import ImageDecodeError  # noqa: E402
from carclf.evaluate.calibration import ReliabilityBins  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _clip(text: str, width: int = 44) -> str:
    # Not textwrap.shorten: it drops whole words, and "Audi_S4_Sedan_2012" is one word.
    return text if len(text) <= width else text[: width - 1] + "…"


def confusion_png(cm: np.ndarray, names: Sequence[str]) -> bytes:
    """Rows = true class, columns = predicted; colour = share of the row (recall on the diagonal),
    numbers = counts (for up to 30 classes; beyond that they would not be legible)."""
    k = len(names)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    side = min(max(6.0, 0.3 * k + 3.0), 24.0)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="share of the true class")
    font = 9 if k <= 15 else (7 if k <= 30 else 6)
    ticks = [_clip(f"{i}: {n}") for i, n in enumerate(names)]
    ax.set_xticks(range(k), ticks, rotation=90, fontsize=font)
    ax.set_yticks(range(k), ticks, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 30:
        for i, j in zip(*np.nonzero(cm), strict=True):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=font,
                color="white" if share[i, j] > 0.5 else "black",
            )
    ax.set_title(f"Confusion matrix ({int(cm.sum())} images, {k} classes)")
    return _png(fig)


def reliability_png(panels: Sequence[tuple[str, ReliabilityBins]]) -> bytes:
    """One reliability diagram per (title, bins): accuracy per confidence bin against the
    diagonal of perfect calibration; the red part of a bar is the gap the ECE averages."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 5.0), squeeze=False)
    fig.subplots_adjust(wspace=0.45)
    for ax, (title, bins) in zip(axes[0], panels, strict=True):
        width = bins.upper - bins.lower
        used = bins.count > 0
        acc = np.where(used, bins.accuracy, 0.0)
        conf = np.where(used, bins.confidence, 0.0)
        ax.bar(bins.lower, acc, width=width, align="edge", color="#4c72b0", edgecolor="white")
        ax.bar(
            bins.lower[used],
            (conf - acc)[used],
            bottom=acc[used],
            width=width[used],
            align="edge",
            color="#dd4444",
            alpha=0.35,
            edgecolor="#dd4444",
            label="gap to calibration",
        )
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="accuracy")
        ax.set_title(f"{title}: ECE {bins.ece:.3f}")
        ax.legend(loc="upper left", fontsize=8)
        twin = ax.twinx()
        twin.plot(bins.lower + width / 2, bins.count, "o-", color="#55a868", ms=3, lw=1)
        twin.set_ylabel("images per bin", color="#55a868")
        twin.set_ylim(0, max(1, bins.count.max()) * 3)
    return _png(fig)


@dataclass
class GalleryItem:
    path: str
    true_name: str
    pred_name: str
    confidence: float


def _thumbnail(path: str, size: int = 200) -> np.ndarray:
    try:
        img = Image.fromarray(load_rgb(path))
    except ImageDecodeError:
        return np.full((size, size, 3), 200, dtype=np.uint8)
    img.thumbnail((size, size))
    return np.asarray(img)


def gallery_png(items: Sequence[GalleryItem], columns: int = 4) -> bytes:
    """Thumbnails of mistakes, each titled with the true and the predicted class."""
    if not items:
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=14)
        return _png(fig)
    cols = min(columns, len(items))
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items, strict=False):
        ax.imshow(_thumbnail(item.path))
        title = "\n".join(
            textwrap.wrap(f"true: {item.true_name}", 40, subsequent_indent="  ")
            + textwrap.wrap(
                f"pred: {item.pred_name} ({item.confidence:.0%})", 40, subsequent_indent="  "
            )
        )
        ax.set_title(title, fontsize=8, loc="left")
    fig.suptitle("Most confident mistakes", fontsize=12)
    fig.tight_layout()
    return _png(fig)
