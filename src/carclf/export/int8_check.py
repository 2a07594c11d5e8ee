"""Keep an int8 model only if it loses at most ``max_drop`` points against fp32 on held-out photos.

Naive int8 can cost a CNN 5-15 points of accuracy (timm #204), and the parity check beside it
runs on the photos int8 was *calibrated* on, which flatters it. So ``--int8 --max-drop 0.5``
measures both ONNX models on photos that calibration never saw:

* with labels (class folders, a Kaggle layout, a CSV of path,label, or ``--holdout-labels``):
  the loss is top-1 accuracy of fp32 minus that of int8, in points;
* without: the loss is the share of photos whose top-1 class changes, in points (it bounds the
  accuracy loss from above).

Over the limit, ``model.int8.onnx`` is deleted and ``int8_check.json`` says by how much, so the
service and the batch job (``--backend int8``) refuse it with the reason instead of running it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from carclf.data.inputs import LabelMatcher, collect_inputs
from carclf.errors import DataError, ModelError
from carclf.inference.onnx_backend import INT8_CHECK_FILE, INT8_FILE
from carclf.io import write_json

log = logging.getLogger(__name__)


@dataclass
class Int8Check:
    """fp32 vs int8 on held-out photos; ``loss`` and ``max_drop`` are in percentage points."""

    photos: int
    source: str
    agreement: float  # share of photos with the same top-1 class
    fp32_accuracy: float | None
    int8_accuracy: float | None
    loss: float
    max_drop: float
    kept: bool
    skipped: int = 0
    # the bundle's open-set threshold on int8 (None: the bundle has none): the share of photos,
    # in points, whose unknown flag differs from fp32's; kept when it is within max_drop too
    open_set_changes: float | None = None
    open_set_kept: bool | None = None

    @property
    def measure(self) -> str:
        return "accuracy loss" if self.fp32_accuracy is not None else "top-1 changes"

    def format(self) -> str:
        head = f"int8 vs fp32 on {self.photos} held-out photos ({self.source}): "
        head += f"top-1 agreement {self.agreement:.1%}"
        if self.fp32_accuracy is not None:
            head += f", accuracy {self.int8_accuracy:.1%} vs {self.fp32_accuracy:.1%}"
        verdict = (
            f"kept: {self.measure} {self.loss:.2f} points <= limit {self.max_drop:g}"
            if self.kept
            else f"REFUSED: {self.measure} {self.loss:.2f} points is {self.loss - self.max_drop:.2f} "
            f"over the limit of {self.max_drop:g}; {INT8_FILE} was removed"
        )
        if self.open_set_changes is not None:
            verdict += (
                f"\n  open-set threshold {'kept' if self.open_set_kept else 'NOT kept'} for int8: "
                f"unknown flag changed on {self.open_set_changes:.2f} points of the photos "
                f"(limit {self.max_drop:g})"
            )
        return f"{head}\n  {verdict}"


@dataclass
class Holdout:
    paths: list[str]
    labels: np.ndarray | None  # model class index per photo, -1 where unknown
    source: str


def _spread(n: int, limit: int) -> np.ndarray:
    """``limit`` indices spread evenly over ``range(n)`` (every class folder contributes)."""
    if n <= limit:
        return np.arange(n)
    return (np.arange(limit) * (n / limit)).astype(int)


def holdout_photos(
    meta,
    sources: list[str | os.PathLike],
    exclude: set[str],
    limit: int,
    labels_csv: str | os.PathLike | None = None,
) -> Holdout:
    """Up to ``limit`` photos from ``sources`` that are not in ``exclude`` (the calibration set),
    labelled with the model's class indices where the source has labels it knows."""
    match = LabelMatcher(meta.label_values, meta.class_names, meta.class_names_local)
    paths: list[str] = []
    labels: list[int] = []
    have_labels = True
    for src in sources:
        try:
            items = (
                collect_inputs(src, labels_csv=labels_csv, match=match)
                if labels_csv
                else collect_inputs(src, labelled=True, match=match)
            )
        except DataError as e:
            if labels_csv:
                raise
            log.info("%s: no labels the model knows (%s); measuring top-1 agreement only", src, e)
            items, have_labels = collect_inputs(src), False
        paths += items.paths
        labels += list(items.labels) if items.labels is not None else [-1] * len(items)
    keep = [i for i, p in enumerate(paths) if os.path.realpath(p) not in exclude]
    keep = [keep[i] for i in _spread(len(keep), limit)]
    if not keep:
        raise DataError(
            f"no held-out photos in {', '.join(map(str, sources))}: all were used for "
            "calibration; pass --holdout DIR (photos int8 was not calibrated on)"
        )
    lab = np.array([labels[i] for i in keep]) if have_labels else None
    return Holdout([paths[i] for i in keep], lab, ", ".join(map(str, sources)))


def check_int8(
    fp32_path: Path,
    int8_path: Path,
    meta,
    holdout: Holdout,
    max_drop: float,
    batch_size: int = 32,
) -> Int8Check:
    """Measure, then keep or delete ``int8_path``; the verdict is written beside it."""
    from carclf.export.onnx import onnx_outputs
    from carclf.export.samples import photo_batch

    if max_drop < 0:
        raise ModelError(f"--max-drop {max_drop}: expected a number of points >= 0")
    batch, skipped = photo_batch([Path(p) for p in holdout.paths], meta)
    unreadable = {s.split(": ", 1)[0] for s in skipped}
    ok = [i for i, p in enumerate(holdout.paths) if str(Path(p)) not in unreadable]
    if len(ok) != len(batch):  # cannot tell which photos were skipped: do not guess labels
        holdout = Holdout(holdout.paths, None, holdout.source)
    fp32_out = onnx_outputs(fp32_path, batch, batch_size)
    int8_out = onnx_outputs(int8_path, batch, batch_size)
    fp32, int8 = fp32_out[0].argmax(1), int8_out[0].argmax(1)
    changes = open_set_changes(fp32_path.parent, meta, fp32_out, int8_out)
    agreement = float((fp32 == int8).mean())
    acc32 = acc8 = None
    if holdout.labels is not None:
        labels = holdout.labels[ok]
        known = labels >= 0
        if known.any():
            acc32 = float((fp32[known] == labels[known]).mean())
            acc8 = float((int8[known] == labels[known]).mean())
    loss = 100 * (acc32 - acc8) if acc32 is not None else 100 * (1 - agreement)
    check = Int8Check(
        photos=len(batch),
        source=holdout.source,
        agreement=agreement,
        fp32_accuracy=acc32,
        int8_accuracy=acc8,
        loss=round(loss, 4),
        max_drop=max_drop,
        kept=loss <= max_drop + 1e-9,
        skipped=len(skipped),
        open_set_changes=None if changes is None else round(changes, 4),
        open_set_kept=None if changes is None else bool(changes <= max_drop + 1e-9),
    )
    if not check.kept:
        int8_path.unlink(missing_ok=True)
    write_check(int8_path.parent, check)
    return check


def open_set_changes(bundle: Path, meta, fp32_out, int8_out) -> float | None:
    """Points of photos whose unknown flag differs between the fp32 and int8 outputs
    (``(logits, features)`` each) at the bundle's open-set threshold; None without open set."""
    from carclf.inference.open_set import load_open_set

    open_set = load_open_set(bundle, meta)
    if open_set is None:
        return None
    if open_set.needs_features and (fp32_out[1] is None or int8_out[1] is None):
        open_set = open_set.without_features()
    flags = [open_set.unknown(open_set.score_of(lg, ft)) for lg, ft in (fp32_out, int8_out)]
    return float(100 * (flags[0] != flags[1]).mean()) if len(flags[0]) else 0.0


def write_check(bundle: Path, check: Int8Check | None) -> None:
    """``int8_check.json`` beside the model (atomic); None removes a stale one."""
    path = bundle / INT8_CHECK_FILE
    if check is None:
        path.unlink(missing_ok=True)
        return
    write_json(path, asdict(check), indent=2)
