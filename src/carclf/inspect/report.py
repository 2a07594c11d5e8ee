"""Dataset report: what is in a dataset, what it looks like, and what is wrong with it.

    python -m carclf.inspect.report PATH [--out DIR] [--doctor]

writes ``DIR/report.html`` (one self-contained page: figures and thumbnails inlined) and
``DIR/report.json`` (the same facts as numbers and paths): counts per class and split, image size
and file-size histograms, tiny / grayscale / EXIF-rotated photos, a sample grid per class, exact
and near duplicates inside train, inside test and across them (leakage), unreadable files with the
reason, and with ``--doctor`` the label doctor's likely mislabelled photos
(:mod:`carclf.inspect.doctor`). Every training run writes the report into its run dir
(:class:`carclf.inspect.callback.DataReport`; ``data.report=cheap``, the default, costs what the
data check costs: each image is decoded once for both; ``data.report=full`` adds the doctor).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

from carclf import io
from carclf.cli import exit_code, main_exit
from carclf.data.check import CheckReport, check_index
from carclf.data.facts import ImageFacts
from carclf.data.layouts import DatasetIndex
from carclf.data.thumbs import Thumbnails
from carclf.errors import CarclfError, ConfigError
from carclf.html import esc
from carclf.inspect import doctor
from carclf.inspect.dataset import dataset_parser, read_for_report
from carclf.inspect.duplicates import NEAR_DISTANCE, DuplicatePair, exact_pairs, near_pairs
from carclf.inspect.report_html import SCOPES, render_html

__all__ = ["build_report", "read_for_report", "write_report", "write_run_report", "main"]

log = logging.getLogger(__name__)

TINY_SIDE = 128  # longer side below this: under half a 224 px input, mostly upscaling blur
MODES = ("off", "cheap", "full")  # data.report: no report, the report, the report + the doctor


def check_mode(mode: str) -> str:
    """``mode`` if it is a valid ``data.report``, else a ConfigError naming the key."""
    if mode not in MODES:
        raise ConfigError(f"data.report={mode!r}: choose one of {', '.join(MODES)}")
    return mode


# -- the facts --------------------------------------------------------------------------------


def _hist(values: np.ndarray, bins: int = 30) -> dict:
    if not len(values):
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}


def _stats(values: np.ndarray) -> dict:
    if not len(values):
        return {}
    return {
        "min": float(values.min()),
        "median": float(np.median(values)),
        "max": float(values.max()),
        "mean": round(float(values.mean()), 2),
    }


def _sizes(ok: list[ImageFacts]) -> dict:
    """Stats and histograms of width, height, aspect and file size of the readable images."""
    w = np.array([f.width for f in ok], dtype=float)
    h = np.array([f.height for f in ok], dtype=float)
    values = {
        "width": w,
        "height": h,
        "aspect": w / np.maximum(h, 1),
        "file_kb": np.array([f.file_size / 1024 for f in ok], dtype=float),
    }
    return {
        "size": {k: _stats(v) for k, v in values.items()},
        "histograms": {k: _hist(v) for k, v in values.items()},
    }


def _duplicates(
    index: DatasetIndex, ok: list[ImageFacts], splits: list[str], near_distance: int
) -> tuple[dict, bool]:
    """The exact and near duplicate pairs (with class names) and whether hashes were there."""
    labels = zip(index.train["path"], index.train["label"], strict=True)
    names = {p: index.class_names[int(k)] for p, k in labels}
    paths, md5s = [f.path for f in ok], [f.md5 for f in ok]
    exact = exact_pairs(paths, md5s, splits)
    hashed = all(f.phash is not None for f in ok)
    near = []
    if hashed and ok:
        phash = np.array([f.phash for f in ok], dtype=np.uint64)
        dhash = np.array([f.dhash for f in ok], dtype=np.uint64)
        near = near_pairs(paths, md5s, splits, phash, dhash, near_distance)

    def listed(pairs: list[DuplicatePair]) -> dict:
        return {
            "by_scope": {s: sum(p.scope == s for p in pairs) for s in SCOPES},
            "pairs": [
                {**p.to_dict(), "label_a": names.get(p.a), "label_b": names.get(p.b)} for p in pairs
            ],
        }

    return {"exact_duplicates": listed(exact), "near_duplicates": listed(near)}, hashed


def build_report(
    index: DatasetIndex,
    check: CheckReport,
    notes: list[str] = (),
    near_distance: int = NEAR_DISTANCE,
) -> dict:
    """Everything the page shows, as JSON-able data (paths absolute, labels as class names),
    from the check's per-image facts (``check_index(..., with_facts=True)``)."""
    train = set(index.train["path"])
    ok = [f for f in check.facts if f.ok]
    splits = ["train" if f.path in train else "test" for f in ok]
    duplicates, hashed = _duplicates(index, ok, splits, near_distance)
    counts = check.class_counts
    nonzero = [c for c in counts.values() if c > 0]
    imbalance = (max(nonzero) / min(nonzero)) if nonzero else None
    notes = list(notes)
    if not hashed:
        notes.append("Near duplicates were not searched: pip install 'carclf[doctor]' (imagehash).")
    if empty := [k for k, c in counts.items() if c == 0]:
        notes.append(f"{len(empty)} class(es) have no readable labelled photo.")
    return {
        "dataset": {
            "root": str(index.root),
            "layout": index.layout,
            "num_classes": index.num_classes,
        },
        "notes": notes,
        "counts": {
            "train": check.num_train,
            "test_unlabelled": check.num_test,
            "unreadable": len(check.bad_files),
            "missing": len(check.missing_files),
            "unlisted": len(check.unlisted_files),
        },
        "class_counts": counts,
        "imbalance_ratio": round(imbalance, 2) if imbalance else None,
        **_sizes(ok),
        "tiny_side": TINY_SIDE,
        "tiny": [f.path for f in ok if max(f.width, f.height) < TINY_SIDE],
        "grayscale": [f.path for f in ok if f.grayscale],
        "exif_rotated": [
            {"path": f.path, "orientation": f.orientation} for f in ok if f.orientation != 1
        ],
        "near_distance": near_distance if hashed else None,
        **duplicates,
        "conflicting_duplicates": check.conflicting_duplicates,
        "unreadable": check.bad_files,
        "missing_files": check.missing_files,
        "unlisted_files": check.unlisted_files,
    }


# -- entry points -----------------------------------------------------------------------------


def write_report(
    index: DatasetIndex,
    out: str | Path,
    *,
    check: CheckReport | None = None,
    notes: list[str] = (),
    doctor: bool = False,
    doctor_options: dict | None = None,
    thumbnails: bool = True,
    near_distance: int = NEAR_DISTANCE,
    workers: int = 4,
    progress: bool = False,
) -> tuple[dict, CheckReport]:
    """Write report.html and report.json to ``out`` (plus label_issues.csv with ``doctor``).

    ``check``: the data check of ``index`` with its per-image facts; without one (or without its
    facts) ``index`` is checked here, once, and data_check.json is written too. Returns the report
    data and the data check.
    """
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checked_here = check is None or check.facts is None
    if checked_here:
        check = check_index(index, workers, progress, with_facts=True)
    report = build_report(index, check, notes, near_distance)
    thumbs = Thumbnails(workers=workers) if thumbnails else None
    doctor_html = ""
    if doctor:
        doctor_html = _run_doctor(index, check, report, out, thumbs, doctor_options or {}, progress)
    report["seconds"] = round(time.perf_counter() - started, 2)
    page = render_html(report, index, thumbs, doctor_html, report["seconds"])
    report["seconds"] = round(time.perf_counter() - started, 2)
    io.write_json(out / "report.json", report)
    if checked_here:
        io.write_json(out / "data_check.json", check.to_dict())
    io.write_text(out / "report.html", page)
    return report, check


def _run_doctor(index, check, report, out: Path, thumbs, options: dict, progress: bool) -> str:
    """The doctor's section, or a note saying why it did not run (never fatal to the report)."""
    if index.num_classes < 2:
        report["doctor"] = {"skipped": "fewer than 2 classes"}
        return '<p class="note">The label doctor needs at least 2 classes.</p>'
    try:
        options = {"cache_dir": out, **options}
        result = doctor.diagnose(index.drop(check.bad_paths), progress=progress, **options)
    except CarclfError as e:
        report["doctor"] = {"skipped": str(e)}
        return f'<p class="card warn">The label doctor did not run: {esc(e)}</p>'
    doctor.write_issues(result, out / doctor.ISSUES_FILE)
    report["doctor"] = result.summary()
    return doctor.gallery_html(result, index, thumbs)


def write_run_report(index: DatasetIndex, run_dir: str | Path, mode: str = "cheap") -> CheckReport:
    """A training run's data check (data_check.json) and, unless ``mode`` is off, its report
    (``mode``: off | cheap | full, full adds the doctor). Each image is decoded once."""
    check_mode(mode)
    run_dir = Path(run_dir)
    check = check_index(index, with_facts=mode != "off")
    io.write_json(run_dir / "data_check.json", check.to_dict())
    if mode != "off":
        write_report(index, run_dir, check=check, doctor=mode == "full")
        log.info("dataset report: %s", run_dir / "report.html")
    return check


def main(argv: list[str] | None = None) -> int:
    parser = dataset_parser("carclf report", __doc__.splitlines()[0], "outputs/data-report")
    parser.add_argument("--doctor", action="store_true", help="also run the label doctor")
    parser.add_argument("--folds", type=int, default=5, help="label doctor: cross-validation folds")
    parser.add_argument(
        "--near-distance", type=int, default=NEAR_DISTANCE, help="near duplicates: max hash bits"
    )
    parser.add_argument("--workers", type=int, default=4, help="decoding threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    return exit_code(lambda: _report(args))


def _report(args) -> int:
    index, notes = read_for_report(args.path, args.layout, args.class_map)
    report, check = write_report(
        index,
        args.out,
        notes=notes,
        doctor=args.doctor,
        doctor_options={"folds": args.folds},
        near_distance=args.near_distance,
        workers=args.workers,
        progress=sys.stderr.isatty(),
    )
    print(check.summary())
    near = report["near_duplicates"]["by_scope"]
    exact = report["exact_duplicates"]["by_scope"]
    print(
        f"  near duplicates: {near['train']} in train, {near['test']} in test, "
        f"{near['train/test']} across train/test; exact across train/test: {exact['train/test']}"
    )
    if "doctor" in report:
        d = report["doctor"]
        print(
            f"  label doctor: {d.get('flagged', 0)} likely mislabelled photos -> "
            f"{Path(args.out) / 'label_issues.csv'}"
            if "flagged" in d
            else f"  label doctor skipped: {d['skipped']}"
        )
    print(f"report: {Path(args.out) / 'report.html'} ({report['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    main_exit(main)
