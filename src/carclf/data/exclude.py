"""``data.exclude`` and ``data.relabel``: act on a list of photos before training (e.g. the label
doctor's flags, or the decisions made on its review page).

Either CSV needs a ``path`` column (absolute, or relative to the dataset root) or an ``id``
column (the dataset's own ids, as in train.csv); ``label_issues.csv`` and ``decisions.csv`` from
:mod:`carclf.inspect.doctor` have both.

* ``data.exclude=CSV`` trains without the listed photos;
* ``data.relabel=CSV`` gives the listed photos the label in its ``label`` column (a label value
  as in train.csv or the class folder's name), or, for a CSV without one (``label_issues.csv``),
  the doctor's ``suggested_label``.

A CSV with a ``decision`` column (the review page's ``decisions.csv``: keep / relabel /
exclude) is read by decision: ``data.exclude`` takes its ``exclude`` rows and ``data.relabel``
its ``relabel`` rows, so one file serves both. Only labelled (train) rows change: test photos are
never trained on. Listed photos that are not in the dataset (moved, deleted, renamed) are
reported with the first few names; a CSV none of whose rows match is an error, since it almost
always means the CSV belongs to other data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from carclf.data.layouts import DatasetIndex, read_table
from carclf.errors import DataError

log = logging.getLogger(__name__)

DECISIONS = ("keep", "relabel", "exclude")
SHOWN_MISSING = 3


def _listed(index: DatasetIndex, csv: str | Path, key: str, decision: str) -> tuple:
    """The rows of ``csv`` meant for ``key`` (``data.exclude``/``data.relabel``), and for each
    of them the position of its photo in ``index.train`` (-1: not in the dataset)."""
    csv = Path(csv).expanduser()
    if not csv.is_file():
        raise DataError(f"{key}={csv}: no such file")
    table = read_table(csv)
    if "decision" in table.columns:
        bad = sorted(set(table["decision"]) - set(DECISIONS) - {""})
        if bad:
            raise DataError(
                f"{key}={csv}: unknown decision(s) {bad}; expected one of {list(DECISIONS)}"
            )
        table = table[table["decision"] == decision]
    if "path" in table.columns:
        root = Path(index.root)
        table = table[table["path"] != ""]
        wanted = [str(p if Path(p).is_absolute() else root / p) for p in table["path"]]
        ours = index.train["path"].astype(str)
    elif "id" in table.columns:
        table = table[table["id"] != ""]
        wanted, ours = list(table["id"]), index.train["id"].astype(str)
    else:
        raise DataError(
            f"{key}={csv}: needs a 'path' or an 'id' column, found {list(table.columns)}"
        )
    where = pd.Series(np.arange(len(ours)), index=ours.to_numpy())
    where = where[~where.index.duplicated()]
    pos = where.reindex(wanted).fillna(-1).astype(int).to_numpy()
    _report_missing(index, csv, key, wanted, pos)
    return table.reset_index(drop=True), pos


def _report_missing(index, csv, key: str, wanted: list, pos: np.ndarray) -> None:
    missing = [w for w, p in zip(wanted, pos, strict=True) if p < 0]
    if wanted and len(missing) == len(wanted):
        raise DataError(
            f"{key}={csv}: none of its {len(wanted)} photos is in {index.root}; "
            "is it the list of another dataset?"
        )
    if missing:
        first = ", ".join(Path(m).name for m in missing[:SHOWN_MISSING])
        more = " ..." if len(missing) > SHOWN_MISSING else ""
        message = (
            f"{key}={csv}: {len(missing)} of {len(wanted)} listed photos are not in the dataset "
            f"(moved or deleted?): {first}{more}"
        )
        log.warning(message)
        print(f"warning: {message}", flush=True)


def excluded_rows(index: DatasetIndex, csv: str | Path) -> np.ndarray:
    """Boolean mask over ``index.train``: True for the rows ``csv`` lists (for exclusion)."""
    _, pos = _listed(index, csv, "data.exclude", "exclude")
    mask = np.zeros(len(index.train), dtype=bool)
    mask[pos[pos >= 0]] = True
    return mask


def apply_exclude(index: DatasetIndex, csv: str | Path | None) -> DatasetIndex:
    """``index`` without the labelled photos ``csv`` lists (``index`` itself when csv is None)."""
    if not csv:
        return index
    mask = excluded_rows(index, csv)
    log.info("data.exclude=%s: leaving out %d labelled photos", csv, int(mask.sum()))
    print(
        f"data.exclude: leaving out {int(mask.sum())} labelled photos listed in {csv}", flush=True
    )
    return index.drop(index.train["path"][mask].tolist())


def new_labels(index: DatasetIndex, csv: str | Path) -> dict[int, int]:
    """Row of ``index.train`` -> its new class number, as ``csv`` asks (for ``data.relabel``)."""
    table, pos = _listed(index, csv, "data.relabel", "relabel")
    column = next((c for c in ("label", "suggested_label") if c in table.columns), None)
    if column is None:
        raise DataError(
            f"data.relabel={csv}: needs a 'label' (or 'suggested_label') column with the new "
            f"labels, found {list(table.columns)}"
        )
    number = {str(v): k for k, v in enumerate(index.label_values)}
    number |= {name: k for k, name in enumerate(index.class_names) if name not in number}
    unknown = sorted({str(v) for v in table[column]} - set(number))
    if unknown:
        raise DataError(
            f"data.relabel={csv}: label(s) {unknown[:5]} are not classes of {index.root} "
            f"(its labels: {[str(v) for v in index.label_values[:8]]}"
            f"{' ...' if len(index.label_values) > 8 else ''})"
        )
    return {int(p): number[str(v)] for p, v in zip(pos, table[column], strict=True) if p >= 0}


def apply_relabel(index: DatasetIndex, csv: str | Path | None) -> DatasetIndex:
    """``index`` with the labels ``csv`` gives (``index`` itself when csv is None)."""
    if not csv:
        return index
    changes = new_labels(index, csv)
    labels = index.train["label"].to_numpy().copy()
    rows = np.fromiter(changes, dtype=int, count=len(changes))
    labels[rows] = [changes[r] for r in rows]
    changed = int((labels != index.train["label"].to_numpy()).sum())
    print(f"data.relabel: {changed} labelled photos get the label listed in {csv}", flush=True)
    return DatasetIndex(**{**index.__dict__, "train": index.train.assign(label=labels)})
