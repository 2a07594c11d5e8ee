"""TensorBoard that never stops a run: Lightning's logger whose write failures are logged once.

TensorBoard writes its event file in a background thread; when the disk fills (or the folder
vanishes) the thread dies and every later write re-raises its ``OSError`` in the training
process, from Lightning's ``log_metrics`` in the middle of an epoch. The run would then be lost
for the sake of its charts. :class:`SafeTensorBoardLogger` (``conf/logger/tensorboard.yaml``)
catches that, logs it once, and turns TensorBoard off for the rest of the run; the CSV log, the
checkpoints and the bundle are untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pytorch_lightning.loggers import TensorBoardLogger

log = logging.getLogger(__name__)


class SafeTensorBoardLogger(TensorBoardLogger):
    """``pytorch_lightning.loggers.TensorBoardLogger`` that survives write failures.

    Takes the same arguments. :attr:`failed` holds the first failure (None while writing works);
    :meth:`guarded` runs any other write (images, text) under the same rule.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.failed: str | None = None

    def guarded(self, write: Callable[..., Any], *args, **kwargs) -> Any:
        """``write(*args, **kwargs)``, or nothing once a write has failed; an ``OSError`` is
        logged (the first time) and switches TensorBoard off."""
        if self.failed is not None:
            return None
        try:
            return write(*args, **kwargs)
        except Exception as e:
            cause = os_error(e)
            if cause is None:
                raise
            self.failed = f"{type(cause).__name__}: {cause}"
            log.warning(
                "TensorBoard: cannot write to %s (%s); TensorBoard logging is off for the rest "
                "of this run, training goes on (the CSV log is kept)",
                self.log_dir,
                self.failed,
            )
            return None

    def log_metrics(self, metrics, step=None) -> None:
        self.guarded(super().log_metrics, metrics, step)

    def log_hyperparams(self, params, metrics=None, step=None) -> None:
        self.guarded(super().log_hyperparams, params, metrics, step)

    def log_graph(self, model, input_array=None) -> None:
        self.guarded(super().log_graph, model, input_array)

    def save(self) -> None:
        self.guarded(super().save)

    def finalize(self, status: str) -> None:
        self.guarded(super().finalize, status)


def guarded(logger: TensorBoardLogger, write: Callable[..., Any], *args, **kwargs) -> Any:
    """Run a write for ``logger`` under :class:`SafeTensorBoardLogger`'s rule, also for a plain
    TensorBoardLogger (which gets the same one-time warning, kept on the logger)."""
    if isinstance(logger, SafeTensorBoardLogger):
        return logger.guarded(write, *args, **kwargs)
    if getattr(logger, "_carclf_failed", None):
        return None
    try:
        return write(*args, **kwargs)
    except Exception as e:
        cause = os_error(e)
        if cause is None:
            raise
        logger._carclf_failed = f"{type(cause).__name__}: {cause}"
        log.warning(
            "TensorBoard: cannot write to %s (%s); summaries are off for the rest of this run",
            logger.log_dir,
            logger._carclf_failed,
        )
        return None


def os_error(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: Lightning re-raises a failed ``add_scalar`` as a ValueError
    ("you tried to log ... which is currently not supported") with the OSError as its cause."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def failed(logger: TensorBoardLogger) -> bool:
    return bool(getattr(logger, "failed", None) or getattr(logger, "_carclf_failed", None))


def find_tensorboard(trainer) -> TensorBoardLogger | None:
    """The run's TensorBoard logger (the first one), or None when none is configured."""
    for logger in getattr(trainer, "loggers", None) or []:
        if isinstance(logger, TensorBoardLogger):
            return logger
    return None
