"""What a batch job predicts: the ``(id, path)`` rows behind its INPUT arguments.

One folder, zip, CSV of paths or image file goes through :func:`carclf.data.inputs.collect_inputs`,
exactly as ``predict.py`` reads it (ids are paths relative to the folder, or as the CSV writes
them). Parquet files of paths (several files, or glob patterns such as ``lists/*.parquet``) are
read here: a path column (``path``, ``filepath``, ``file``, ... as in CSVs), relative paths
relative to the Parquet file, ids = the paths as written.

The id is the key of exactly-once output (Ray Data's checkpoint skips ids already written), so
it must be unique: a path listed twice is predicted once.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

import pandas as pd

from carclf.data.inputs import collect_inputs
from carclf.data.layouts import PATH_COLUMNS, pick_column
from carclf.errors import DataError

log = logging.getLogger(__name__)

GLOB_CHARS = "*?["


def _expand(sources: list[str]) -> list[str]:
    """Glob patterns expanded (sorted); plain paths kept as given."""
    out = []
    for s in sources:
        if any(c in s for c in GLOB_CHARS) and not Path(s).exists():
            hits = sorted(glob.glob(os.path.expanduser(s), recursive=True))
            if not hits:
                raise DataError(f"{s}: no file matches this pattern")
            out += hits
        else:
            out.append(s)
    return out


def _is_parquet(path: str) -> bool:
    return Path(path).suffix.lower() in (".parquet", ".pq")


def read_parquet_paths(path: Path) -> pd.DataFrame:
    """``id, path`` rows from one Parquet file of image paths."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        import pyarrow.parquet as pq

        columns = pq.read_schema(path).names
        col = pick_column(pd.DataFrame(columns=columns), PATH_COLUMNS, "path", path)
        df = pq.read_table(path, columns=[col]).to_pandas()
    except DataError:
        raise
    except Exception as e:  # pyarrow raises its own types for files that are not Parquet
        raise DataError(f"{path}: cannot read Parquet ({type(e).__name__}: {e})") from None
    ids = df[col].astype(str)
    paths = [q if os.path.isabs(q) else str(path.parent / q) for q in ids]
    return pd.DataFrame({"id": ids.tolist(), "path": paths})


def list_inputs(sources: list[str | os.PathLike]) -> pd.DataFrame:
    """Every image to predict as ``id, path`` rows, ids unique, in input order.

    Raises:
        DataError: a missing input, an unreadable list, or no images at all.
    """
    sources = _expand([str(s) for s in sources])
    if not sources:
        raise DataError("no input given")
    parquet = [s for s in sources if _is_parquet(s)]
    if parquet and len(parquet) != len(sources):
        other = next(s for s in sources if not _is_parquet(s))
        raise DataError(f"{other}: mix of Parquet lists and other inputs; give one kind")
    if not parquet and len(sources) > 1:
        raise DataError(
            f"{len(sources)} inputs given ({sources[0]}, {sources[1]}, ...): several inputs must "
            "be Parquet lists of paths; give one folder, zip or CSV"
        )
    if parquet:
        frames = [read_parquet_paths(Path(s).expanduser()) for s in parquet]
        rows = pd.concat(frames, ignore_index=True)
        where = parquet[0] if len(parquet) == 1 else f"{len(parquet)} Parquet files"
    else:
        items = collect_inputs(sources[0])
        rows = pd.DataFrame({"id": items.ids, "path": items.paths})
        where = sources[0]
    if rows.empty:
        raise DataError(f"{where}: no images listed")
    dup = rows["id"].duplicated()
    if dup.any():
        log.warning("%s: %d paths listed more than once; each is predicted once", where, dup.sum())
        rows = rows[~dup].reset_index(drop=True)
    return rows
