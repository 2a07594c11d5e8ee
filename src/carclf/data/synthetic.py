"""A small synthetic car dataset, generated at run time, for ``make demo`` and tests.

Nothing to download: four body types (sedan, hatchback, SUV, pickup) are drawn as side-view
silhouettes with random colours, sizes, positions, backgrounds and mirroring, and written in the
competition's Kaggle layout (train.csv, train/<k>/, test_upload/, sample-submission.csv) plus
classes.csv and test-labels.csv. Class names say "synthetic" so nobody mistakes it for real data.

    python -m carclf.data.synthetic OUT_DIR [--train-per-class 40] [--test-per-class 10]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from carclf.cli import main_exit
from carclf.io import make_temp_dir, replace_dir

CLASSES = ["synthetic sedan", "synthetic hatchback", "synthetic SUV", "synthetic pickup"]

# Side-view body outlines in a unit box (x right, y down), front of the car to the right.
BODIES = {
    0: [
        (0.0, 0.62),
        (0.05, 0.45),
        (0.25, 0.42),
        (0.36, 0.18),
        (0.66, 0.18),
        (0.8, 0.42),
        (1.0, 0.48),
        (1.0, 0.78),
        (0.0, 0.78),
    ],
    1: [
        (0.0, 0.7),
        (0.0, 0.25),
        (0.12, 0.15),
        (0.58, 0.15),
        (0.75, 0.42),
        (1.0, 0.5),
        (1.0, 0.8),
        (0.0, 0.8),
    ],
    2: [(0.0, 0.72), (0.0, 0.12), (0.7, 0.1), (0.82, 0.35), (1.0, 0.4), (1.0, 0.8), (0.0, 0.8)],
    3: [
        (0.0, 0.45),
        (0.5, 0.45),
        (0.52, 0.15),
        (0.78, 0.15),
        (0.86, 0.4),
        (1.0, 0.45),
        (1.0, 0.8),
        (0.0, 0.8),
    ],
}
WINDOWS = {
    0: [(0.38, 0.23), (0.64, 0.23), (0.74, 0.41), (0.3, 0.41)],
    1: [(0.14, 0.2), (0.55, 0.2), (0.68, 0.4), (0.1, 0.4)],
    2: [(0.06, 0.17), (0.68, 0.15), (0.77, 0.35), (0.06, 0.36)],
    3: [(0.55, 0.2), (0.76, 0.2), (0.83, 0.4), (0.55, 0.4)],
}


def draw_car(label: int, rng: np.random.Generator, size=(200, 150)) -> Image.Image:
    w, h = size
    sky = rng.integers(120, 230, 3)
    ground = rng.integers(40, 140, 3)
    img = Image.new("RGB", size, tuple(int(c) for c in sky))
    draw = ImageDraw.Draw(img)
    horizon = int(h * rng.uniform(0.55, 0.75))
    draw.rectangle([0, horizon, w, h], fill=tuple(int(c) for c in ground))
    cw = w * rng.uniform(0.6, 0.9)
    ch = cw * rng.uniform(0.42, 0.52)
    x0 = rng.uniform(0, w - cw)
    y0 = min(h - ch, max(0.0, horizon - ch * 0.8 + rng.uniform(-8, 8)))

    def place(points):
        return [(x0 + px * cw, y0 + py * ch) for px, py in points]

    body = tuple(int(c) for c in rng.integers(0, 255, 3))
    draw.polygon(place(BODIES[label]), fill=body, outline=(20, 20, 20))
    draw.polygon(place(WINDOWS[label]), fill=(60, 80, 110))
    r = ch * 0.16
    for fx in (0.2, 0.8):
        cx, cy = x0 + fx * cw, y0 + 0.8 * ch
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(25, 25, 25))
        draw.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=(160, 160, 160))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.0)))
    arr = np.asarray(img).astype(np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_dataset(
    out: str | os.PathLike,
    train_per_class: int = 40,
    test_per_class: int = 10,
    seed: int = 0,
    size=(200, 150),
) -> Path:
    """Write the dataset to ``out`` (replacing it) and return the path."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    tmp = make_temp_dir(out.parent, ".synthetic-")
    train_rows, test_rows = [], []
    n = 0
    for label in range(len(CLASSES)):
        (tmp / "train" / str(label)).mkdir(parents=True)
        for _ in range(train_per_class):
            name = f"{n:05d}.jpg"
            draw_car(label, rng, size).save(tmp / "train" / str(label) / name, quality=90)
            train_rows.append(f"{name},{label}")
            n += 1
    (tmp / "test_upload").mkdir()
    for label in range(len(CLASSES)):
        for _ in range(test_per_class):
            name = f"{n:05d}.jpg"
            draw_car(label, rng, size).save(tmp / "test_upload" / name, quality=90)
            test_rows.append((name, label))
            n += 1
    order = rng.permutation(len(test_rows))
    test_rows = [test_rows[i] for i in order]
    (tmp / "train.csv").write_text("Id,Category\n" + "\n".join(train_rows) + "\n")
    (tmp / "sample-submission.csv").write_text(
        "Id,Category\n" + "".join(f"{i},0\n" for i, _ in test_rows)
    )
    (tmp / "test-labels.csv").write_text(
        "Id,Category\n" + "".join(f"{i},{c}\n" for i, c in test_rows)
    )
    (tmp / "classes.csv").write_text(
        "Category,name\n" + "".join(f"{k},{name}\n" for k, name in enumerate(CLASSES))
    )
    return replace_dir(tmp, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="carclf synthetic",
        description="Write a small synthetic car dataset (Kaggle layout).",
    )
    parser.add_argument("out")
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--test-per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = make_dataset(args.out, args.train_per_class, args.test_per_class, args.seed)
    print(
        f"synthetic dataset ({len(CLASSES)} classes, {args.train_per_class}/{args.test_per_class} train/test per class): {path}"
    )
    return 0


if __name__ == "__main__":
    main_exit(main)
