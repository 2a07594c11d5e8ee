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
from carclf.inference.calibration import ReliabilityBins  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _clip(text: str, width: int = 44) -> str:
    # Not textwrap.shorten: it drops whole words, and "Audi_S4_Sedan_2012" is one word.
    return text if len(text) <= width else text[: width - 1] + "…"


def confusion_png(cm: np.ndarray, names: Sequence[str]) -> bytes:
    """Rows = true class, columns = predicted; colour = share of the row (recall on the diagonal).

    Up to 20 classes, both axes carry names and cells their counts; beyond that the columns are
    numbered (the rows say which number is which) so 50 classes still fit a page legibly.
    """
    k = len(names)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    few = k <= 20
    cell = 0.45 if few else 0.19
    side = max(4.0, cell * k)
    fig, ax = plt.subplots(figsize=(side + 3.5, side + (3.0 if few else 1.0)))
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02, label="share of the true class")
    font = 9 if few else 7
    ax.set_yticks(range(k), [_clip(f"{i}: {n}") for i, n in enumerate(names)], fontsize=font)
    if few:
        ax.set_xticks(range(k), [_clip(f"{i}: {n}") for i, n in enumerate(names)], rotation=90)
        ax.tick_params(axis="x", labelsize=font)
        for i, j in zip(*np.nonzero(cm), strict=True):
            white = share[i, j] > 0.5
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=font,
                    color="white" if white else "black")  # fmt: skip
    else:
        ax.set_xticks(range(k), [str(i) for i in range(k)], rotation=90, fontsize=font - 1)
    ax.set_xlabel("predicted class" + ("" if few else " (number as in the rows)"))
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix ({int(cm.sum())} images, {k} classes)")
    return _png(fig)


def reliability_png(panels: Sequence[tuple[str, ReliabilityBins]]) -> bytes:
    """One reliability diagram per (title, bins): accuracy per confidence bin against the
    diagonal of perfect calibration. The hatched red box spans accuracy to mean confidence,
    the gap the ECE averages: above a bar the model is over-confident, inside it under-confident.
    """
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
            fill=False,
            hatch="///",
            edgecolor="#cc2222",
            linewidth=0.8,
            label="gap: accuracy to mean confidence",
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


def _thumbnail(path: str, box: tuple[int, int] = (240, 180)) -> np.ndarray:
    """The photo fitted into a fixed white box, so every tile of the gallery lines up."""
    canvas = Image.new("RGB", box, (255, 255, 255))
    try:
        img = Image.fromarray(load_rgb(path))
    except ImageDecodeError:
        return np.asarray(Image.new("RGB", box, (200, 200, 200)))
    img.thumbnail(box)
    canvas.paste(img, ((box[0] - img.width) // 2, (box[1] - img.height) // 2))
    return np.asarray(canvas)


def gallery_png(items: Sequence[GalleryItem], columns: int = 4) -> bytes:
    """Thumbnails of mistakes, each titled with the true and the predicted class.

    Tiles are placed at fixed positions (not by tight_layout, which lets titles of one row run
    into the pictures of the row above): 4:3 picture boxes with room for four lines of text.
    """
    if not items:
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=14)
        return _png(fig)
    cols = min(columns, len(items))
    rows = -(-len(items) // cols)
    tile, pic_w, text_h, top = 3.3, 3.1, 0.95, 0.5
    pic_h = pic_w * 0.75
    width, height = cols * tile, rows * (pic_h + text_h) + top
    fig = plt.figure(figsize=(width, height))
    for k, item in enumerate(items):
        r, c = divmod(k, cols)
        bottom = height - top - (r + 1) * (pic_h + text_h)
        ax = fig.add_axes((c * tile / width, bottom / height, pic_w / width, pic_h / height))
        ax.imshow(_thumbnail(item.path), aspect="auto")
        ax.axis("off")
        lines = textwrap.wrap(f"true: {item.true_name}", 34, subsequent_indent="  ")
        pred = f"pred: {item.pred_name} ({item.confidence:.0%})"
        lines += textwrap.wrap(pred, 34, subsequent_indent="  ")
        ax.set_title("\n".join(lines[:5]), fontsize=9, loc="left")
    fig.suptitle("Most confident mistakes", fontsize=12, y=1 - 0.15 / height)
    return _png(fig)
