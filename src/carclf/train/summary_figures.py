"""Pictures for TensorBoard (:mod:`carclf.train.summaries`), as HxWx3 uint8 arrays.

Photo grids and galleries are drawn with PIL (fast: they are made while training runs); the
charts (confusion matrix, per-class accuracy, calibration) with matplotlib's Agg canvas, without
pyplot, at the end of the run. Text uses matplotlib's DejaVu Sans, which has Cyrillic, so the
competition's Russian class names show as names, not boxes.

The evaluation report draws its own figures (:mod:`carclf.evaluate.plots`): an app never
imports another app, and these are made for a different reader (a run's log, up to ~200 classes).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from carclf.inference.calibration import confidence_bins

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (100, 100, 100)
BAD = (190, 30, 30)


@functools.cache
def font(size: int = 12) -> ImageFont.ImageFont:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        return ImageFont.load_default()


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _fit(text: str, fnt, width: int) -> str:
    """``text`` cut (with an ellipsis) to ``width`` pixels."""
    while text and fnt.getlength(text) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def to_uint8(tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised (3, H, W) tensor back to an HxWx3 uint8 picture."""
    x = tensor.float().numpy().transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return (np.clip(x, 0.0, 1.0) * 255).round().astype(np.uint8)


def photo_grid(
    rows: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str],
    col_labels: Sequence[str] = (),
    tile: int = 128,
) -> np.ndarray:
    """Rows of equally sized pictures, each row named on its left (a class name) and each column
    on top (what the view is)."""
    fnt, small = font(13), font(11)
    label_w, head_h, gap = 170, 18 if col_labels else 0, 4
    cols = max(len(r) for r in rows)
    width = label_w + cols * (tile + gap) + gap
    height = head_h + len(rows) * (tile + gap) + gap
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for c, text in enumerate(col_labels[:cols]):
        x = label_w + gap + c * (tile + gap)
        draw.text((x, 2), _fit(text, small, tile), fill=MUTED, font=small)
    for r, (pics, name) in enumerate(zip(rows, row_labels, strict=True)):
        y = head_h + gap + r * (tile + gap)
        for line, text in enumerate(_wrap(name, fnt, label_w - 8, 4)):
            draw.text((4, y + 4 + 16 * line), text, fill=INK, font=fnt)
        for c, pic in enumerate(pics):
            img = Image.fromarray(pic).resize((tile, tile), Image.BILINEAR)
            canvas.paste(img, (label_w + gap + c * (tile + gap), y))
    return np.asarray(canvas)


def _wrap(text: str, fnt, width: int, lines: int) -> list[str]:
    """Words of ``text`` in at most ``lines`` lines of ``width`` px (names with underscores
    break there too)."""
    words = text.replace("_", "_ ").split()
    out, cur = [], ""
    for w in words:
        trial = f"{cur} {w}".strip() if not cur.endswith("_") else cur + w
        if fnt.getlength(trial) <= width or not cur:
            cur = trial
        else:
            out.append(cur)
            cur = w
    out.append(cur)
    if len(out) > lines:
        out = out[: lines - 1] + [_fit(" ".join(out[lines - 1 :]), fnt, width)]
    return [_fit(line, fnt, width) for line in out]


def gallery(
    items: Sequence[tuple[np.ndarray | None, Sequence[str]]],
    columns: int = 4,
    box: tuple[int, int] = (220, 165),
) -> np.ndarray:
    """Photos, each fitted into ``box`` with its lines of text below (first line in red)."""
    fnt = font(12)
    cols = max(1, min(columns, len(items)))
    rows = max(1, -(-len(items) // cols))
    text_h, gap = 3 * 16 + 6, 8
    cell_w, cell_h = box[0] + gap, box[1] + text_h + gap
    canvas = Image.new("RGB", (cols * cell_w + gap, rows * cell_h + gap), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if not items:
        draw.text((gap, gap), "no mistakes", fill=INK, font=font(16))
    for k, (pic, lines) in enumerate(items):
        r, c = divmod(k, cols)
        x, y = gap + c * cell_w, gap + r * cell_h
        draw.rectangle((x, y, x + box[0] - 1, y + box[1] - 1), fill=(235, 235, 235))
        if pic is not None:
            img = Image.fromarray(pic)
            img.thumbnail(box)
            canvas.paste(img, (x + (box[0] - img.width) // 2, y + (box[1] - img.height) // 2))
        for i, text in enumerate(lines[:3]):
            colour = BAD if i == 1 else INK
            draw.text((x, y + box[1] + 3 + 16 * i), _fit(text, fnt, box[0]), fill=colour, font=fnt)
    return np.asarray(canvas)


# -- charts (matplotlib) ---------------------------------------------------------------------
def _canvas(width: float, height: float, dpi: int = 90):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _pixels(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def confusion_order(cm: np.ndarray) -> list[int]:
    """Classes ordered so that the ones confused with each other sit side by side: pairs by
    how often they are confused (either way), most first; then the rest by their mistakes."""
    k = len(cm)
    off = cm.astype(float).copy()
    np.fill_diagonal(off, 0)
    pair = off + off.T
    errors = off.sum(0) + off.sum(1)
    order: list[int] = []
    placed: set[int] = set()
    for flat in np.argsort(-pair, axis=None, kind="stable"):
        i, j = divmod(int(flat), k)
        if pair[i, j] <= 0:
            break
        for c in sorted((i, j), key=lambda c: -errors[c]):
            if c not in placed:
                placed.add(c)
                order.append(c)
    rest = sorted((c for c in range(k) if c not in placed), key=lambda c: (-errors[c], c))
    return order + rest


def confusion_figure(cm: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """The confusion matrix with class names on both axes, in :func:`confusion_order`.

    Colour: share of the true class (square root scale, so rare confusions still show). Cells
    carry counts up to 25 classes; names stay legible up to ~200 classes (zoom in).
    """
    k = len(names)
    order = confusion_order(cm)
    m = cm[np.ix_(order, order)]
    rows = m.sum(1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0)
    cell = max(0.11, min(0.45, 12.0 / k))
    fs = max(4.5, min(9.0, cell * 72 * 0.75))
    side = cell * k
    fig = _canvas(side + 3.6, side + 3.2, dpi=100 if k > 60 else 90)
    ax = fig.add_axes(
        (2.9 / (side + 3.6), 2.7 / (side + 3.2), side / (side + 3.6), side / (side + 3.2))
    )
    ax.imshow(np.sqrt(share), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    labels = [clip(names[i], 30) for i in order]
    ax.set_yticks(range(k), labels, fontsize=fs)
    ax.set_xticks(range(k), labels, fontsize=fs, rotation=90)
    if k <= 25:
        for i, j in zip(*np.nonzero(m), strict=True):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=fs,
                    color="white" if share[i, j] > 0.4 else "black")  # fmt: skip
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(
        f"Validation confusion ({int(cm.sum())} photos, {k} classes; confused classes side by side)",
        fontsize=10,
        loc="left",
    )
    return _pixels(fig)


def per_class_figure(acc: np.ndarray, support: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Validation accuracy per class as horizontal bars, worst first, with the photo counts."""
    order = np.argsort(np.nan_to_num(acc, nan=2.0), kind="stable")
    k = len(order)
    height = max(2.5, 0.16 * k + 1.0)
    fs = 8 if k <= 60 else 6
    fig = _canvas(7.5, height)
    ax = fig.add_axes((0.36, 0.6 / height, 0.56, 1 - 1.0 / height))
    vals = np.nan_to_num(acc[order], nan=0.0)
    colours = [(0.8, 0.2, 0.2) if v < 0.5 else (0.3, 0.45, 0.7) for v in vals]
    ax.barh(range(k), vals, color=colours, height=0.8)
    ax.set_yticks(range(k), [clip(names[i], 34) for i in order], fontsize=fs)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    for y, i in enumerate(order):
        ax.text(min(vals[y], 1.0) + 0.01, y, f"{vals[y]:.0%} of {int(support[i])}", va="center",
                fontsize=fs - 1)  # fmt: skip
    ax.set_xlabel("validation accuracy (recall) per class")
    ax.set_title("Per-class accuracy, worst first", fontsize=10, loc="left")
    return _pixels(fig)


def calibration_figure(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> np.ndarray:
    """Reliability curve (accuracy per confidence bin against the diagonal) and how many photos
    fall in each bin; the title has the expected calibration error."""
    b = confidence_bins(confidence, correct, bins)
    count, acc, conf, ece = b.count, b.accuracy, b.confidence, b.ece
    used = count > 0
    fig = _canvas(5.2, 5.6)
    ax = fig.add_axes((0.13, 0.33, 0.82, 0.6))
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.plot(conf[used], acc[used], "o-", color="#4c72b0", label="model (temperature-scaled)")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    ax.set_title(f"Calibration on validation: ECE {ece:.3f}", fontsize=10, loc="left")
    ax.legend(loc="upper left", fontsize=8)
    hist = fig.add_axes((0.13, 0.08, 0.82, 0.17), sharex=ax)
    hist.bar(b.lower, count, width=1 / bins, align="edge", color="#55a868", edgecolor="white")
    hist.set(xlabel="confidence (top-1 probability)", ylabel="photos")
    return _pixels(fig)
