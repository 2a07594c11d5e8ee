"""The dataset report's page: figures, thumbnails and sections, from the report's data.

Built with :mod:`carclf.html` (the same look as the evaluation report); thumbnails come from
:class:`carclf.data.thumbs.Thumbnails`. Without thumbnails the photo sections list paths only.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib
import numpy as np

from carclf import html as H
from carclf.data.layouts import DatasetIndex
from carclf.data.thumbs import Thumbnails

matplotlib.use("Agg")

SAMPLES_PER_CLASS = 6
MAX_SHOWN = 40  # thumbnails (or pairs) shown per list; report.json has them all
SCOPES = {
    "train/test": "across train and test (leakage)",
    "train": "inside train",
    "test": "inside test",
}


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


# -- photo lists ------------------------------------------------------------------------------


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


def _more(total: int, shown: int) -> str:
    if total <= shown:
        return ""
    return f'<p class="note">... and {total - shown} more in report.json.</p>'


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
    return "".join(out) + _more(len(pairs), len(shown))


def _thumb_list(paths: list[str], thumbs: Thumbnails | None, root: str, captions=None) -> str:
    """Thumbnails of ``paths``; without ``thumbs``, the paths as text."""
    if thumbs is None:
        return H.esc(", ".join(paths[:MAX_SHOWN]))
    if not paths:
        return '<p class="note">None.</p>'
    shown = paths[:MAX_SHOWN]
    caps = captions or [_short(p, root) for p in shown]
    figs = "".join(H.figure(thumbs[p], c) for p, c in zip(shown, caps, strict=False))
    return figs + _more(len(paths), len(shown))


# -- sections: (anchor, heading, body) --------------------------------------------------------


def _cards(report: dict) -> str:
    c = report["counts"]
    dup, near = report["exact_duplicates"]["by_scope"], report["near_duplicates"]["by_scope"]
    leak = dup["train/test"] + near["train/test"]
    dup_in = sum(dup[s] for s in ("train", "test"))
    near_in = sum(near[s] for s in ("train", "test"))
    ratio = report["imbalance_ratio"]
    cards = [
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
        H.card(dup_in + near_in, "duplicates inside a split", "warn" if dup_in else ""),
    ]
    notes = "".join(f'<p class="card warn">{H.esc(n)}</p>' for n in report["notes"])
    return f'<div class="cards">{"".join(cards)}</div>{notes}'


def _classes(report: dict) -> list[tuple[str, str, str]]:
    if not report["class_counts"]:
        return []
    ratio = report["imbalance_ratio"]
    body = (
        f"<p>{len(report['class_counts'])} classes, {report['counts']['train']} labelled photos; "
        f"the largest class has {ratio or 0:.1f} times the photos of the smallest.</p>"
        f'<img class="fig" src="{class_counts_figure(report["class_counts"])}" alt="photos per class">'
    )
    return [("classes", "Photos per class", body)]


def _sizes(report: dict) -> list[tuple[str, str, str]]:
    s = report["size"]
    if not s["width"]:
        return []
    labels = {"width": "width (px)", "height": "height (px)", "aspect": "aspect"}
    labels["file_kb"] = "file size (KB)"
    rows = [
        [label, f"{s[k]['min']:.2f}", f"{s[k]['median']:.2f}", f"{s[k]['max']:.2f}"]
        for k, label in labels.items()
    ]
    body = f'<img class="fig" src="{size_figure(report)}" alt="size histograms">' + H.table(
        ["", "min", "median", "max"], rows, (1, 2, 3)
    )
    return [("sizes", "Image sizes", body)]


def _odd(report: dict, thumbs: Thumbnails | None, root: str) -> list[tuple[str, str, str]]:
    rotated = report["exif_rotated"]
    captions = [f"{_short(r['path'], root)} · EXIF {r['orientation']}" for r in rotated[:MAX_SHOWN]]
    body = (
        f"<h3>Tiny: longer side under {report['tiny_side']} px ({len(report['tiny'])})</h3>"
        + _thumb_list(report["tiny"], thumbs, root)
        + f"<h3>Grayscale or nearly: no colour in 99% of the pixels ({len(report['grayscale'])})</h3>"
        + _thumb_list(report["grayscale"], thumbs, root)
        + f"<h3>Rotated by their EXIF orientation ({len(rotated)})</h3>"
        + '<p class="note">carclf turns these upright before training and prediction; other tools '
        "may not, and a camera that tags every photo is worth knowing about.</p>"
        + (_thumb_list([r["path"] for r in rotated], thumbs, root, captions) if thumbs else "")
    )
    return [("odd", "Tiny, grayscale and rotated photos", body)]


def _samples(report, index, samples, thumbs, root) -> list[tuple[str, str, str]]:
    if thumbs is None or not samples:
        return []
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
    return [
        ("samples", "What each class looks like", f'<table class="grid">{"".join(rows)}</table>')
    ]


def _duplicates(report: dict, thumbs: Thumbnails | None, root: str) -> list[tuple[str, str, str]]:
    nd = report["near_distance"]
    explain = (
        f"Near duplicates: perceptual hashes (phash + dhash, 128 bits) at most {nd} bits apart: "
        "resized, re-encoded or slightly cropped copies."
        if nd is not None
        else "Near duplicates were not searched (imagehash is not installed)."
    )
    body = f'<p class="note">Exact duplicates: identical bytes (MD5). {H.esc(explain)} '
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
    return [("duplicates", "Duplicates and leakage", body)]


def _unreadable(report: dict) -> list[tuple[str, str, str]]:
    c = report["counts"]
    body = (
        H.table(["file", "reason"], [[b["path"], b["error"]] for b in report["unreadable"]])
        if report["unreadable"]
        else '<p class="note">Every image decodes.</p>'
    )
    body += (
        f"<p>{c['missing']} ids listed in a CSV have no file; {c['unlisted']} image files under "
        "train/ are listed in no CSV (neither is used for training).</p>"
    )
    return [("unreadable", f"Unreadable files ({c['unreadable']})", body)]


def render_html(
    report: dict,
    index: DatasetIndex,
    thumbs: Thumbnails | None = None,
    doctor_html: str = "",
    seconds: float | None = None,
) -> str:
    """The page. Without ``thumbs`` the photo sections list paths only (no decoding at all)."""
    root = report["dataset"]["root"]
    samples = {}
    if thumbs is not None:
        samples = sample_paths(index, {b["path"] for b in report["unreadable"]})
        thumbs.want([p for ps in samples.values() for p in ps])
    doctor = [("doctor", "Likely mislabelled photos (label doctor)", doctor_html)]
    sections = (
        _classes(report)
        + _sizes(report)
        + _odd(report, thumbs, root)
        + _samples(report, index, samples, thumbs, root)
        + _duplicates(report, thumbs, root)
        + (doctor if doctor_html else [])
        + _unreadable(report)
    )
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    subtitle = (
        f"{root} ({report['dataset']['layout']} layout). "
        f"Written {time.strftime('%Y-%m-%d %H:%M')}{took}."
    )
    return H.page("carclf dataset report", subtitle, sections, _cards(report))
