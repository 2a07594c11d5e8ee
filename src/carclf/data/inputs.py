"""What to predict: one image, a folder, a zip, a CSV list, or a Kaggle dataset folder.

Every input becomes an :class:`InputSet`: ids (what a submission calls each image), paths, and
optionally true labels as *model* class indices, so evaluation compares like with like even when
the dataset numbers its classes differently from the model (labels are matched by their source
value, e.g. ``5``, or by class name).

Rules, in order:

* an image file: that one image;
* a ``.zip``: unpacked once into the cache, then read as a folder;
* a ``.csv``: a list of ``path[,label]`` rows (relative paths are relative to the CSV);
* a Kaggle dataset folder (has ``train.csv``): its test images in sample-submission order, or,
  for evaluation without a labels CSV, its labelled training images;
* a folder of class folders, for evaluation without a labels CSV: every image, labelled by folder;
* any other folder: every image below it, ids = paths relative to it, in natural order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from carclf.data.images import is_image_name
from carclf.data.layouts import (
    LABEL_COLUMNS,
    PATH_COLUMNS,
    list_images,
    natural_key,
    pick_column,
    read_folders,
    read_kaggle,
    read_table,
    resolve,
)
from carclf.errors import DataError

log = logging.getLogger(__name__)

ID_COLUMNS = ("Id", "id", "ID", "image", "filename", "file", "path")


@dataclass
class InputSet:
    """Images to predict, in output order.

    Attributes:
        ids: names used in the submission (file name relative to the input folder).
        paths: absolute file paths (a listed file may be missing: it is reported, not fatal).
        labels: model class index per image, -1 where unknown; None when unlabelled.
        source: the input as given, for logs and reports.
        sample_submission: the dataset's own sample submission, if it has one.
    """

    ids: list[str]
    paths: list[str]
    labels: np.ndarray | None = None
    source: str = ""
    sample_submission: Path | None = None

    def __len__(self) -> int:
        return len(self.ids)


class LabelMatcher:
    """Maps a dataset's raw labels (``5``, ``"Priora"``, ...) to the model's class indices."""

    def __init__(self, label_values: list, class_names: list[str], local: list[str] | None = None):
        self.table: dict[str, int] = {}
        for names in (class_names, local or [], [str(v) for v in label_values]):
            for i, name in enumerate(names):
                self.table[str(name)] = i
        self.known = [str(v) for v in label_values]

    def __call__(self, raw: list, source: str) -> np.ndarray:
        unknown = sorted({str(r) for r in raw} - set(self.table))
        if unknown:
            raise DataError(
                f"{source}: labels {unknown[:8]} are not classes of this model "
                f"(it knows {self.known[:12]}{' ...' if len(self.known) > 12 else ''})"
            )
        return np.array([self.table[str(r)] for r in raw], dtype=np.int64)


def _folder_images(folder: Path) -> tuple[list[str], list[str]]:
    """Every image below ``folder``, ordered by relative path (natural order: 9 before 10)."""
    ids = sorted(
        (PurePosixPath(p.relative_to(folder)).as_posix() for p in list_images(folder)),
        key=natural_key,
    )
    return ids, [str(folder / i) for i in ids]


def _has_class_folders(folder: Path) -> bool:
    return any(
        d.is_dir() and any(is_image_name(f.name) for f in d.iterdir()) for d in folder.iterdir()
    )


def _labelled_dataset(root: Path, match: LabelMatcher) -> InputSet:
    index = (
        read_kaggle(root, "none") if (root / "train.csv").is_file() else read_folders(root, "none")
    )
    raw = [index.label_values[i] for i in index.train["label"]]
    labels = match(raw, str(root))
    return InputSet(index.train["id"].tolist(), index.train["path"].tolist(), labels, str(root))


def _unlabelled(p: Path) -> InputSet:
    if p.is_file() and p.suffix.lower() == ".csv":
        df = read_table(p)
        col = pick_column(df, PATH_COLUMNS, "path", p)
        paths = [str(q if Path(q).is_absolute() else p.parent / q) for q in df[col]]
        return InputSet(df[col].tolist(), paths, source=str(p))
    if p.is_file():
        return InputSet([p.name], [str(p)], source=str(p))
    if (p / "train.csv").is_file():
        index = read_kaggle(p, "none")
        if len(index.test):
            return InputSet(
                index.test["id"].tolist(),
                index.test["path"].tolist(),
                source=str(p),
                sample_submission=index.sample_submission,
            )
        log.info("%s: a Kaggle dataset without test images; predicting its training images", p)
        return InputSet(index.train["id"].tolist(), index.train["path"].tolist(), source=str(p))
    ids, paths = _folder_images(p)
    return InputSet(ids, paths, source=str(p))


def read_labels_csv(path: str | Path) -> dict[str, str]:
    """``Id -> raw label`` from a CSV such as Kaggle's train.csv or a test-labels.csv."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: labels CSV not found")
    df = read_table(path)
    id_col = pick_column(df, ID_COLUMNS, "id", path)
    label_col = pick_column(df, LABEL_COLUMNS, "label", path)
    return dict(zip(df[id_col], df[label_col], strict=True))


def _attach_labels(items: InputSet, labels_csv: str | Path, match: LabelMatcher) -> InputSet:
    table = read_labels_csv(labels_csv)
    by_name = {PurePosixPath(k).name: v for k, v in table.items()}
    raw = [table.get(i, by_name.get(PurePosixPath(i).name)) for i in items.ids]
    have = [r is not None for r in raw]
    if not any(have):
        raise DataError(
            f"{labels_csv}: none of its ids match the {len(items)} input images "
            f"(e.g. input id {items.ids[0]!r}, labels id {next(iter(table), None)!r})"
        )
    if not all(have):
        log.warning(
            "%d of %d input images have no label in %s; they are predicted but not scored",
            have.count(False),
            len(items),
            labels_csv,
        )
    labels = np.full(len(items), -1, dtype=np.int64)
    labels[np.flatnonzero(have)] = match([r for r in raw if r is not None], str(labels_csv))
    items.labels = labels
    return items


def collect_inputs(
    source: str | Path,
    *,
    labelled: bool = False,
    labels_csv: str | Path | None = None,
    match: LabelMatcher | None = None,
) -> InputSet:
    """The images behind ``source`` (see the module docstring), labelled if asked to be."""
    p = resolve(source)  # missing path -> DataError; zip -> unpacked folder
    if labelled and match is None:
        raise ValueError("labelled inputs need a LabelMatcher for the model's classes")
    if labels_csv is not None:
        items = _unlabelled(p)
        if not len(items):
            raise DataError(f"{source}: no images found")
        return _attach_labels(items, labels_csv, match)
    if labelled:
        if p.is_file() and p.suffix.lower() == ".csv":
            df = read_table(p)
            label_col = pick_column(df, LABEL_COLUMNS, "label", p)
            items = _unlabelled(p)
            items.labels = match(df[label_col].tolist(), str(p))
            return items
        if p.is_dir() and ((p / "train.csv").is_file() or _has_class_folders(p)):
            return _labelled_dataset(p, match)
        raise DataError(
            f"{source}: evaluation needs labels: a Kaggle-layout folder (train.csv), a folder "
            "per class, a CSV of path,label, or labels=<CSV of Id,Category>"
        )
    items = _unlabelled(p)
    if not len(items):
        raise DataError(f"{source}: no images found (extensions: jpg, jpeg, png, webp, bmp, ...)")
    return items
