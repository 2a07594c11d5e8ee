"""Extra labelled sets: more training photos from other folders, zips or CSVs (``data.extra``).

Another data set rarely numbers its classes like ours, so each set's labels go through a class
map (``data.extra_class_map``: a CSV of ``theirs,ours`` or a YAML mapping); without one, labels are
matched to ours by value or by name. Labels that map to nothing are dropped and counted; a set
none of whose labels map is an error naming the set.

Extra photos only ever join the *training* split. Before they do, every one is decoded (the data
check: unreadable files are reported and skipped) and hashed, and any photo whose bytes equal a
validation or test photo of the main data is removed and reported as leakage: a validation photo
in the training data inflates validation accuracy, a test photo with its true label leaks the
test. A pseudo-labelled CSV written by ``carclf.pseudo`` is the exception for *test* photos: its
labels are the model's guesses, not the truth (the point of pseudo-labelling), so they stay.

A pseudo-label CSV may also carry soft labels (``p:<label>`` columns, one per class); those rows
then train on the probabilities instead of the one label.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from carclf.data.check import check_file
from carclf.data.layouts import READERS, DatasetIndex, detect_layout, read_table, resolve
from carclf.errors import DataError
from carclf.io import write_json

log = logging.getLogger(__name__)

# Columns that mark a CSV written by ``python -m carclf.pseudo`` (labels from a model).
PSEUDO_COLUMNS = ("confidence", "pseudo_model")
SOFT_PREFIX = "p:"
REPORT_FILE = "data_check_extra.json"


def file_md5(path: str) -> str:
    """Hash of a file's bytes ('' when it cannot be read: such files are skipped elsewhere)."""
    try:
        return hashlib.md5(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def read_class_map(path: str | os.PathLike) -> dict[str, str | None]:
    """``their label -> our label`` from a CSV (first two columns) or a YAML mapping.

    An empty target (or YAML ``null``) drops that class explicitly.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.extra_class_map={path}: no such file")
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            table = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise DataError(f"{p}: not valid YAML ({e})") from None
        if not isinstance(table, dict):
            raise DataError(f"{p}: expected a mapping 'their label: our label'")
        return {str(k): (None if v in (None, "") else str(v)) for k, v in table.items()}
    df = read_table(p)
    if df.shape[1] < 2:
        raise DataError(f"{p}: expected two columns (their label, our label), got {list(df)}")
    a, b = df.columns[:2]
    return {str(k): (v or None) for k, v in zip(df[a], df[b], strict=True)}


def _our_labels(index: DatasetIndex) -> dict[str, int]:
    """Every way our classes are written (label value, name, local name) -> class index."""
    table: dict[str, int] = {}
    for names in (index.class_names, index.class_names_local or [], index.label_values):
        for i, name in enumerate(names):
            table.setdefault(str(name), i)
    return table


@dataclass
class ExtraSet:
    """One extra source after mapping and the check: its rows and what happened to the rest."""

    source: str
    rows: pd.DataFrame  # id, path, label (ours), weight, source, md5
    soft: np.ndarray | None  # (rows, K) probabilities, or None
    pseudo: bool
    found: int
    dropped: dict[str, int] = field(default_factory=dict)  # their label -> count (unmapped)
    bad_files: list[dict] = field(default_factory=list)
    leaked: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "source": self.source,
            "pseudo_labelled": self.pseudo,
            "images_found": self.found,
            "dropped_unmapped": sum(self.dropped.values()),
            "dropped_by_label": self.dropped,
            "unreadable": self.bad_files,
            "removed_as_leakage": self.leaked,
            "kept": len(self.rows),
            "kept_per_class": {str(k): int(v) for k, v in Counter(self.rows["label"]).items()},
        }


def _soft_targets(csv: Path, paths: pd.Series, index: DatasetIndex) -> np.ndarray | None:
    """``p:<label>`` columns of a pseudo-label CSV as an (N, K) array in our class order."""
    df = read_table(csv)
    cols = [c for c in df.columns if c.startswith(SOFT_PREFIX)]
    if not cols:
        return None
    ours = _our_labels(index)
    order = []
    for c in cols:
        key = c[len(SOFT_PREFIX) :]
        if key not in ours:
            raise DataError(f"{csv}: soft-label column {c!r} is not one of our classes")
        order.append(ours[key])
    probs = np.zeros((len(df), index.num_classes), dtype=np.float32)
    probs[:, order] = df[cols].astype(float).to_numpy()
    path_col = next(c for c in ("path", "file", "image", "Id", "id") if c in df.columns)
    full = [str(p if Path(p).is_absolute() else csv.parent / p) for p in df[path_col]]
    where = {p: i for i, p in enumerate(full)}
    return probs[[where[p] for p in paths]]


def read_extra_set(
    path: str,
    index: DatasetIndex,
    class_map: dict[str, str | None] | None,
    weight: float,
    workers: int = 4,
) -> ExtraSet:
    """Read, map and check one extra source (folder, zip or CSV)."""
    source = resolve(path)
    # not read_dataset: an extra set may hold a single class (e.g. a pseudo-label CSV)
    theirs = READERS[detect_layout(source)](source, class_map="none")
    ours = _our_labels(index)
    lookup: dict[int, int | None] = {}
    for k, value in enumerate(theirs.label_values):
        name = str(value)
        if class_map is not None:
            target = class_map.get(name, class_map.get(theirs.class_names[k]))
            lookup[k] = ours.get(target) if target is not None else None
        else:
            lookup[k] = ours.get(name, ours.get(theirs.class_names[k]))
    table = theirs.train.copy()
    table["ours"] = table["label"].map(lookup)
    unmapped = table["ours"].isna()
    dropped = Counter(str(theirs.label_values[k]) for k in table.loc[unmapped, "label"])
    if unmapped.all():
        how = "data.extra_class_map" if class_map is not None else "label value or class name"
        raise DataError(
            f"data.extra={path}: none of its labels {sorted(dropped)[:8]} map to our classes "
            f"(by {how}; ours are e.g. {index.label_values[:6]})"
        )
    table = table[~unmapped].reset_index(drop=True)
    checks = list(ThreadPoolExecutor(max_workers=workers).map(check_file, table["path"]))
    ok = np.array([c.ok for c in checks], dtype=bool)
    bad = [{"path": c.path, "error": c.error} for c in checks if not c.ok]
    rows = pd.DataFrame(
        {
            "id": table["id"].astype(str),
            "path": table["path"].astype(str),
            "label": table["ours"].astype(int),
            "weight": float(weight),
            "source": str(path),
            "md5": [c.md5 for c in checks],
        }
    )[ok].reset_index(drop=True)
    is_csv = source.is_file() and source.suffix.lower() == ".csv"
    pseudo = is_csv and all(c in read_table(source).columns for c in PSEUDO_COLUMNS)
    soft = _soft_targets(source, rows["path"], index) if pseudo else None
    return ExtraSet(str(path), rows, soft, pseudo, len(theirs.train), dict(dropped), bad)


@dataclass
class ExtraData:
    """All extra sets of a run; :meth:`remove_leaks` runs once the validation split is known."""

    sets: list[ExtraSet]
    report_path: Path | None = None

    @property
    def rows(self) -> pd.DataFrame:
        return pd.concat([s.rows for s in self.sets], ignore_index=True)

    @property
    def soft(self) -> np.ndarray | None:
        """(rows, K) soft targets, NaN for rows without one; None when no set has any."""
        if all(s.soft is None for s in self.sets):
            return None
        k = next(s.soft.shape[1] for s in self.sets if s.soft is not None)
        parts = [
            s.soft if s.soft is not None else np.full((len(s.rows), k), np.nan, np.float32)
            for s in self.sets
        ]
        return np.concatenate(parts)

    def remove_leaks(self, val: pd.DataFrame, test: pd.DataFrame, train: pd.DataFrame) -> None:
        """Drop extra photos identical (bytes) to a validation or test photo, and to a training
        photo (no leak, but it would count twice); record each, then write the report."""
        protected = {}
        for split, frame in (("train", train), ("test", test), ("val", val)):
            for path in frame["path"]:
                protected[file_md5(path)] = (split, str(path))
        protected.pop("", None)
        for s in self.sets:
            keep = np.ones(len(s.rows), dtype=bool)
            for i, (path, md5) in enumerate(zip(s.rows["path"], s.rows["md5"], strict=True)):
                hit = protected.get(md5)
                if hit is None or (s.pseudo and hit[0] == "test"):
                    continue
                keep[i] = False
                s.leaked.append({"path": path, "same_as": hit[1], "split": hit[0]})
            s.rows = s.rows[keep].reset_index(drop=True)
            s.soft = None if s.soft is None else s.soft[keep]
            if s.leaked:
                log.warning(
                    "data.extra %s: removed %d photos identical to main-data photos (%s); see %s",
                    s.source,
                    len(s.leaked),
                    dict(Counter(x["split"] for x in s.leaked)),
                    self.report_path or "the log",
                )
        self.write_report()
        print(self.summary(), flush=True)

    def summary(self) -> str:
        lines = ["extra training data (data.extra):"]
        for s in self.sets:
            d = s.summary()
            lines.append(
                f"  {s.source}: {d['images_found']} images, {d['dropped_unmapped']} dropped "
                f"(label not mapped: {dict(sorted(s.dropped.items())[:6])}"
                f"{' ...' if len(s.dropped) > 6 else ''}), {len(s.bad_files)} unreadable, "
                f"{len(s.leaked)} removed as duplicates of main data, {d['kept']} kept"
                + (
                    " (pseudo-labels" + (", soft)" if s.soft is not None else ")")
                    if s.pseudo
                    else ""
                )
            )
        return "\n".join(lines)

    def write_report(self) -> None:
        if self.report_path is None:
            return
        write_json(self.report_path, [s.summary() for s in self.sets], indent=1)


def read_extra(
    paths,
    index: DatasetIndex,
    *,
    class_map: str | None = None,
    weight: float = 1.0,
    run_dir: str | os.PathLike | None = None,
) -> ExtraData | None:
    """The ``data.extra`` sets of a run (None when there are none), read, mapped and checked."""
    paths = [str(p) for p in (paths or [])]
    if not paths:
        return None
    if weight <= 0:
        raise DataError(f"data.extra_weight={weight}: must be > 0")
    table = read_class_map(class_map) if class_map else None
    sets = [read_extra_set(p, index, table, weight) for p in paths]
    report = Path(run_dir) / REPORT_FILE if run_dir is not None else None
    return ExtraData(sets, report)
