"""The evaluation report: one self-contained HTML file (figures embedded as base64) plus the
same figures as PNGs and the numbers as metrics.json, in one folder.

Self-contained so it can be mailed, attached to an issue or opened from an archive years later
without a server or a folder of assets. Class names (and local names, e.g. Russian for the
competition's classes) appear in the per-class table, the confusion matrix and the gallery.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Mapping
from pathlib import Path

from carclf.evaluate.evaluation import Evaluation
from carclf.evaluate.plots import confusion_png, gallery_png, reliability_png

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1300px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.5em 0}
td,th{padding:.25em .7em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:1.5em}.card span{color:#666;font-size:.85em}
img{max-width:100%;height:auto;border:1px solid #eee}
.note{color:#666;font-size:.9em}
.wide{overflow-x:auto}.wide img{max-width:none}
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{html.escape(value)}</b><span>{html.escape(label)}</span></div>'


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
    ev: Evaluation, figures: Mapping[str, bytes], context: Mapping[str, object], errors: Mapping
) -> str:
    """The report page. ``context`` is shown as a key/value table (model, data, TTA, speed)."""
    t = ev.temperature
    cards = "".join(
        [
            _card(f"{ev.accuracy:.1%}", "accuracy (top-1)"),
            _card(f"{ev.top3:.1%}", "top-3 accuracy"),
            _card(f"{ev.report.macro_f1:.3f}", "macro F1"),
            _card(f"{ev.ece_raw:.3f}", "ECE at T = 1"),
            _card(f"{ev.ece_scaled:.3f}", f"ECE at T = {t:.2f}"),
            _card(f"{ev.num_scored}", "images scored"),
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
    unreadable = (
        f"<h2>Unreadable images ({len(errors)})</h2><table><tr><th>image</th><th>reason</th></tr>"
        f"{bad}</table>"
        if errors
        else ""
    )
    title = html.escape(str(context.get("title", "carclf evaluation report")))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{CSS}</style></head>
<body>
<h1>{title}</h1>
<p class="sub">{html.escape(counts)} Written {time.strftime("%Y-%m-%d %H:%M")}.</p>
<div class="cards">{cards}</div>
{_kv_table({k: v for k, v in context.items() if k != "title"})}
<h2>Calibration</h2>
<p>{html.escape(calib)}</p>
{_img(figures["reliability"], "reliability diagrams")}
<p class="note">Blue bars: accuracy of the images whose top-1 confidence falls in each bin; the
diagonal is perfect calibration; hatched red: the gap to the bin's mean confidence (above a bar:
over-confident, inside it: under-confident); green: how many images fall in each bin.</p>
<h2>Per-class precision, recall and F1</h2>
{_class_table(ev)}
<h2>Confusion matrix</h2>
<h3>Most frequent confusions</h3>
{_confusions_table(ev)}
<div class="wide">{_img(figures["confusion"], "confusion matrix")}</div>
<h2>Most confident mistakes ({len(ev.mistakes)})</h2>
{_img(figures["mistakes"], "most confident mistakes")}
{unreadable}
</body></html>
"""


def write_report(
    ev: Evaluation,
    folder: str | Path,
    context: Mapping[str, object] | None = None,
    errors: Mapping | None = None,
) -> Path:
    """Write report.html, confusion.png, reliability.png, mistakes.png and metrics.json.

    Args:
        context: extra facts shown at the top (model, data, TTA policy, images/s).
        errors: image id -> reason, for the unreadable images.

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
    for name, png in figures.items():
        (folder / f"{name}.png").write_bytes(png)
    context = dict(context or {})
    metrics = {**ev.to_dict(), "context": {k: str(v) for k, v in context.items()}}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    page = folder / "report.html"
    page.write_text(render_html(ev, figures, context, errors or {}), encoding="utf-8")
    return page
