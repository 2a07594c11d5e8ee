"""Dataset report: what is in a dataset, what it looks like, and what is wrong with it.

    python -m carclf.data.report PATH [--out DIR] [--doctor]

writes ``DIR/report.html`` (one self-contained page: figures and thumbnails inlined) and
``DIR/report.json`` (the same facts as numbers and paths): counts per class and split, image size
and file-size histograms, tiny / grayscale / EXIF-rotated photos, a sample grid per class, exact
and near duplicates inside train, inside test and across them (leakage), unreadable files with the
reason, and with ``--doctor`` the label doctor's likely mislabelled photos
(:mod:`carclf.data.doctor`). Every training run writes the report into its run dir
(``data.report=cheap``, the default, costs what the data check costs: each image is decoded once
for both; ``data.report=full`` adds the doctor).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from carclf.data import html as H
from carclf.data.check import CheckReport, check_index, scan_files
from carclf.data.duplicates import NEAR_DISTANCE, DuplicatePair, exact_pairs, near_pairs
from carclf.data.facts import ImageFacts, image_facts
from carclf.data.html import Thumbnails, write_atomic
from carclf.data.layouts import READERS, DatasetIndex, detect_layout, list_images, resolve
from carclf.errors import CarclfError, DataError

log = logging.getLogger(__name__)

TINY_SIDE = 128  # longer side below this: under half a 224 px input, mostly upscaling blur
SAMPLES_PER_CLASS = 6
MAX_SHOWN = 40  # thumbnails (or pairs) shown per list; report.json has them all
SCOPES = {
    "train/test": "across train and test (leakage)",
    "train": "inside train",
    "test": "inside test",
}


# -- reading ----------------------------------------------------------------------------------


def read_for_report(
    path: str | Path, layout: str = "auto", class_map: str = "auto"
) -> tuple[DatasetIndex, list[str]]:
    """The dataset as training reads it, except that one class or no labels is a note, not an
    error: the report of such a folder says so (and skips the doctor) instead of refusing."""
    root = resolve(path)
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in READERS:
        raise DataError(
            f"unknown data layout {layout!r}; choose one of {sorted(READERS)} or 'auto'"
        )
    notes = []
    try:
        index = READERS[layout](root, class_map=class_map)
    except DataError as e:
        if layout != "folders" or "no images found in class folders" not in str(e):
            raise
        files = list_images(root)
        if not files:
            raise DataError(f"{root}: no images found (looked in every sub-folder)") from None
        empty = pd.DataFrame({"id": [], "path": [], "label": []}).astype({"label": int})
        test = pd.DataFrame(
            {"id": [str(p.relative_to(root)) for p in files], "path": [str(p) for p in files]}
        )
        index = DatasetIndex(root, "folders", empty, test, [], [])
        notes.append(
            "No labels: the images are not in class folders, so they are all counted as "
            "unlabelled. A classifier needs <class>/<image> folders (or a CSV of path,label)."
        )
    if index.num_classes == 1:
        notes.append(
            f"Only one class ({index.class_names[0]!r}): a classifier needs at least 2, "
            "so training would refuse this dataset and the label doctor does not run."
        )
    return index, notes


def scan(index: DatasetIndex, workers: int = 4, progress: bool = False) -> list[ImageFacts]:
    """Facts for every train then test image, each decoded once (see :mod:`carclf.data.facts`)."""
    paths = index.train["path"].tolist() + index.test["path"].tolist()
    return scan_files(paths, image_facts, workers, progress)


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


def build_report(
    index: DatasetIndex,
    facts: list[ImageFacts],
    check: CheckReport,
    notes: list[str] = (),
    near_distance: int = NEAR_DISTANCE,
) -> dict:
    """Everything the page shows, as JSON-able data (paths absolute, labels as class names)."""
    n_train = len(index.train)
    splits = ["train"] * n_train + ["test"] * len(index.test)
    names = dict(zip(index.train["path"], index.train["label"].map(_name(index)), strict=True))
    ok = [(f, s) for f, s in zip(facts, splits, strict=True) if f.ok]
    paths = [f.path for f, _ in ok]
    w = np.array([f.width for f, _ in ok], dtype=float)
    h = np.array([f.height for f, _ in ok], dtype=float)
    kb = np.array([f.file_size / 1024 for f, _ in ok], dtype=float)
    aspect = w / np.maximum(h, 1)

    counts = check.class_counts
    nonzero = [c for c in counts.values() if c > 0]
    imbalance = (max(nonzero) / min(nonzero)) if nonzero else None
    empty_classes = [k for k, c in counts.items() if c == 0]

    md5s, ok_splits = [f.md5 for f, _ in ok], [s for _, s in ok]
    exact = exact_pairs(paths, md5s, ok_splits)
    hashed = all(f.phash is not None for f, _ in ok)
    near = (
        near_pairs(
            paths,
            md5s,
            ok_splits,
            np.array([f.phash for f, _ in ok], dtype=np.uint64),
            np.array([f.dhash for f, _ in ok], dtype=np.uint64),
            near_distance,
        )
        if hashed and ok
        else []
    )
    notes = list(notes)
    if not hashed:
        notes.append("Near duplicates were not searched: pip install 'carclf[doctor]' (imagehash).")
    if empty_classes:
        notes.append(f"{len(empty_classes)} class(es) have no readable labelled photo.")

    def pair_dict(p: DuplicatePair) -> dict:
        return {**p.to_dict(), "label_a": names.get(p.a), "label_b": names.get(p.b)}

    def count_by_scope(pairs):
        return {s: sum(p.scope == s for p in pairs) for s in SCOPES}

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
        "size": {
            "width": _stats(w),
            "height": _stats(h),
            "aspect": _stats(aspect),
            "file_kb": _stats(kb),
        },
        "histograms": {
            "width": _hist(w),
            "height": _hist(h),
            "aspect": _hist(aspect),
            "file_kb": _hist(kb),
        },
        "tiny_side": TINY_SIDE,
        "tiny": [f.path for f, _ in ok if max(f.width, f.height) < TINY_SIDE],
        "grayscale": [f.path for f, _ in ok if f.grayscale],
        "exif_rotated": [
            {"path": f.path, "orientation": f.orientation} for f, _ in ok if f.orientation != 1
        ],
        "near_distance": near_distance if hashed else None,
        "exact_duplicates": {
            "by_scope": count_by_scope(exact),
            "pairs": [pair_dict(p) for p in exact],
        },
        "near_duplicates": {
            "by_scope": count_by_scope(near),
            "pairs": [pair_dict(p) for p in near],
        },
        "conflicting_duplicates": check.conflicting_duplicates,
        "unreadable": check.bad_files,
        "missing_files": check.missing_files,
        "unlisted_files": check.unlisted_files,
    }


def _name(index: DatasetIndex):
    return lambda k: index.class_names[int(k)]


# -- figures ----------------------------------------------------------------------------------


def class_counts_figure(counts: dict[str, int]) -> str:
    import matplotlib.pyplot as plt

    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.19 * len(items) + 0.8)))
    values = [v for _, v in items]
    mean = float(np.mean(values)) if values else 0.0
    colours = ["#d9822b" if v < 0.5 * mean else "#3d7ebf" for v in values]
    ax.barh(range(len(items)), values, color=colours)
    ax.set_yticks(range(len(items)), [k if len(k) <= 40 else k[:39] + "…" for k, _ in items])
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)
    ax.axvline(mean, color="#444", lw=1, ls="--")
    ax.text(mean, -0.9, f" mean {mean:.1f}", fontsize=8, va="bottom")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v}", va="center", fontsize=7)
    ax.set_xlabel("labelled photos (orange: under half the mean)")
    ax.margins(y=0.01)
    ax.spines[["top", "right"]].set_visible(False)
    return H.png_uri(fig)


def size_figure(report: dict) -> str:
    import matplotlib.pyplot as plt

    hists = report["histograms"]
    titles = {
        "width": "width (px)",
        "height": "height (px)",
        "aspect": "aspect (width / height)",
        "file_kb": "file size (KB)",
    }
    fig, axes = plt.subplots(1, 4, figsize=(13, 2.6))
    for ax, (key, title) in zip(axes, titles.items(), strict=True):
        edges, counts = hists[key]["edges"], hists[key]["counts"]
        if counts:
            ax.stairs(counts, edges, fill=True, color="#3d7ebf")
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("photos")
    fig.tight_layout()
    return H.png_uri(fig)


# -- thumbnails -------------------------------------------------------------------------------


# -- the page ---------------------------------------------------------------------------------


def _short(path: str, root: str) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return Path(path).name


def sample_paths(index: DatasetIndex, bad: set[str], seed: int = 0) -> dict[int, list[str]]:
    rng = np.random.default_rng(seed)
    out = {}
    for k, rows in index.train.groupby("label"):
        paths = [p for p in rows["path"] if p not in bad]
        pick = rng.permutation(len(paths))[:SAMPLES_PER_CLASS]
        out[int(k)] = [paths[i] for i in sorted(pick)]
    return out


def _pairs_html(pairs: list[dict], thumbs: Thumbnails, root: str) -> str:
    shown = pairs[:MAX_SHOWN]
    out = []
    for p in shown:
        leak = p["scope"] == "train/test"
        kind = "identical bytes" if p["exact"] else f"distance {p['distance']}"
        figs = "".join(
            H.figure(thumbs[q], f"{_short(q, root)}" + (f" · {lab}" if lab else " · unlabelled"))
            for q, lab in ((p["a"], p["label_a"]), (p["b"], p["label_b"]))
        )
        tag = f'<span class="tag{" leak" if leak else ""}">{H.esc(p["scope"])} · {kind}</span>'
        out.append(f'<div class="pair{" leak" if leak else ""}">{tag}<br>{figs}</div>')
    more = (
        f'<p class="note">... and {len(pairs) - len(shown)} more in report.json.</p>'
        if len(pairs) > len(shown)
        else ""
    )
    return "".join(out) + more


def _thumb_list(paths: list[str], thumbs: Thumbnails, root: str, captions=None) -> str:
    if not paths:
        return '<p class="note">None.</p>'
    shown = paths[:MAX_SHOWN]
    caps = captions or [_short(p, root) for p in shown]
    more = (
        f'<p class="note">... and {len(paths) - len(shown)} more in report.json.</p>'
        if len(paths) > len(shown)
        else ""
    )
    return "".join(H.figure(thumbs[p], c) for p, c in zip(shown, caps, strict=False)) + more


def render_html(
    report: dict,
    index: DatasetIndex,
    thumbs: Thumbnails | None = None,
    doctor_html: str = "",
    seconds: float | None = None,
) -> str:
    """The page. Without ``thumbs`` the photo sections list paths only (no decoding at all)."""
    root = report["dataset"]["root"]
    c = report["counts"]
    bad = {b["path"] for b in report["unreadable"]}
    if thumbs is not None:
        samples = sample_paths(index, bad)
        thumbs.want([p for ps in samples.values() for p in ps])
    leak = report["exact_duplicates"]["by_scope"]["train/test"]
    leak += report["near_duplicates"]["by_scope"]["train/test"]
    dup_train = sum(report["exact_duplicates"]["by_scope"][s] for s in ("train", "test"))
    near_in = sum(report["near_duplicates"]["by_scope"][s] for s in ("train", "test"))
    ratio = report["imbalance_ratio"]
    cards = "".join(
        [
            H.card(report["dataset"]["num_classes"], "classes"),
            H.card(c["train"], "labelled (train) photos"),
            H.card(c["test_unlabelled"], "unlabelled (test) photos"),
            H.card(c["unreadable"], "unreadable", "bad" if c["unreadable"] else "good"),
            H.card(
                f"{ratio:.1f}x" if ratio else "-",
                "imbalance (largest / smallest class)",
                "warn" if ratio and ratio > 3 else "",
            ),
            H.card(leak, "train/test duplicates (leakage)", "bad" if leak else "good"),
            H.card(dup_train + near_in, "duplicates inside a split", "warn" if dup_train else ""),
        ]
    )
    notes = "".join(f'<p class="card warn">{H.esc(n)}</p>' for n in report["notes"])
    sections = []

    # Classes
    if report["class_counts"]:
        body = (
            f"<p>{len(report['class_counts'])} classes, {c['train']} labelled photos; the largest "
            f"class has {ratio or 0:.1f} times the photos of the smallest.</p>"
            f'<img class="fig" src="{class_counts_figure(report["class_counts"])}" alt="photos per class">'
        )
        sections.append(("classes", "Photos per class", body))

    # Sizes
    s = report["size"]
    if s["width"]:
        rows = [
            [k, f"{v['min']:.2f}", f"{v['median']:.2f}", f"{v['max']:.2f}"]
            for k, v in (
                ("width (px)", s["width"]),
                ("height (px)", s["height"]),
                ("aspect", s["aspect"]),
                ("file size (KB)", s["file_kb"]),
            )
        ]
        body = f'<img class="fig" src="{size_figure(report)}" alt="size histograms">' + H.table(
            ["", "min", "median", "max"], rows, (1, 2, 3)
        )
        sections.append(("sizes", "Image sizes", body))

    # Odd photos
    root_s = root
    body = (
        f"<h3>Tiny: longer side under {report['tiny_side']} px ({len(report['tiny'])})</h3>"
        + (
            _thumb_list(report["tiny"], thumbs, root_s)
            if thumbs
            else H.esc(", ".join(report["tiny"][:MAX_SHOWN]))
        )
        + f"<h3>Grayscale or nearly: no colour in 99% of the pixels ({len(report['grayscale'])})</h3>"
        + (
            _thumb_list(report["grayscale"], thumbs, root_s)
            if thumbs
            else H.esc(", ".join(report["grayscale"][:MAX_SHOWN]))
        )
        + f"<h3>Rotated by their EXIF orientation ({len(report['exif_rotated'])})</h3>"
        + '<p class="note">carclf turns these upright before training and prediction; other tools '
        "may not, and a camera that tags every photo is worth knowing about.</p>"
        + (
            _thumb_list(
                [r["path"] for r in report["exif_rotated"]],
                thumbs,
                root_s,
                [
                    f"{_short(r['path'], root_s)} · EXIF {r['orientation']}"
                    for r in report["exif_rotated"][:MAX_SHOWN]
                ],
            )
            if thumbs
            else ""
        )
    )
    sections.append(("odd", "Tiny, grayscale and rotated photos", body))

    # Samples
    if thumbs is not None and samples:
        rows = []
        for k, ps in samples.items():
            name = index.class_names[k]
            n = report["class_counts"].get(name, 0)
            local = (index.class_names_local or [""] * (k + 1))[k]
            figs = "".join(H.figure(thumbs[p], _short(p, root)) for p in ps)
            rows.append(
                f"<tr><th>{H.esc(name)}{'<br>' + H.esc(local) if local else ''}<br>"
                f"<span class=note>{n} photos</span></th><td>{figs}</td></tr>"
            )
        body = f'<table class="grid">{"".join(rows)}</table>'
        sections.append(("samples", "What each class looks like", body))

    # Duplicates
    body = ""
    nd = report["near_distance"]
    explain = (
        f"Near duplicates: perceptual hashes (phash + dhash, 128 bits) at most {nd} bits apart: "
        "resized, re-encoded or slightly cropped copies."
        if nd is not None
        else "Near duplicates were not searched (imagehash is not installed)."
    )
    body += f'<p class="note">Exact duplicates: identical bytes (MD5). {H.esc(explain)} '
    body += "Red: the same photo in train and test, which inflates every test score.</p>"
    for scope, title in SCOPES.items():
        ex = [p for p in report["exact_duplicates"]["pairs"] if p["scope"] == scope]
        ne = [p for p in report["near_duplicates"]["pairs"] if p["scope"] == scope]
        body += f"<h3>{H.esc(title.capitalize())}: {len(ex)} exact, {len(ne)} near</h3>"
        if thumbs is not None and ex + ne:
            body += _pairs_html(ex + ne, thumbs, root)
        elif ex + ne:
            body += H.table(
                ["a", "b", "distance"],
                [[p["a"], p["b"], p["distance"]] for p in (ex + ne)[:MAX_SHOWN]],
            )
    if report["conflicting_duplicates"]:
        body += "<h3>Identical photos with different labels</h3>" + H.table(
            ["files"], [[" = ".join(g)] for g in report["conflicting_duplicates"][:MAX_SHOWN]]
        )
    sections.append(("duplicates", "Duplicates and leakage", body))

    if doctor_html:
        sections.append(("doctor", "Likely mislabelled photos (label doctor)", doctor_html))

    # Unreadable
    body = (
        H.table(["file", "reason"], [[b["path"], b["error"]] for b in report["unreadable"]])
        if report["unreadable"]
        else '<p class="note">Every image decodes.</p>'
    )
    body += (
        f"<p>{c['missing']} ids listed in a CSV have no file; {c['unlisted']} image files under "
        "train/ are listed in no CSV (neither is used for training).</p>"
    )
    sections.append(("unreadable", f"Unreadable files ({c['unreadable']})", body))

    took = f" in {seconds:.1f} s" if seconds is not None else ""
    subtitle = f"{root} ({report['dataset']['layout']} layout). Written {time.strftime('%Y-%m-%d %H:%M')}{took}."
    top = f'<div class="cards">{cards}</div>{notes}'
    return H.page("carclf dataset report", subtitle, sections, top)


# -- entry points -----------------------------------------------------------------------------


def write_report(
    index: DatasetIndex,
    out: str | Path,
    *,
    notes: list[str] = (),
    doctor: bool = False,
    doctor_options: dict | None = None,
    thumbnails: bool = True,
    near_distance: int = NEAR_DISTANCE,
    workers: int = 4,
    progress: bool = False,
) -> tuple[dict, CheckReport]:
    """Scan ``index`` once and write report.html, report.json and data_check.json to ``out``
    (plus label_issues.csv with ``doctor``). Returns the report data and the data check."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    facts = scan(index, workers, progress)
    check = check_index(index, results=facts)
    report = build_report(index, facts, check, notes, near_distance)
    thumbs = Thumbnails(workers=workers) if thumbnails else None
    doctor_html = ""
    if doctor:
        doctor_html = _run_doctor(index, check, report, out, thumbs, doctor_options or {}, progress)
    report["seconds"] = round(time.perf_counter() - started, 2)
    page = render_html(report, index, thumbs, doctor_html, report["seconds"])
    report["seconds"] = round(time.perf_counter() - started, 2)
    write_atomic(out / "report.json", json.dumps(report, indent=1, ensure_ascii=False))
    write_atomic(out / "data_check.json", json.dumps(check.to_dict(), indent=1, ensure_ascii=False))
    write_atomic(out / "report.html", page)
    return report, check


def _run_doctor(index, check, report, out: Path, thumbs, options: dict, progress: bool) -> str:
    """The doctor's section, or a note saying why it did not run (never fatal to the report)."""
    from carclf.data import doctor

    if index.num_classes < 2:
        report["doctor"] = {"skipped": "fewer than 2 classes"}
        return '<p class="note">The label doctor needs at least 2 classes.</p>'
    try:
        options = {"cache_dir": out, **options}
        result = doctor.diagnose(index.drop(check.bad_paths), progress=progress, **options)
    except CarclfError as e:
        report["doctor"] = {"skipped": str(e)}
        return f'<p class="card warn">The label doctor did not run: {H.esc(e)}</p>'
    doctor.write_issues(result, out / doctor.ISSUES_FILE)
    report["doctor"] = result.summary()
    return doctor.gallery_html(result, index, thumbs)


def write_run_report(index: DatasetIndex, run_dir: Path, mode: str = "cheap") -> CheckReport:
    """A training run's data check and report (``mode``: cheap | full, full adds the doctor)."""
    if mode not in ("cheap", "full"):
        raise CarclfError(f"data.report={mode!r}: choose off, cheap or full")
    report, check = write_report(index, run_dir, doctor=mode == "full")
    log.info("dataset report: %s", run_dir / "report.html")
    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m carclf.data.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("path", help="dataset: Kaggle layout, folder per class, CSV, or a zip")
    parser.add_argument("--out", default="outputs/data-report", help="output folder")
    parser.add_argument("--layout", default="auto", choices=["auto", "kaggle", "folders", "csv"])
    parser.add_argument("--class-map", default="auto", help="auto, none, sfdl, or a classes.csv")
    parser.add_argument("--doctor", action="store_true", help="also run the label doctor")
    parser.add_argument("--folds", type=int, default=5, help="label doctor: cross-validation folds")
    parser.add_argument(
        "--near-distance", type=int, default=NEAR_DISTANCE, help="near duplicates: max hash bits"
    )
    parser.add_argument("--workers", type=int, default=4, help="decoding threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
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
    except CarclfError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
    sys.exit(main())
