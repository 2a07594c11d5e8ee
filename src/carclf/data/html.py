"""Small HTML building blocks for the dataset report: one self-contained page, images inlined.

Self-contained (figures and thumbnails as base64 ``data:`` URIs, CSS inline, no script, no
external asset) so the page can be mailed, attached to a ticket, or opened from an archive.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from carclf.data.facts import thumbnail_jpeg  # noqa: E402

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
"""


def esc(value) -> str:
    return html.escape(str(value))


def png_uri(fig) -> str:
    """Render a matplotlib figure to a PNG data URI and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def jpeg_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def figure(src: str | None, caption: str, title: str = "") -> str:
    """A thumbnail with a caption; ``src`` None (unreadable file) shows the caption only."""
    img = (
        f'<img src="{src}" alt="{esc(caption)}" title="{esc(title or caption)}">'
        if src
        else '<div class="note">(unreadable)</div>'
    )
    return f"<figure>{img}<figcaption>{esc(caption)}</figcaption></figure>"


def card(value, label: str, level: str = "") -> str:
    return f'<div class="card {level}"><b>{esc(value)}</b><span>{esc(label)}</span></div>'


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


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]], top: str = "") -> str:
    """The whole document; ``sections`` are (anchor, heading, body HTML), linked from a nav bar."""
    nav = " ".join(f'<a href="#{a}">{esc(h)}</a>' for a, h, _ in sections)
    body = "\n".join(f'<h2 id="{a}">{esc(h)}</h2>\n{b}' for a, h, b in sections)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>{CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="sub">{esc(subtitle)}</p>
{top}
<nav>{nav}</nav>
{body}
</body></html>
"""


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be shared
    os.replace(tmp, path)


class Thumbnails:
    """Draft-decoded JPEG thumbnails as data URIs, made once per path, in a thread pool."""

    def __init__(self, size: int = 112, workers: int = 4):
        self.size, self.workers = size, workers
        self._uris: dict[str, str | None] = {}

    def want(self, paths) -> None:
        todo = [p for p in dict.fromkeys(paths) if p not in self._uris]
        with ThreadPoolExecutor(self.workers) as pool:
            for p, data in zip(todo, pool.map(self._one, todo), strict=True):
                self._uris[p] = jpeg_uri(data) if data else None

    def _one(self, path: str) -> bytes | None:
        return thumbnail_jpeg(path, self.size)

    def __getitem__(self, path: str) -> str | None:
        if path not in self._uris:
            self.want([path])
        return self._uris[path]
