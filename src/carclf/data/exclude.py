"""``data.exclude``: train without the photos a CSV lists (e.g. the label doctor's flags).

The CSV needs a ``path`` column (absolute, or relative to the dataset root) or an ``id`` column
(the dataset's own ids, as in train.csv); ``label_issues.csv`` from :mod:`carclf.inspect.doctor` has
both. Only labelled (train) rows are removed: test photos are never trained on. A listed photo
that is not in the dataset is counted in a warning; a CSV none of whose rows match is an error,
since it almost always means the CSV belongs to other data.
"""

from __future__ import annotations

import logging
from pathlib import Path

from carclf.data.layouts import DatasetIndex, read_table
from carclf.errors import DataError

log = logging.getLogger(__name__)


def excluded_rows(index: DatasetIndex, csv: str | Path):
    """Boolean mask over ``index.train``: True for the rows ``csv`` lists."""
    csv = Path(csv).expanduser()
    if not csv.is_file():
        raise DataError(f"data.exclude={csv}: no such file")
    table = read_table(csv)
    if "path" in table.columns:
        root = Path(index.root)
        listed = {str(p if Path(p).is_absolute() else root / p) for p in table["path"] if p}
        mask = index.train["path"].astype(str).isin(listed)
        wanted = len(set(table["path"]) - {""})
    elif "id" in table.columns:
        ids = set(table["id"]) - {""}
        mask = index.train["id"].astype(str).isin(ids)
        wanted = len(ids)
    else:
        raise DataError(
            f"data.exclude={csv}: needs a 'path' or an 'id' column, found {list(table.columns)}"
        )
    found = int(mask.sum())
    if wanted and not found:
        raise DataError(
            f"data.exclude={csv}: none of its {wanted} photos is in {index.root}; "
            "is it the list of another dataset?"
        )
    if found < wanted:
        log.warning(
            "data.exclude=%s: %d of %d listed photos are not in the dataset",
            csv,
            wanted - found,
            wanted,
        )
    return mask.to_numpy()


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
