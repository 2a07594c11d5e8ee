"""Data check: what is in a dataset and what is wrong with it, before any training starts.

Run on its own as ``python -m carclf.data.check PATH [--json]`` or automatically before every
training run. Every image is decoded once (in a thread pool), so unreadable, truncated, zero-byte
and non-image files are found here and skipped in training instead of crashing mid-epoch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from carclf.data.images import MAX_PIXELS, open_image
from carclf.data.layouts import DatasetIndex, read_dataset
from carclf.errors import CarclfError, ImageDecodeError

log = logging.getLogger(__name__)


@dataclass
class FileCheck:
    path: str
    ok: bool
    width: int = 0
    height: int = 0
    md5: str = ""
    error: str = ""


@dataclass
class CheckReport:
    root: str
    layout: str
    num_classes: int
    num_train: int
    num_test: int
    class_counts: dict[str, int]
    image_size: dict[str, float]
    bad_files: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    conflicting_duplicates: list[list[str]] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    unlisted_files: list[str] = field(default_factory=list)

    @property
    def bad_paths(self) -> list[str]:
        return [b["path"] for b in self.bad_files]

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"data check: {self.root} ({self.layout} layout)",
            f"  classes: {self.num_classes}   train images: {self.num_train}   test images: {self.num_test}",
        ]
        counts = sorted(self.class_counts.values())
        if counts:
            lines.append(
                f"  per class: min {counts[0]}, median {counts[len(counts) // 2]}, max {counts[-1]}"
            )
        s = self.image_size
        if s:
            lines.append(
                f"  image size: width {s['width_min']:.0f}-{s['width_max']:.0f} (median {s['width_median']:.0f}), "
                f"height {s['height_min']:.0f}-{s['height_max']:.0f} (median {s['height_median']:.0f})"
            )
        lines.append(f"  unreadable files (skipped): {len(self.bad_files)}")
        lines += [f"    {b['path']}: {b['error']}" for b in self.bad_files[:20]]
        if len(self.bad_files) > 20:
            lines.append(f"    ... and {len(self.bad_files) - 20} more (see --json)")
        lines.append(
            f"  exact duplicate groups: {len(self.duplicates)}"
            + (
                f" ({len(self.conflicting_duplicates)} with different labels)"
                if self.conflicting_duplicates
                else ""
            )
        )
        lines += [f"    {' = '.join(g)}" for g in self.conflicting_duplicates[:10]]
        lines.append(f"  ids in the CSV with no file: {len(self.missing_files)}")
        lines += [f"    {p}" for p in self.missing_files[:10]]
        lines.append(f"  image files with no id in the CSV: {len(self.unlisted_files)}")
        lines += [f"    {p}" for p in self.unlisted_files[:10]]
        return "\n".join(lines)


def check_file(path: str, max_pixels: int = MAX_PIXELS) -> FileCheck:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return FileCheck(path, False, error=f"cannot read: {e.strerror or e}")
    try:
        img = open_image(data, max_pixels=max_pixels)
    except ImageDecodeError as e:
        return FileCheck(path, False, md5=hashlib.md5(data).hexdigest(), error=e.reason)
    return FileCheck(path, True, img.width, img.height, hashlib.md5(data).hexdigest())


def scan_files(
    paths: list[str], file_check=check_file, workers: int = 4, progress: bool = False
) -> list:
    """``file_check(path)`` for every path in a thread pool (decoders release the GIL)."""
    iterator = ThreadPoolExecutor(max_workers=workers).map(file_check, paths, chunksize=16)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(
            iterator, total=len(paths), desc="checking images", unit="img", file=sys.stderr
        )
    return list(iterator)


def check_index(
    index: DatasetIndex,
    workers: int = 4,
    progress: bool = False,
    results: list[FileCheck] | None = None,
) -> CheckReport:
    """Decode every train and test image of ``index`` and summarise what was found.

    ``results`` (one :class:`FileCheck` per train then test path) skips the decoding: the dataset
    report passes its own richer per-image facts so each image is decoded once for both.
    """
    paths = index.train["path"].tolist() + index.test["path"].tolist()
    if results is None:
        results = scan_files(paths, check_file, workers, progress)
    by_path = {r.path: r for r in results}
    bad = [{"path": r.path, "error": r.error} for r in results if not r.ok]
    ok = [r for r in results if r.ok]

    labels = dict(zip(index.train["path"], index.train["label"], strict=True))
    groups: dict[str, list[str]] = defaultdict(list)
    for r in ok:
        groups[r.md5].append(r.path)
    dups = [g for g in groups.values() if len(g) > 1]
    conflicting = [g for g in dups if len({labels.get(p, -1) for p in g} - {-1}) > 1]

    # astype(bool): an empty train table maps to an object Series, which would select columns.
    good_train = index.train[index.train["path"].map(lambda p: by_path[p].ok).astype(bool)]
    counts = Counter(good_train["label"])
    sizes = np.array([(r.width, r.height) for r in ok]) if ok else np.zeros((0, 2))
    stats = {}
    if len(sizes):
        for i, axis in enumerate(("width", "height")):
            col = sizes[:, i]
            stats |= {
                f"{axis}_min": float(col.min()),
                f"{axis}_median": float(np.median(col)),
                f"{axis}_max": float(col.max()),
                f"{axis}_mean": float(col.mean()),
            }
    return CheckReport(
        root=str(index.root),
        layout=index.layout,
        num_classes=index.num_classes,
        num_train=len(good_train),
        num_test=int(sum(by_path[p].ok for p in index.test["path"])),
        class_counts={
            index.class_names[k]: int(counts.get(k, 0)) for k in range(index.num_classes)
        },
        image_size=stats,
        bad_files=bad,
        duplicates=dups,
        conflicting_duplicates=conflicting,
        missing_files=list(index.missing),
        unlisted_files=list(index.unlisted),
    )


def check(
    path: str | Path, layout: str = "auto", class_map: str = "auto", progress: bool = False
) -> CheckReport:
    return check_index(read_dataset(path, layout=layout, class_map=class_map), progress=progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m carclf.data.check", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "path", help="dataset: Kaggle layout, folder per class, CSV of path,label, or a zip of any"
    )
    parser.add_argument("--layout", default="auto", choices=["auto", "kaggle", "folders", "csv"])
    parser.add_argument("--class-map", default="auto", help="auto, none, sfdl, or a classes.csv")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a summary"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        report = check(
            args.path, args.layout, args.class_map, progress=not args.json and sys.stderr.isatty()
        )
    except CarclfError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), ensure_ascii=False) if args.json else report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
