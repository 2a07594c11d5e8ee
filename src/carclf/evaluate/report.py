"""The evaluation report: one self-contained HTML file (figures embedded as base64) plus the
same figures as PNGs and the numbers as metrics.json, in one folder.

Self-contained so it can be mailed, attached to an issue or opened from an archive years later
without a server or a folder of assets. Class names (and local names, e.g. Russian for the
competition's classes) appear in the per-class table, the confusion matrix and the gallery.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Mapping
from pathlib import Path

from carclf import html as H
from carclf.evaluate.evaluation import Evaluation
from carclf.evaluate.plots import confusion_png, gallery_png, reliability_png


def _img(png: bytes, alt: str) -> str:
    return H.img(H.data_uri(png, "image/png"), alt)


def _f1_colour(f1: float) -> str:
    # Red for weak classes, white for strong ones: the eye goes to what needs work.
    g = int(200 + 55 * min(max(f1, 0.0), 1.0))
    return f"rgb(255,{g},{g})"


def _class_table(ev: Evaluation) -> str:
    local = ev.class_names_local or [""] * len(ev.class_names)
    head = "<tr><th>#</th><th>class</th>" + ("<th>local name</th>" if ev.class_names_local else "")
    head += "<th>precision</th><th>recall</th><th>F1</th><th>images</th></tr>"
    rows = []
    for i, (name, loc, r) in enumerate(zip(ev.class_names, local, ev.report.rows(), strict=True)):
        cells = f"<td class=num>{i}</td><td>{html.escape(name)}</td>"
        cells += f"<td>{html.escape(loc or '')}</td>" if ev.class_names_local else ""
        cells += "".join(f"<td class=num>{r[k]:.3f}</td>" for k in ("precision", "recall"))
        cells += f'<td class=num style="background:{_f1_colour(r["f1"])}">{r["f1"]:.3f}</td>'
        cells += f"<td class=num>{r['support']}</td>"
        rows.append(f"<tr>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _confusions_table(ev: Evaluation) -> str:
    names = ev.display_names
    rows = "".join(
        f"<tr><td>{html.escape(names[t])}</td><td>{html.escape(names[p])}</td>"
        f"<td class=num>{c}</td><td class=num>{c / max(1, ev.report.support[t]):.0%}</td></tr>"
        for t, p, c in ev.top_confusions(10)
    )
    if not rows:
        return "<p>No mistakes.</p>"
    head = "<tr><th>true class</th><th>predicted as</th><th>images</th><th>of the class</th></tr>"
    return f"<table>{head}{rows}</table>"


def _kv_table(items: Mapping[str, object]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in items.items()
    )
    return f"<table>{rows}</table>"


def render_html(
    ev: Evaluation,
    figures: Mapping[str, bytes],
    context: Mapping[str, object],
    errors: Mapping,
    extra_sections: list[tuple[str, str, str]] = (),
) -> str:
    """The report page. ``context`` is shown as a key/value table (model, data, TTA, speed);
    ``extra_sections`` (id, title, html) follow the mistakes (e.g. the open-set section)."""
    t = ev.temperature
    cards = "".join(
        [
            H.card(f"{ev.accuracy:.1%}", "accuracy (top-1)"),
            H.card(f"{ev.top3:.1%}", "top-3 accuracy"),
            H.card(f"{ev.report.macro_f1:.3f}", "macro F1"),
            H.card(f"{ev.ece_raw:.3f}", "ECE at T = 1"),
            H.card(f"{ev.ece_scaled:.3f}", f"ECE at T = {t:.2f}"),
            H.card(f"{ev.num_scored}", "images scored"),
        ]
    )
    counts = (
        f"{ev.num_images} images: {ev.num_scored} scored, {ev.num_unreadable} unreadable, "
        f"{ev.num_unlabelled} without a label."
    )
    calib = (
        f"Expected calibration error ({len(ev.bins_raw.count)} bins) at T = 1: {ev.ece_raw:.4f}; "
        f"at the model's temperature T = {t:.3f}: {ev.ece_scaled:.4f}. "
        f"Negative log-likelihood: {ev.nll_raw:.4f} → {ev.nll_scaled:.4f}."
    )
    if abs(t - 1.0) < 1e-9:
        calib += " The model has no fitted temperature (T = 1), so both panels are the same."
    bad = "".join(
        f"<tr><td>{html.escape(str(i))}</td><td>{html.escape(str(r))}</td></tr>"
        for i, r in errors.items()
    )
    sections = [
        (
            "calibration",
            "Calibration",
            f"""<p>{html.escape(calib)}</p>
{_img(figures["reliability"], "reliability diagrams")}
<p class="note">Blue bars: accuracy of the images whose top-1 confidence falls in each bin; the
diagonal is perfect calibration; hatched red: the gap to the bin's mean confidence (above a bar:
over-confident, inside it: under-confident); green: how many images fall in each bin.</p>""",
        ),
        ("classes", "Per-class precision, recall and F1", _class_table(ev)),
        (
            "confusion",
            "Confusion matrix",
            f"""<h3>Most frequent confusions</h3>
{_confusions_table(ev)}
<div class="wide">{_img(figures["confusion"], "confusion matrix")}</div>""",
        ),
        (
            "mistakes",
            f"Most confident mistakes ({len(ev.mistakes)})",
            _img(figures["mistakes"], "most confident mistakes"),
        ),
    ]
    sections += list(extra_sections)
    if errors:
        sections.append(
            (
                "unreadable",
                f"Unreadable images ({len(errors)})",
                f"<table><tr><th>image</th><th>reason</th></tr>{bad}</table>",
            )
        )
    top = f'<div class="cards">{cards}</div>\n'
    top += _kv_table({k: v for k, v in context.items() if k != "title"})
    return H.page(
        str(context.get("title", "carclf evaluation report")),
        f"{counts} Written {time.strftime('%Y-%m-%d %H:%M')}.",
        sections,
        top,
        nav=False,
    )


def write_report(
    ev: Evaluation,
    folder: str | Path,
    context: Mapping[str, object] | None = None,
    errors: Mapping | None = None,
    open_set=None,
    sections: list[tuple[str, str, str]] = (),
) -> Path:
    """Write report.html, confusion.png, reliability.png, mistakes.png and metrics.json.

    Args:
        context: extra facts shown at the top (model, data, TTA policy, images/s).
        errors: image id -> reason, for the unreadable images.
        open_set: an :class:`~carclf.evaluate.open_set_report.OpenSetEvaluation` (known vs
            unknown photos): adds its section, ``roc.png`` and ``metrics.json``'s ``open_set``.
        sections: more (anchor, heading, HTML) sections, e.g. the Grad-CAM heat maps
            (:func:`carclf.evaluate.heatmaps.section`).

    Returns:
        the path of report.html.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t = ev.temperature
    figures = {
        "confusion": confusion_png(ev.confusion, ev.display_names),
        "reliability": reliability_png(
            [("before: T = 1", ev.bins_raw), (f"after: T = {t:.2f}", ev.bins_scaled)]
        ),
        "mistakes": gallery_png(ev.mistakes),
    }
    extra = []
    if open_set is not None:
        from carclf.evaluate.open_set_report import roc_png, section

        figures["roc"] = roc_png(open_set)
        extra.append(section(open_set, figures["roc"]))
    extra += list(sections)
    for name, png in figures.items():
        (folder / f"{name}.png").write_bytes(png)
    context = dict(context or {})
    metrics = {**ev.to_dict(), "context": {k: str(v) for k, v in context.items()}}
    if open_set is not None:
        metrics["open_set"] = open_set.to_dict()
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    page = folder / "report.html"
    page.write_text(render_html(ev, figures, context, errors or {}, extra), encoding="utf-8")
    return page
