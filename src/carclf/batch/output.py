"""The output folder of a batch job, and what makes a rerun safe.

Layout (Parquet readers skip names that start with ``_``, so ``pandas.read_parquet(OUTPUT)``
sees the predictions only)::

    OUTPUT/predictions/*.parquet   one row per input: id, path, labels, names, probabilities,
                                   unknown, open_set_score (null: no open-set data), error
    OUTPUT/_checkpoint/            Ray Data's record of the ids whose rows are committed
    OUTPUT/_inputs/                this run's input list (what Ray Data reads and filters)
    OUTPUT/_carclf_batch.json      which model, backend and top-k wrote the predictions

Exactly once is Ray Data's checkpointing (``DataContext.checkpoint_config``): before a write task
writes a Parquet file it records the file's ids as *pending*; after the file is written it
commits them. A rerun deletes files whose ids are still pending (a job killed mid-write) and
skips every committed id, so after any crash and rerun each input has exactly one row. The
manifest keeps a rerun from mixing two models' answers in one folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from carclf import __version__
from carclf.errors import CarclfError
from carclf.io import write_json
from carclf.models.bundle import BundleMeta

MANIFEST = "_carclf_batch.json"
PREDICTIONS = "predictions"
CHECKPOINT = "_checkpoint"
INPUTS = "_inputs"


class OutputError(CarclfError):
    """The output folder cannot take this job's predictions."""


def model_id(meta: BundleMeta) -> str:
    """A short fingerprint of a trained model: its classes, contract and training timestamp."""
    blob = json.dumps(asdict(meta), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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


def write_inputs(out: Path, rows: pd.DataFrame, rows_per_file: int) -> list[str]:
    """This run's ``id, path`` list as Parquet files under ``out/_inputs`` (what Ray Data reads
    and filters by the checkpoint); the old list is replaced."""
    import shutil

    folder = out / INPUTS
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    files = []
    for i, start in enumerate(range(0, len(rows), rows_per_file)):
        f = folder / f"part-{i:06d}.parquet"
        rows.iloc[start : start + rows_per_file].to_parquet(f, index=False)
        files.append(str(f))
    return files


def done_ids(out: Path) -> set[str]:
    """Ids with a committed row (the ones a rerun skips)."""
    import pyarrow.parquet as pq

    folder = out / CHECKPOINT
    if not folder.is_dir():
        return set()
    ids: set[str] = set()
    for f in folder.glob("*.parquet"):
        if f.name.endswith(".pending.parquet"):
            continue
        ids.update(pq.read_table(f).column(0).to_pylist())
    return ids


def read_predictions(out: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Every prediction row written so far (an empty frame when there is none)."""
    folder = out / PREDICTIONS
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
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


def summarize(out: Path, ids: pd.Series) -> Summary:
    df = read_predictions(out, ["id", "error"])
    have = set(df["id"])
    return Summary(
        inputs=len(ids),
        rows=len(df),
        unique_ids=len(have),
        errors=int(df["error"].notna().sum()),
        missing=int((~ids.isin(have)).sum()),
    )
