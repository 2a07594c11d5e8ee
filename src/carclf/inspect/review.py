"""Review the label doctor's flags in a browser: keep, relabel or exclude each flagged photo.

    carclf doctor PATH --review [--out DIR] [--port 8765]

A small FastAPI app (the service's web stack; no other framework) serves one page
(:mod:`carclf.inspect.review_page`) that shows each flagged photo beside photos of its given and
of its suggested class, with keep / relabel / exclude buttons and keyboard shortcuts. Every
decision is written to ``decisions.csv`` as it is made (the whole file rewritten through an
atomic rename, so a killed page or server loses nothing and never leaves half a file); a later
review of the same folder starts from the decisions already made. ``data.relabel=decisions.csv``
and ``data.exclude=decisions.csv`` train with them (:mod:`carclf.data.exclude`).

Only the photos of the review (the flagged ones and their class examples) can be fetched, by
number, never by path.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from carclf import io
from carclf.data.exclude import DECISIONS
from carclf.data.layouts import DatasetIndex, read_table
from carclf.data.thumbs import thumbnail_jpeg
from carclf.errors import CarclfError, DataError

DECISIONS_FILE = "decisions.csv"
COLUMNS = [
    "path", "id", "given_label", "given_name", "decision", "label", "name", "decided_at",
]  # fmt: skip
EXAMPLES = 3  # photos of the given and of the suggested class beside each flagged one
MAIN_SIZE, SIDE_SIZE = 320, 160


class Decision(BaseModel):
    """One decision posted by the page: the flagged photo, keep/relabel/exclude, new label."""

    path: str
    decision: str
    label: str | None = None


class ReviewError(CarclfError):
    """The review page cannot start (the port is taken)."""


class DecisionLog:
    """``decisions.csv``: one row per reviewed photo (a second decision replaces the first),
    rewritten atomically after every decision; an existing file is read first (resume)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.rows: dict[str, dict] = {}
        if self.path.is_file():
            table = read_table(self.path)
            missing = [c for c in ("path", "decision") if c not in table.columns]
            if missing:
                raise DataError(f"{self.path}: not a decisions file (no {missing} column)")
            self.rows = {r["path"]: r for r in table.reindex(columns=COLUMNS, fill_value="")
                         .to_dict("records")}  # fmt: skip

    def record(self, row: dict) -> dict:
        with self._lock:
            row = {c: str(row.get(c, "")) for c in COLUMNS}
            row["decided_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            self.rows[row["path"]] = row
            with io.atomic_path(self.path) as tmp:
                pd.DataFrame(list(self.rows.values()), columns=COLUMNS).to_csv(tmp, index=False)
            return row


def class_examples(index: DatasetIndex, skip, per_class: int = EXAMPLES) -> dict[int, list[str]]:
    """The first ``per_class`` labelled photos of every class, leaving out the ``skip`` paths."""
    skip = set(skip)
    out: dict[int, list[str]] = {}
    for p, k in zip(index.train["path"], index.train["label"], strict=True):
        if p not in skip and len(out.setdefault(int(k), [])) < per_class:
            out[int(k)].append(p)
    return out


def _items(issues: pd.DataFrame, index: DatasetIndex, log: DecisionLog, images: list) -> list:
    number = {str(v): k for k, v in enumerate(index.label_values)}
    examples = class_examples(index, issues["path"])

    def image(path: str, size: int) -> str:
        images.append((path, size))
        return f"image/{len(images) - 1}"

    def shown(k: int) -> list[dict]:
        return [{"src": image(p, SIDE_SIZE), "name": Path(p).name} for p in examples.get(k, [])]

    items = []
    for r in issues.to_dict("records"):
        given, sugg = number.get(str(r["given_label"])), number.get(str(r["suggested_label"]))
        if given is None or sugg is None:
            raise DataError(f"label_issues row {r['path']}: its labels are not in {index.root}")
        items.append(
            {
                **{k: str(r[k]) for k in ("path", "given_name", "suggested_name")},
                "rank": int(r["rank"]),
                "given_label": str(r["given_label"]),
                "suggested_label": str(r["suggested_label"]),
                "score": float(r["score"]),
                "suggested_prob": float(r["suggested_prob"]),
                "id": str(r.get("id", "")),
                "name": Path(r["path"]).name,
                "src": image(r["path"], MAIN_SIZE),
                "given_examples": shown(given),
                "suggested_examples": shown(sugg),
                "decision": log.rows.get(r["path"]),
            }
        )
    return items


def review_app(issues: pd.DataFrame, index: DatasetIndex, decisions: str | Path, title: str = ""):
    """The FastAPI app of the review page for ``issues`` (a ``label_issues.csv`` table)."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse, Response

    from carclf.inspect.review_page import review_html

    log = DecisionLog(decisions)
    images: list[tuple[str, int]] = []
    items = _items(issues, index, log, images)
    by_path = {it["path"]: it for it in items}
    names = {str(v): n for v, n in zip(index.label_values, index.class_names, strict=True)}
    page = review_html(
        "carclf label doctor: review", title or str(index.root), str(log.path), len(items)
    )
    app = FastAPI(title="carclf label doctor review", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    def home():
        return page

    @app.get("/api/items")
    def api_items():
        for it in items:
            it["decision"] = log.rows.get(it["path"])
        return {"items": items, "classes": list(names.items())}

    @app.post("/api/decisions")
    def decide(d: Decision):
        item = by_path.get(d.path)
        if item is None:
            raise HTTPException(404, f"{d.path} is not one of the flagged photos")
        if d.decision not in DECISIONS:
            raise HTTPException(422, f"decision {d.decision!r}: choose one of {list(DECISIONS)}")
        label = d.label if d.decision == "relabel" else item["given_label"]
        if d.decision == "relabel" and label not in names:
            raise HTTPException(422, f"label {label!r} is not a class of this dataset")
        row = {**item, "decision": d.decision, "label": label, "name": names[label]}
        return {"decision": log.record(row), "reviewed": len(log.rows)}

    @app.get("/image/{n}")
    def image(n: int):
        if not 0 <= n < len(images):
            raise HTTPException(404, "no such image")
        data = thumbnail_jpeg(*images[n])
        if data is None:
            raise HTTPException(404, "unreadable image")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/decisions.csv")
    def decisions_csv():
        if not log.path.is_file():
            raise HTTPException(404, "no decisions yet")
        return FileResponse(log.path, media_type="text/csv")

    return app


def read_issues(csv: str | Path, index: DatasetIndex) -> pd.DataFrame:
    """A ``label_issues.csv`` to review, its photos checked against the dataset."""
    table = read_table(Path(csv))
    need = ["path", "given_label", "given_name", "suggested_label", "suggested_name"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise DataError(f"{csv}: not a label doctor list (no {missing} column)")
    gone = sorted(set(table["path"]) - set(index.train["path"].astype(str)))
    if gone:
        raise DataError(
            f"{csv}: {len(gone)} of its {len(table)} photos are not labelled photos of "
            f"{index.root} (first: {gone[0]}); run the doctor again"
        )
    table = table.copy()
    for c, default in (("rank", None), ("score", "0"), ("suggested_prob", "0")):
        if c not in table.columns:
            table[c] = range(1, len(table) + 1) if default is None else default
    table["rank"] = table["rank"].astype(int)
    return table


def serve(app, host: str, port: int) -> None:
    """Serve ``app`` until Ctrl-C (uvicorn, as the service does); port 0 picks a free port."""
    import socket

    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ReviewError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(128)
    print(f"label doctor review: http://{host}:{sock.getsockname()[1]}/  (Ctrl-C to stop)",
          flush=True)  # fmt: skip
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
