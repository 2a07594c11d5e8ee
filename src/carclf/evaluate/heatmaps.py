"""Grad-CAM overlays in predict.py: one PNG per photo (``explain=true``), and the report's maps.

The heat maps come from :mod:`carclf.inference.explain`; this module picks the photos and the
class to explain (the answer ``predict.py`` gave: the top-1 of the merged TTA probabilities),
names the files and writes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from carclf import io
from carclf.data.images import load_rgb
from carclf.errors import ImageDecodeError
from carclf.inference.explain import Explainer

log = logging.getLogger(__name__)

BATCH = 8  # photos per Grad-CAM pass
REPORT_CORRECT = 4  # correct answers the report explains, besides its mistakes


def explain_folder(output: str | Path, explain_dir: str | None = None) -> Path:
    """Where ``explain=true`` writes: ``explain_dir``, or ``<output stem>_explain/`` beside the
    output (and its top-k CSV)."""
    if explain_dir:
        return Path(explain_dir).expanduser()
    out = Path(output).expanduser()
    return out.with_name(f"{out.stem}_explain")


def overlay_name(item_id: str, taken: set[str]) -> str:
    """A file name for the overlay of ``item_id``: its path with ``/`` as ``__``, ``.png``
    instead of its suffix; unique within ``taken`` (which it joins)."""
    path = PurePosixPath(str(item_id).replace("\\", "/"))
    parts = [p for p in path.parts if p not in ("..", ".", "/")] or ["image"]
    if "." in parts[-1].strip("."):
        parts[-1] = parts[-1].rsplit(".", 1)[0]
    stem = "__".join(parts)
    name, n = f"{stem}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.png"
    taken.add(name)
    return name


def _decoded(paths: list[str]) -> tuple[list[int], list[np.ndarray]]:
    keep, images = [], []
    for i, path in enumerate(paths):
        try:
            images.append(load_rgb(path))
            keep.append(i)
        except ImageDecodeError as e:
            log.warning("no heat map for %s", e)
    return keep, images


def write_overlays(
    explainer: Explainer,
    ids: list[str],
    paths: list[str],
    probs: np.ndarray,
    ok: np.ndarray,
    folder: str | Path,
    display_names: list[str],
    progress: bool = True,
) -> Path:
    """One overlay PNG per readable photo, for the class predicted for it, plus ``overlays.csv``
    (id, path, file, class, name, probability). Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = np.flatnonzero(ok)
    rows_out, taken = [], set()
    bar = tqdm(total=len(rows), unit="img", desc="explain", disable=not progress, leave=False)
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        keep, images = _decoded([paths[i] for i in chunk])
        chunk = chunk[keep]
        targets = [int(probs[i].argmax()) for i in chunk]
        for i, e in zip(chunk, explainer.explain_arrays(images, targets), strict=True):
            name = overlay_name(ids[i], taken)
            io.write_bytes(folder / name, e.png())
            k = e.index
            rows_out.append([ids[i], paths[i], name, k, display_names[k], float(probs[i, k])])
        bar.update(len(rows[start : start + BATCH]))
    bar.close()
    table = pd.DataFrame(rows_out, columns=["id", "path", "file", "class", "name", "probability"])
    io.write_text(folder / "overlays.csv", table.to_csv(index=False))
    log.info("%d heat map(s) (Grad-CAM) in %s", len(rows_out), folder)
    return folder


@dataclass
class ReportMap:
    """One heat map the report shows: overlay PNG and its caption."""

    png: bytes
    caption: str
    correct: bool


def report_maps(
    explainer: Explainer,
    paths: list[str],
    probs: np.ndarray,
    labels: np.ndarray,
    ok: np.ndarray,
    display_names: list[str],
    mistakes: list[str],
    correct: int = REPORT_CORRECT,
) -> list[ReportMap]:
    """Maps for the report: the photos of ``mistakes`` (paths, the report's gallery), then up to
    ``correct`` correct answers (the most confident, one per class), each for its answer."""
    labels = np.asarray(labels)
    row_of = {p: i for i, p in enumerate(paths)}
    chosen = [row_of[p] for p in mistakes if p in row_of]
    pred = np.where(ok[:, None], probs, -1).argmax(1)
    right = np.flatnonzero(ok & (labels >= 0) & (pred == labels))
    seen_class: set[int] = set()
    for i in right[np.argsort(-probs[right].max(1), kind="stable")]:
        if len(seen_class) >= correct:
            break
        if labels[i] not in seen_class:
            seen_class.add(int(labels[i]))
            chosen.append(int(i))
    keep, images = _decoded([paths[i] for i in chosen])
    chosen = [chosen[j] for j in keep]
    out = []
    for start in range(0, len(chosen), BATCH):
        rows = chosen[start : start + BATCH]
        maps = explainer.explain_arrays(images[start : start + BATCH], [int(pred[i]) for i in rows])
        for i, e in zip(rows, maps, strict=True):
            said = f"{display_names[pred[i]]} ({probs[i, pred[i]]:.0%})"
            good = bool(pred[i] == labels[i])
            text = f"said {said}" if good else f"true {display_names[labels[i]]}; said {said}"
            out.append(ReportMap(e.png(), f"{Path(paths[i]).name}: {text}", good))
    return out


def explainer(classifier, size: int, why: str) -> Explainer:
    """The classifier's explainer; a ModelError naming ``why`` (the setting) when the model has
    no PyTorch weights."""
    from carclf.errors import ModelError

    try:
        return Explainer.for_classifier(classifier, size)
    except ModelError as e:
        raise ModelError(f"{why}: {e}") from None


def section(maps: list[ReportMap], note: str | None = None) -> tuple[str, str, str]:
    """The report's heat-map section: (anchor, heading, HTML)."""
    from carclf import html as H

    if not maps:
        body = f"<p>{H.esc(note or 'No photo to explain.')}</p>"
        return "heatmaps", "Where the model looked (Grad-CAM)", body
    figures = "".join(
        f'<figure style="max-width:260px"><img style="height:auto;width:250px" '
        f'src="{H.data_uri(m.png, "image/png")}" alt="{H.esc(m.caption)}">'
        f'<figcaption style="max-width:250px">{"" if m.correct else "✗ "}{H.esc(m.caption)}'
        "</figcaption></figure>"
        for m in maps
    )
    wrong = sum(not m.correct for m in maps)
    intro = (
        f"<p>Grad-CAM heat maps on the last backbone stage for the {wrong} most confident "
        f"mistakes (✗) and {len(maps) - wrong} correct answers: red is where the evidence for the "
        "class the model said was strongest. A map on the background, a watermark or a "
        "neighbouring car means the answer was not about the car.</p>"
    )
    return "heatmaps", f"Where the model looked (Grad-CAM, {len(maps)} photos)", intro + figures


def for_predictions(cfg, res) -> Explainer:
    """``explain=true``: the overlays of a prediction run (``PredictResult``); its explainer."""
    ex = explainer(res.classifier, cfg.get("explain_size", 448), "explain=true")
    write_overlays(
        ex,
        res.items.ids,
        res.items.paths,
        res.probs,
        res.views.ok,
        explain_folder(cfg.output, cfg.get("explain_dir")),
        res.classifier.display_names(),
        bool(cfg.get("progress", False)),
    )
    return ex


def for_report(cfg, res, mistakes: list[str], ex: Explainer | None = None):
    """The report's heat-map section for an evaluated prediction run (None with
    ``report_explain=false``); a model without PyTorch weights gets a section saying so."""
    from carclf.errors import ModelError

    if not cfg.get("report_explain", True):
        return None
    try:
        ex = ex or explainer(res.classifier, cfg.get("explain_size", 448), "heat maps")
    except ModelError as e:
        return section([], f"No heat maps: {e}.")
    names = res.classifier.display_names()
    maps = report_maps(
        ex, res.items.paths, res.probs, res.items.labels, res.views.ok, names, mistakes
    )
    return section(maps)
