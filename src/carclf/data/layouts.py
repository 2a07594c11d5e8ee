"""Dataset layouts: the competition's Kaggle layout, a folder per class, or a CSV of path,label.

Every reader returns the same :class:`DatasetIndex`, so the rest of carclf never asks where the
photos came from. ``read_dataset`` picks the reader by looking at the path (``layout="auto"``);
zips are unpacked once into a cache (see :mod:`carclf.data.archive`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from carclf.data.archive import data_root, unpack
from carclf.data.classmaps import get_class_map
from carclf.data.images import is_image_name
from carclf.errors import DataError

log = logging.getLogger(__name__)

TEST_DIRS = ("test_upload", "test")
SAMPLE_SUBMISSIONS = ("sample-submission.csv", "sample_submission.csv")
PATH_COLUMNS = ("path", "filepath", "file", "filename", "image", "Id", "id")
LABEL_COLUMNS = ("label", "class", "category", "Category", "class_name")


@dataclass
class DatasetIndex:
    """What carclf knows about a dataset, independent of its layout.

    Attributes:
        root: the folder the paths are relative to (the unpacked folder for a zip).
        layout: which reader produced it.
        train: one row per labelled image: ``id``, ``path`` (absolute), ``label`` (0..K-1).
        test: one row per unlabelled image, in submission order: ``id``, ``path``; may be empty.
        class_names: K display names, index = label.
        class_names_local: K names in the data's own language, where a class map gives them.
        label_values: K labels as written in the source (what a submission must contain).
        sample_submission: the sample submission file, if the layout has one.
        missing: ids listed in a CSV whose file does not exist.
        unlisted: image files under the train folder that no CSV row names.
    """

    root: Path
    layout: str
    train: pd.DataFrame
    test: pd.DataFrame
    class_names: list[str]
    label_values: list
    class_names_local: list[str] | None = None
    sample_submission: Path | None = None
    missing: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def drop(self, bad_paths) -> DatasetIndex:
        """A copy without the given (unreadable) files, in train and test alike."""
        bad = {str(p) for p in bad_paths}
        if not bad:
            return self
        keep_train = ~self.train["path"].astype(str).isin(bad)
        keep_test = ~self.test["path"].astype(str).isin(bad)
        return DatasetIndex(
            **{
                **self.__dict__,
                "train": self.train[keep_train].reset_index(drop=True),
                "test": self.test[keep_test].reset_index(drop=True),
            }
        )


def natural_key(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(s))]


def read_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises many types for malformed CSVs
        raise DataError(f"{path}: cannot read CSV ({e})") from None


def pick_column(df: pd.DataFrame, candidates, what: str, source: Path) -> str:
    for c in candidates:
        if c in df.columns:
            return c
    raise DataError(
        f"{source}: no {what} column; expected one of {list(candidates)}, found {list(df.columns)}"
    )


def _encode_labels(raw: pd.Series) -> tuple[pd.Series, list]:
    """Map source labels to 0..K-1, numeric labels in numeric order, names in natural order."""
    values = sorted(raw.unique(), key=natural_key)
    if all(re.fullmatch(r"-?\d+", v) for v in values):
        values = sorted(values, key=int)
        ints = [int(v) for v in values]
        mapping = {v: i for i, v in enumerate(values)}
        return raw.map(mapping).astype(int), ints
    mapping = {v: i for i, v in enumerate(values)}
    return raw.map(mapping).astype(int), list(values)


def list_images(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.rglob("*") if p.is_file() and is_image_name(p.name)),
        key=lambda p: natural_key(p.name),
    )


def _class_names(
    root: Path, label_values: list, class_map: str
) -> tuple[list[str], list[str] | None]:
    """Names from classes.csv, a named class map, or the labels themselves."""
    if class_map not in ("auto", "none") and not class_map.endswith(".csv"):
        names = get_class_map(class_map)
        if len(names) < len(label_values):
            raise DataError(
                f"class map {class_map!r} has {len(names)} names but the data has {len(label_values)} classes"
            )
        return [names[int(v)][0] for v in label_values], [names[int(v)][1] for v in label_values]
    csv = Path(class_map) if class_map.endswith(".csv") else root / "classes.csv"
    if class_map != "none" and csv.is_file():
        df = read_table(csv)
        key = pick_column(df, ("Category", "category", "label", "id", "class_id"), "class id", csv)
        name = pick_column(df, ("name", "class_name", "Name"), "class name", csv)
        table = dict(zip(df[key], df[name], strict=True))
        return [table.get(str(v), str(v)) for v in label_values], None
    if (
        class_map == "auto"
        and label_values == list(range(10))
        and root.joinpath("train.csv").is_file()
    ):
        names = get_class_map("sfdl")
        log.info(
            "10 classes 0..9 in the Kaggle layout: using the sf-dl-car-classification class names"
        )
        return [n for n, _ in names], [loc for _, loc in names]
    return [str(v) for v in label_values], None


def _test_frame(root: Path) -> tuple[pd.DataFrame, Path | None]:
    """Test images in sample-submission order where there is one, else sorted by name."""
    test_dir = next((root / d for d in TEST_DIRS if (root / d).is_dir()), None)
    sample = next((root / s for s in SAMPLE_SUBMISSIONS if (root / s).is_file()), None)
    if sample is not None:
        df = read_table(sample)
        id_col = pick_column(df, ("Id", "id", "ID", "image", "filename"), "id", sample)
        ids = df[id_col].tolist()
        folder = test_dir or root
        return pd.DataFrame({"id": ids, "path": [str(folder / i) for i in ids]}), sample
    if test_dir is None:
        return pd.DataFrame({"id": [], "path": []}), None
    files = list_images(test_dir)
    return pd.DataFrame(
        {"id": [str(p.relative_to(test_dir)) for p in files], "path": [str(p) for p in files]}
    ), None


def read_kaggle(root: Path, class_map: str = "auto") -> DatasetIndex:
    """train.csv (Id,Category) + train/<Category>/<Id>; test_upload/ + sample-submission.csv."""
    csv = root / "train.csv"
    df = read_table(csv)
    id_col = pick_column(df, ("Id", "id", "ID", "image", "filename"), "id", csv)
    label_col = pick_column(df, LABEL_COLUMNS, "label", csv)
    if df.empty:
        raise DataError(f"{csv}: no rows")
    train_dir = root / "train"
    labels, label_values = _encode_labels(df[label_col])
    paths = []
    for i, c in zip(df[id_col], df[label_col], strict=True):
        nested = train_dir / c / i
        paths.append(
            str(nested if nested.exists() or not (train_dir / i).exists() else train_dir / i)
        )
    train = pd.DataFrame({"id": df[id_col], "path": paths, "label": labels})
    exists = train["path"].map(lambda p: Path(p).is_file())
    missing = train.loc[~exists, "path"].tolist()
    listed = set(train["path"])
    unlisted = [str(p) for p in list_images(train_dir)] if train_dir.is_dir() else []
    unlisted = [p for p in unlisted if p not in listed]
    test, sample = _test_frame(root)
    names, local = _class_names(root, label_values, class_map)
    return DatasetIndex(
        root,
        "kaggle",
        train[exists].reset_index(drop=True),
        test,
        names,
        label_values,
        local,
        sample,
        missing,
        unlisted,
    )


def read_folders(root: Path, class_map: str = "auto") -> DatasetIndex:
    """root/<class>/*.jpg (or root/train/<class>/*.jpg), optional loose test images in root/test/."""
    base = root / "train" if (root / "train").is_dir() else root
    class_dirs = sorted(
        (
            d
            for d in base.iterdir()
            if d.is_dir() and d.name not in TEST_DIRS and not d.name.startswith(".")
        ),
        key=lambda d: natural_key(d.name),
    )
    rows = [(str(p.relative_to(base)), str(p), d.name) for d in class_dirs for p in list_images(d)]
    if not rows:
        raise DataError(
            f"{root}: no images found in class folders (expected {base}/<class name>/<image>)"
        )
    df = pd.DataFrame(rows, columns=["id", "path", "raw"])
    labels, label_values = _encode_labels(df["raw"])
    train = pd.DataFrame({"id": df["id"], "path": df["path"], "label": labels})
    test, sample = _test_frame(root)
    names, local = _class_names(root, label_values, class_map)
    return DatasetIndex(root, "folders", train, test, names, label_values, local, sample)


def read_csv_list(csv: Path, class_map: str = "auto") -> DatasetIndex:
    """A CSV with a path column and a label column; relative paths are relative to the CSV."""
    df = read_table(csv)
    if df.empty:
        raise DataError(f"{csv}: no rows")
    path_col = pick_column(df, PATH_COLUMNS, "path", csv)
    label_col = pick_column(df, LABEL_COLUMNS, "label", csv)
    root = csv.parent
    paths = [str(p if Path(p).is_absolute() else root / p) for p in df[path_col]]
    labels, label_values = _encode_labels(df[label_col])
    train = pd.DataFrame({"id": df[path_col], "path": paths, "label": labels})
    exists = train["path"].map(lambda p: Path(p).is_file())
    names, local = _class_names(root, label_values, class_map)
    empty = pd.DataFrame({"id": [], "path": []})
    return DatasetIndex(
        root,
        "csv",
        train[exists].reset_index(drop=True),
        empty,
        names,
        label_values,
        local,
        None,
        train.loc[~exists, "path"].tolist(),
    )


READERS: dict[str, Callable[..., DatasetIndex]] = {
    "kaggle": read_kaggle,
    "folders": read_folders,
    "csv": read_csv_list,
}


def detect_layout(path: Path) -> str:
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv"
    if (path / "train.csv").is_file():
        return "kaggle"
    return "folders"


def resolve(path: str | Path) -> Path:
    """A readable folder (or CSV) for ``path``: zips are unpacked into the cache."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_file() and p.suffix.lower() == ".zip":
        return data_root(unpack(p))
    return p


def read_dataset(path: str | Path, layout: str = "auto", class_map: str = "auto") -> DatasetIndex:
    """Read any supported dataset (folder, zip or CSV) into a :class:`DatasetIndex`."""
    p = resolve(path)
    layout = detect_layout(p) if layout == "auto" else layout
    if layout not in READERS:
        raise DataError(
            f"unknown data layout {layout!r}; choose one of {sorted(READERS)} or 'auto'"
        )
    index = READERS[layout](p, class_map=class_map)
    if index.num_classes < 2:
        raise DataError(
            f"{path}: found {index.num_classes} class; at least 2 are needed to train a classifier"
        )
    return index
