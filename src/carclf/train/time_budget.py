"""TimeBudget, the stop that enforces a run's :class:`carclf.train.planner.Budget`, and
BudgetBatches, evaluation batches that end early past it."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
from torch.utils.data import BatchSampler

from carclf import phases
from carclf.train.planner import FINISH_MARGIN, Budget

log = logging.getLogger(__name__)


class TimeBudget(pl.Callback):
    """Stop training when the run's :class:`Budget` is spent, keeping its ``reserve`` free.

    Unlike Lightning's ``max_time``, the clock starts when the run starts, so the data check and
    the building of feature caches count against the budget too, and the end of the run (the
    validation pass with TTA, the bundle) is kept inside it: the planner sets ``reserve``
    (:meth:`carclf.train.finetune.StagedFinetuning.on_fit_start` measures it for a recipe without
    a plan). Training stops early enough for the epoch's validation too (as long as the last one
    took), so the epoch it stops in still gets its checkpoint.
    """

    def __init__(self, budget: Budget):
        self.budget = budget
        self.stopped = False  # training was stopped by the budget
        self.val_seconds = 0.0  # the last validation pass
        self._val_started: float | None = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._val_started is not None:
            self.val_seconds = time.perf_counter() - self._val_started

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.budget.left() < self.val_seconds and not trainer.should_stop:
            log.info(
                "time budget of %.1f min reached (%.0f s kept for the end of the run): "
                "stopping after this batch",
                self.budget.seconds / 60,
                self.budget.reserve,
            )
            trainer.should_stop = True
            self.stopped = True


class BudgetBatches(BatchSampler):
    """Batches of an evaluation pass that end early (after the first) past the time budget.

    Validation inside training may use part of the time kept for the end of the run, down to the
    bare estimate of that end (the reserve less its margin); past that it stops, Lightning ends
    the epoch on the batches seen, and the end of the run keeps its time. Without a budget it is
    a plain ``BatchSampler``.
    """

    def __iter__(self):
        for n, batch in enumerate(super().__iter__()):
            left = phases.seconds_left(final=True)
            if n and left is not None and left < phases.reserve() / FINISH_MARGIN:
                log.info("validation cut short by the time budget after %d batches", n)
                return
            yield batch
