"""What a batch job predicts: the ``(id, path)`` rows behind its INPUT arguments, streamed.

A million-row list or a folder tree is read in chunks of :data:`CHUNK` rows (the output folder
cuts them into parts as they come, :func:`carclf.batch.output.write_inputs`), so the driver never
holds the whole listing:

* a folder: walked one directory at a time (sub-folders and files in natural order), ids = paths
  relative to it, as ``predict.py`` names them; a zip is unpacked once and read as a folder; a
  Kaggle-layout folder (``train.csv``) or one image goes through
  :func:`carclf.data.inputs.collect_inputs`, as ``predict.py`` reads it;
* a CSV of paths, read in chunks (a ``path``/``filepath``/``file`` column, relative paths
  relative to the CSV);
* Parquet files of paths (several files, or glob patterns such as ``lists/*.parquet``), read a
  row group at a time; a list may itself be a URI (``s3://bucket/lists/a.parquet``).

A path may be a local path or a URI that pyarrow's file systems read (``s3://``, ``gs://``,
``hdfs://``, ``file://``: what Ray Data reads natively); relative paths in a list are relative to
the list. Ids are the paths as written; an id listed twice is predicted once.
"""

from __future__ import annotations

import glob
import logging
import os
import posixpath
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from carclf.data.images import is_image_name
from carclf.data.inputs import collect_inputs
from carclf.data.layouts import PATH_COLUMNS, natural_key, pick_column, resolve
from carclf.errors import DataError

log = logging.getLogger(__name__)

GLOB_CHARS = "*?["
CHUNK = 50_000  # rows per chunk of a streamed listing


def _is_uri(s: str) -> bool:
    return "://" in s


def _expand(sources: list[str]) -> list[str]:
    """Glob patterns expanded (sorted); plain paths and URIs kept as given."""
    out = []
    for s in sources:
        if not _is_uri(s) and any(c in s for c in GLOB_CHARS) and not Path(s).exists():
            hits = sorted(glob.glob(os.path.expanduser(s), recursive=True))
            if not hits:
                raise DataError(f"{s}: no file matches this pattern")
            out += hits
        else:
            out.append(s)
    return out


def _is_parquet(path: str) -> bool:
    return Path(path).suffix.lower() in (".parquet", ".pq")


def _frame(ids: list[str], paths: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "path": paths})


def _absolute(base: str, q: str) -> str:
    """``q`` as written if absolute or a URI, else relative to the list's folder ``base``."""
    if _is_uri(q) or os.path.isabs(q):
        return q
    return posixpath.join(base, q) if _is_uri(base) else os.path.join(base, q)


def walk_folder(folder: Path) -> Iterator[pd.DataFrame]:
    """Every image below ``folder`` in chunks, one directory at a time (no full listing)."""
    ids: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort(key=natural_key)
        rel = Path(root).relative_to(folder).as_posix()
        for name in sorted(filter(is_image_name, files), key=natural_key):
            ids.append(name if rel == "." else f"{rel}/{name}")
            if len(ids) >= CHUNK:
                yield _frame(ids, [str(folder / i) for i in ids])
                ids = []
    if ids:
        yield _frame(ids, [str(folder / i) for i in ids])


def read_csv_paths(path: Path) -> Iterator[pd.DataFrame]:
    """``id, path`` chunks of a CSV of image paths."""
    try:
        reader = pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=CHUNK)
        for chunk in reader:
            col = pick_column(chunk, PATH_COLUMNS, "path", path)
            ids = chunk[col].tolist()
            yield _frame(ids, [_absolute(str(path.parent), q) for q in ids])
    except DataError:
        raise
    except Exception as e:  # pandas raises many types for malformed CSVs
        raise DataError(f"{path}: cannot read CSV ({e})") from None


def _open_parquet(source: str):
    import pyarrow.parquet as pq

    if _is_uri(source):
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(source)
        return pq.ParquetFile(filesystem.open_input_file(inner))
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return pq.ParquetFile(path)


def read_parquet_paths(source: str | os.PathLike) -> Iterator[pd.DataFrame]:
    """``id, path`` chunks of one Parquet file of image paths, a row group at a time."""
    source = str(source)
    base = posixpath.dirname(source) if _is_uri(source) else str(Path(source).expanduser().parent)
    try:
        f = _open_parquet(source)
        col = pick_column(pd.DataFrame(columns=f.schema_arrow.names), PATH_COLUMNS, "path", source)
        for batch in f.iter_batches(batch_size=CHUNK, columns=[col]):
            ids = [str(q) for q in batch.column(0).to_pylist()]
            yield _frame(ids, [_absolute(base, q) for q in ids])
    except DataError:
        raise
    except Exception as e:  # pyarrow raises its own types for files that are not Parquet
        raise DataError(f"{source}: cannot read Parquet ({type(e).__name__}: {e})") from None


def _one_source(source: str) -> Iterator[pd.DataFrame]:
    p = resolve(source)  # missing path -> DataError; zip -> unpacked folder
    if p.is_file() and p.suffix.lower() == ".csv":
        yield from read_csv_paths(p)
    elif p.is_dir() and not (p / "train.csv").is_file():
        yield from walk_folder(p)
    else:  # one image, or a Kaggle-layout folder (its test images in submission order)
        items = collect_inputs(p)
        yield _frame(items.ids, items.paths)


def iter_inputs(sources: list[str | os.PathLike]) -> Iterator[pd.DataFrame]:
    """Every image to predict as chunks of ``id, path`` rows, in input order (ids not yet
    de-duplicated: :func:`carclf.batch.output.write_inputs` does that as they stream).

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
    chunks = (
        (c for s in parquet for c in read_parquet_paths(s)) if parquet else _one_source(sources[0])
    )
    where = sources[0] if len(sources) == 1 else f"{len(sources)} Parquet files"
    empty = True
    for chunk in chunks:
        if len(chunk):
            empty = False
            yield chunk
    if empty:
        raise DataError(f"{where}: no images listed")


def list_inputs(sources: list[str | os.PathLike]) -> pd.DataFrame:
    """The whole listing as one frame, ids unique (small inputs: tests, benchmarks)."""
    rows = pd.concat(list(iter_inputs(sources)), ignore_index=True)
    return rows[~rows["id"].duplicated()].reset_index(drop=True)
