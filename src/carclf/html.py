"""HTML building blocks of carclf's reports: one self-contained page, images inlined.

Shared by the dataset report and the label doctor (:mod:`carclf.inspect`) and the evaluation
report (:mod:`carclf.evaluate.report`), so the pages look alike and the CSS lives in one place.
Self-contained (figures and thumbnails as base64 ``data:`` URIs, CSS inline, no script, no
external asset) so a page can be mailed, attached to a ticket, or opened from an archive.

Layer 0: strings in, strings out. Nothing here decodes an image (thumbnails are made in
:mod:`carclf.data.thumbs`); :func:`png_uri` only asks a matplotlib figure to save itself.
"""

from __future__ import annotations

import base64
import html
import io

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1300px;
color:#222;padding:0 1em;line-height:1.4}
h1{margin-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{margin-bottom:.3em}
.sub{color:#666;margin-top:0}.note{color:#666;font-size:.9em}
nav a{margin-right:1em;white-space:nowrap}
table{border-collapse:collapse;margin:.5em 0}
td,th{padding:.25em .7em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:8em}
.card b{display:block;font-size:1.5em}.card span{color:#666;font-size:.85em}
.card.warn{border-color:#e0a000;background:#fff8e6}.card.bad{border-color:#d33;background:#fdecec}
.card.good{border-color:#3a3;background:#eef8ee}
img{max-width:100%;height:auto;border:1px solid #eee}
figure{display:inline-block;margin:.2em;vertical-align:top;text-align:center}
figure img{height:96px;border:1px solid #ddd;border-radius:3px}
figcaption{font-size:.72em;color:#555;max-width:150px;overflow-wrap:anywhere}
.grid{width:100%}.grid td{padding:.2em .4em}
.grid th{width:13em;min-width:13em;max-width:13em;font-weight:normal;overflow-wrap:anywhere}
.grid figure img{height:80px}
.pair{display:inline-block;border:1px solid #ddd;border-radius:6px;padding:.3em;margin:.3em;
vertical-align:top}
.pair.leak{border-color:#d33;background:#fdecec}
.pair.issue{display:flex;gap:1.2em;align-items:flex-start}
.pair.issue .side figure img{height:72px}.pair.issue .side:first-child figure img{height:110px}
.tag{display:inline-block;font-size:.75em;padding:0 .4em;border-radius:3px;background:#eee}
.tag.leak{background:#d33;color:#fff}
img.fig{max-width:100%;height:auto;border:0}
.wide{overflow-x:auto}.wide img{max-width:none}
"""


def esc(value) -> str:
    return html.escape(str(value))


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def jpeg_uri(data: bytes) -> str:
    return data_uri(data, "image/jpeg")


def png_uri(fig) -> str:
    """Render a matplotlib figure to a PNG data URI and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return data_uri(buf.getvalue(), "image/png")


def img(src: str, alt: str, cls: str = "") -> str:
    """An ``<img>`` tag (``src`` a data URI); ``cls`` a CSS class such as ``fig``."""
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} alt="{esc(alt)}" src="{src}">'


def figure(src: str | None, caption: str, title: str = "") -> str:
    """A thumbnail with a caption; ``src`` None (unreadable file) shows the caption only."""
    tag = (
        f'<img src="{src}" alt="{esc(caption)}" title="{esc(title or caption)}">'
        if src
        else '<div class="note">(unreadable)</div>'
    )
    return f"<figure>{tag}<figcaption>{esc(caption)}</figcaption></figure>"


def card(value, label: str, level: str = "") -> str:
    """A big number with a label; ``level`` is "", "good", "warn" or "bad"."""
    klass = f"card {level}" if level else "card"
    return f'<div class="{klass}"><b>{esc(value)}</b><span>{esc(label)}</span></div>'


def table(header: list[str], rows: list[list], num_cols: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class=num>{esc(c)}</td>" if i in num_cols else f"<td>{esc(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def page(
    title: str,
    subtitle: str,
    sections: list[tuple[str, str, str]],
    top: str = "",
    nav: bool = True,
) -> str:
    """The whole document; ``sections`` are (anchor, heading, body HTML), linked from a nav bar
    (``nav=False``: no nav bar). ``top`` (HTML) goes between the subtitle and the sections."""
    links = " ".join(f'<a href="#{a}">{esc(h)}</a>' for a, h, _ in sections)
    bar = f"<nav>{links}</nav>\n" if nav else ""
    body = "\n".join(f'<h2 id="{a}">{esc(h)}</h2>\n{b}' for a, h, b in sections)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>{CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="sub">{esc(subtitle)}</p>
{top}
{bar}{body}
</body></html>
"""
