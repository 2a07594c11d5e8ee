"""A CSV metrics log that survives ``kill -9`` and resumes: ``logs/csv/metrics.csv``.

Why not Lightning's ``CSVLogger`` as is (read in Lightning 2.6): its writer deletes an existing
``metrics.csv`` when it starts in a non-empty folder, so a resumed run loses the history before
the kill; when new columns appear it re-reads the file and rewrites it with only the keys *it*
has seen, which crashes (``dict contains fields not in fieldnames``) when the old rows have more;
and that rewrite truncates the file in place, so a kill during it loses the file. ``curves.png``,
the sweep reports and people read this file, so carclf keeps its own small writer:

* it starts from the rows already in the file, keeping those of epochs the checkpoint covers
  (rows of the epoch that was in progress at the kill are dropped: that epoch runs again);
* every save writes all rows with the union of all columns to a temporary file and renames it
  over the old one, so the file on disk is always complete;
* epoch-level metrics (validation, ``*_epoch``, learning rates) are saved the moment they are
  logged: validation before the epoch's checkpoint, the training epoch means right after it
  (Lightning logs them after its checkpoint callbacks), so a kill loses at most the epoch in
  progress, which the resumed run repeats.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from carclf import io


def _epoch(row: dict) -> float | None:
    try:
        return float(row.get("epoch"))
    except (TypeError, ValueError):
        return None


class HistoryWriter(ExperimentWriter):
    """Lightning's CSV experiment writer, made resumable and atomic (see the module docstring)."""

    def __init__(self, log_dir: str, keep_through_epoch: int | None = None):
        # Not super().__init__: the fabric writer would delete an existing metrics.csv.
        self.hparams: dict = {}
        self.metrics: list[dict] = []
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        self.metrics_keys: list[str] = []
        path = Path(self.metrics_file_path)
        if keep_through_epoch is not None and path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                keys = list(reader.fieldnames or [])
                for row in reader:
                    e = _epoch(row)
                    if e is None or e <= keep_through_epoch:
                        self.rows.append({k: v for k, v in row.items() if v not in ("", None)})
            self.metrics_keys = keys

    def log_metrics(self, metrics_dict: dict, step: int | None = None) -> None:
        super().log_metrics(metrics_dict, step)
        if any(k.endswith("_epoch") or k.startswith(("val/", "lr-")) for k in metrics_dict):
            self.save()  # once an epoch: what a resumed run must find on disk

    def save(self) -> None:
        if not self.metrics:
            return
        self.rows.extend(self.metrics)
        self.metrics = []
        keys = set(self.metrics_keys).union(*self.rows)
        self.metrics_keys = sorted(keys)
        path = Path(self.metrics_file_path)
        with io.atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(self.rows)
            f.flush()
            os.fsync(f.fileno())


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose writer is :class:`HistoryWriter`.

    ``keep_through_epoch`` is the last epoch the run's checkpoint covers when resuming (rows up to
    it are kept), or None for a new run (an old file there is replaced).
    """

    def __init__(self, save_dir, name="logs", version="csv", keep_through_epoch: int | None = None):
        super().__init__(save_dir, name=name, version=version)
        self._keep_through_epoch = keep_through_epoch

    @property
    @rank_zero_experiment
    def experiment(self) -> HistoryWriter:
        if self._experiment is None:
            self._experiment = HistoryWriter(self.log_dir, self._keep_through_epoch)
        return self._experiment
