"""The output folder of a batch job, and what makes every input land in it exactly once.

Layout (Parquet readers skip names that start with ``_`` or ``.``, so
``pandas.read_parquet(OUTPUT)`` sees the predictions only)::

    OUTPUT/predictions/r0001-000000.parquet  one row per input of that part: id, path, labels,
                                             names, probabilities, unknown, open_set_score
                                             (null: no open-set data), error, model_id,
                                             model_version
    OUTPUT/_inputs/r0001-000000.parquet      the ``id, path`` rows of that part (this run's)
    OUTPUT/_carclf_batch.json                which model, backend and top-k wrote the predictions

Exactly once, by construction: the driver cuts the inputs not yet written into parts under
``_inputs`` before any prediction starts; the worker that predicts a part writes a temporary
file and renames it to the part's one name, so a part is either whole or absent, and a part
predicted twice (a task retried after its node was lost) replaces itself with the same rows.
A rerun (new run number) skips every id already in ``predictions``: after any crash and rerun,
by either runner (local or Ray), each input has exactly one row. The manifest keeps a rerun
from mixing two models' answers in one folder.

Ids are compared as 64-bit hashes (``pandas.util.hash_array``): 8 bytes per input in the
driver, whatever the length of the paths.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from carclf import __version__
from carclf.errors import CarclfError
from carclf.io import atomic_path, write_json
from carclf.models.bundle import BundleMeta

MANIFEST = "_carclf_batch.json"
PREDICTIONS = "predictions"
INPUTS = "_inputs"
PART = re.compile(r"^r(?P<run>\d+)-(?P<index>\d+)\.parquet$")


class OutputError(CarclfError):
    """The output folder cannot take this job's predictions."""


def model_id(meta: BundleMeta) -> str:
    """A short fingerprint of a trained model: its classes, contract and training timestamp."""
    blob = json.dumps(asdict(meta), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def model_version(meta: BundleMeta) -> str:
    """What a person calls this model's version: ``extra.version`` where training set one,
    else the bundle's creation time."""
    return str((meta.extra or {}).get("version") or meta.created or "unknown")


@dataclass
class Manifest:
    model: str  # the model path as given (for people); model_id decides
    model_id: str
    backend: str
    top_k: int
    carclf_version: str = __version__

    def clashes(self, old: Manifest) -> list[str]:
        """What differs between this job and the one that wrote ``old``."""
        keys = ("model_id", "backend", "top_k")
        return [
            f"{k} {getattr(old, k)!r} there, {getattr(self, k)!r} now"
            for k in keys
            if getattr(self, k) != getattr(old, k)
        ]


def prepare(out: Path, manifest: Manifest) -> None:
    """Create ``out`` or check that it holds this same job's earlier output; write the manifest.

    Raises:
        OutputError: ``out`` is a file, a folder of other things, or another model's output.
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    mpath = out / MANIFEST
    if (out / "_checkpoint").is_dir():  # Ray Data's checkpoint: parts named otherwise
        raise OutputError(f"{out}: written by an older carclf batch (Ray Data); use a new folder")
    if mpath.is_file():
        try:
            old = Manifest(**json.loads(mpath.read_text()))
        except (ValueError, TypeError) as e:
            raise OutputError(
                f"{mpath}: unreadable batch manifest ({e}); use a new folder"
            ) from None
        clash = manifest.clashes(old)
        if clash:
            raise OutputError(
                f"{out}: holds predictions of another job (model {old.model}; {', '.join(clash)}); "
                "give a new output folder, or delete this one to start over"
            )
    elif out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise OutputError(
            f"{out}: folder is not empty and is not a carclf batch output (no {MANIFEST})"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_json(mpath, asdict(manifest), indent=2)


def hash_ids(ids) -> np.ndarray:
    """64-bit hashes of ids (uint64), the same in every process and run."""
    return pd.util.hash_array(np.asarray(ids, dtype=object).astype(str).astype(object))


def part_files(out: Path) -> list[Path]:
    """The committed prediction parts, in name order."""
    folder = out / PREDICTIONS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if PART.match(p.name))


def done_hashes(out: Path) -> np.ndarray:
    """Sorted unique hashes of the ids that have a row (the ones a rerun skips)."""
    import pyarrow.parquet as pq

    parts = [
        hash_ids(pq.read_table(f, columns=["id"]).column(0).to_pylist()) for f in part_files(out)
    ]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)


def done_ids(out: Path) -> set[str]:
    """Ids with a row (small outputs: tests, benchmarks)."""
    df = read_predictions(out, ["id"])
    return set(df["id"])


def next_run(out: Path) -> int:
    """1 + the highest run number of the parts written so far."""
    runs = [int(PART.match(p.name)["run"]) for p in part_files(out)]
    return max(runs, default=0) + 1


def write_part(table, path: Path) -> None:
    """Write one part atomically: a hidden temporary, then a rename to its one name."""
    import pyarrow.parquet as pq

    with atomic_path(path, suffix=".tmp") as tmp:
        pq.write_table(table, tmp)


@dataclass
class Listing:
    """This run's parts (``_inputs`` files) and what the listing counted."""

    parts: list[Path] = field(default_factory=list)
    inputs: int = 0  # unique ids listed
    skipped: int = 0  # of them already written by an earlier run
    listed_twice: int = 0
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))

    @property
    def pending(self) -> int:
        return self.inputs - self.skipped


def write_inputs(out: Path, chunks: Iterable[pd.DataFrame], part_rows: int) -> Listing:
    """Cut the ``id, path`` chunks into parts of ``part_rows`` under ``out/_inputs`` as they
    stream in: ids seen before in the listing are dropped (a path listed twice is predicted
    once), ids already in ``predictions`` are counted as skipped. The old list is replaced."""
    folder = out / INPUTS
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for stale in (out / PREDICTIONS).glob(".*.tmp"):  # a writer killed mid-write
        stale.unlink(missing_ok=True)
    done, run = done_hashes(out), next_run(out)
    listing, seen, buffer = Listing(), [], []

    def cut(final: bool):
        rows = pd.concat(buffer, ignore_index=True) if buffer else pd.DataFrame()
        buffer.clear()
        start = 0
        while len(rows) - start >= part_rows or (final and start < len(rows)):
            f = folder / f"r{run:04d}-{len(listing.parts):06d}.parquet"
            with atomic_path(f, suffix=".tmp") as tmp:
                rows.iloc[start : start + part_rows].to_parquet(tmp, index=False)
            listing.parts.append(f)
            start += part_rows
        if start < len(rows):
            buffer.append(rows.iloc[start:])

    for chunk in chunks:
        h = hash_ids(chunk["id"])
        fresh = ~pd.Series(h).duplicated().to_numpy()
        for earlier in seen:
            fresh &= ~np.isin(h, earlier)
        listing.listed_twice += int((~fresh).sum())
        h, chunk = h[fresh], chunk[fresh]
        seen.append(np.sort(h))
        listing.inputs += len(h)
        already = np.isin(h, done)
        listing.skipped += int(already.sum())
        buffer.append(chunk[~already].reset_index(drop=True))
        cut(final=False)
    cut(final=True)
    listing.hashes = np.concatenate(seen) if seen else listing.hashes
    return listing


def read_predictions(out: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Every prediction row written so far (an empty frame when there is none)."""
    files = part_files(out)
    if not files:
        return pd.DataFrame(columns=columns or ["id", "path", "error"])
    return pd.concat([pd.read_parquet(f, columns=columns) for f in files], ignore_index=True)


@dataclass
class Summary:
    inputs: int
    rows: int
    unique_ids: int
    errors: int
    missing: int  # inputs without a row

    @property
    def duplicates(self) -> int:
        return self.rows - self.unique_ids

    def format(self) -> str:
        return (
            f"{self.rows} rows for {self.inputs} inputs ({self.errors} unreadable, "
            f"{self.missing} missing, {self.duplicates} duplicated)"
        )


def summarize(out: Path, input_hashes: np.ndarray) -> Summary:
    """Rows, errors, missing and duplicated ids of the output against this run's listing."""
    import pyarrow.parquet as pq

    hashes, errors = [], 0
    for f in part_files(out):
        t = pq.read_table(f, columns=["id", "error"])
        hashes.append(hash_ids(t.column("id").to_pylist()))
        errors += len(t) - t.column("error").null_count
    have = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
    unique = np.unique(have)
    return Summary(
        inputs=len(input_hashes),
        rows=len(have),
        unique_ids=len(unique),
        errors=errors,
        missing=int((~np.isin(input_hashes, unique)).sum()),
    )
