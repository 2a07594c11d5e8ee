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

    @property
    def failed(self) -> str | None:
        return getattr(self, FAILED, None)

    def guarded(self, write: Callable[..., Any], *args, **kwargs) -> Any:
        """``write(*args, **kwargs)``, or nothing once a write has failed (see :func:`guarded`)."""
        return guarded(self, write, *args, **kwargs)

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


FAILED = "_carclf_failed"  # the first write failure, kept on the logger


def guarded(logger: TensorBoardLogger, write: Callable[..., Any], *args, **kwargs) -> Any:
    """``write(*args, **kwargs)`` for ``logger``, or nothing once one of its writes has failed:
    an ``OSError`` (also one Lightning wrapped) is logged the first time and switches
    TensorBoard off for the rest of the run; any other error is raised. Works for a plain
    TensorBoardLogger too (the failure is kept on the logger)."""
    if getattr(logger, FAILED, None):
        return None
    try:
        return write(*args, **kwargs)
    except Exception as e:
        cause = os_error(e)
        if cause is None:
            raise
        setattr(logger, FAILED, f"{type(cause).__name__}: {cause}")
        log.warning(
            "TensorBoard: cannot write to %s (%s); TensorBoard logging is off for the rest "
            "of this run, training goes on (the CSV log is kept)",
            logger.log_dir,
            getattr(logger, FAILED),
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
    return bool(getattr(logger, FAILED, None))


def find_tensorboard(trainer) -> TensorBoardLogger | None:
    """The run's TensorBoard logger (the first one), or None when none is configured."""
    for logger in getattr(trainer, "loggers", None) or []:
        if isinstance(logger, TensorBoardLogger):
            return logger
    return None
