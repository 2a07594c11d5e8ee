"""The dataset report of a training run, as a Lightning callback (``conf/callbacks/data_report.yaml``).

The training app runs the data check before it builds the trainer (``check_index(index,
with_facts=True)`` when ``data.report`` is not off) and leaves the result on its DataModule as
``check_report``; this callback turns it into ``report.html`` and ``report.json`` in the run dir
(``trainer.default_root_dir``) without decoding an image again. ``data.report=full`` adds the
label doctor (``label_issues.csv`` and its gallery), as ``python -m carclf.inspect.report
--doctor`` does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl

from carclf.inspect.report import check_mode, write_report

log = logging.getLogger(__name__)


class DataReport(pl.Callback):
    """Write the dataset report into the run dir once, at the first ``setup`` of the trainer.

    Args:
        mode: ``data.report``: ``off`` (nothing), ``cheap`` (the report: costs what the data check
            cost), ``full`` (the report and the label doctor). Anything else is a ConfigError.
    """

    def __init__(self, mode: str = "cheap"):
        self.mode = check_mode(mode)
        self.written: Path | None = None
        self._done = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._done or self.mode == "off":
            return
        self._done = True
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        check = getattr(dm, "check_report", None)
        if check is None:  # data.check=false: nothing was checked, so there is nothing to show
            log.info("dataset report skipped: the data check did not run (data.check=false)")
            return
        run_dir = Path(trainer.default_root_dir)
        write_report(dm.index, run_dir, check=check, doctor=self.mode == "full")
        self.written = run_dir / "report.html"
        log.info("dataset report: %s", self.written)
