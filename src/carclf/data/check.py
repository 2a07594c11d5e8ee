"""Data check: what is in a dataset and what is wrong with it, before any training starts.

Run on its own as ``python -m carclf.data.check PATH [--json]`` or automatically before every
training run. Every image is decoded once (in a thread pool), so unreadable, truncated, zero-byte
and non-image files are found here and skipped in training instead of crashing mid-epoch.
``check_index(index, with_facts=True)`` keeps the richer per-image facts of that one decode
(:mod:`carclf.data.facts`) on the report, for the dataset report (:mod:`carclf.inspect.report`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from carclf.cli import exit_code, main_exit
from carclf.data.facts import FileCheck, ImageFacts, check_file, image_facts
from carclf.data.layouts import DatasetIndex, read_dataset

__all__ = ["CheckReport", "FileCheck", "check", "check_file", "check_index", "scan_files"]

log = logging.getLogger(__name__)


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
    # With check_index(..., with_facts=True): one ImageFacts per train then test path, from the
    # check's own decode (the dataset report's input). Not part of to_dict() / data_check.json.
    facts: list[ImageFacts] | None = field(default=None, repr=False, compare=False)

    @property
    def bad_paths(self) -> list[str]:
        return [b["path"] for b in self.bad_files]

    def to_dict(self) -> dict:
        out = asdict(replace(self, facts=None))
        del out["facts"]
        return out

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
    *,
    with_facts: bool = False,
) -> CheckReport:
    """Decode every train and test image of ``index`` and summarise what was found.

    ``with_facts``: decode with :func:`carclf.data.facts.image_facts` instead (a draft decode
    that also hashes and measures each image) and keep those facts on the report's
    ``facts``, so the dataset report needs no second decode.
    """
    paths = index.train["path"].tolist() + index.test["path"].tolist()
    results = scan_files(paths, image_facts if with_facts else check_file, workers, progress)
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
        facts=results if with_facts else None,
    )


def check(
    path: str | Path, layout: str = "auto", class_map: str = "auto", progress: bool = False
) -> CheckReport:
    return check_index(read_dataset(path, layout=layout, class_map=class_map), progress=progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="carclf check", description=__doc__.splitlines()[0])
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
    return exit_code(lambda: _run(args))


def _run(args) -> None:
    report = check(
        args.path, args.layout, args.class_map, progress=not args.json and sys.stderr.isatty()
    )
    print(json.dumps(report.to_dict(), ensure_ascii=False) if args.json else report.summary())


if __name__ == "__main__":
    main_exit(main)
