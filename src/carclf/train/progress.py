"""What a training run prints: a progress bar without noise, one line per epoch in a log.

On a terminal, Lightning's tqdm bar, less its ``v_num`` (the logger's version, which says
nothing to a carclf user: the run dir does). In a log (stdout is not a terminal: CI, ``nohup``,
a pipe) a bar is a stream of carriage returns, so :class:`EpochLines` prints one line per epoch
instead: epoch, stage metrics, seconds.

:func:`quiet_third_party` drops known third-party noise at its source, once per process:
Lightning's tip to install ``litlogger``, shown on every run; the deprecation warning of its own
``_pytree`` helper (``isinstance(treespec, LeafSpec)``), once per epoch; and its advice to lower
``log_every_n_steps`` on a small dataset (carclf logs per epoch). Only those exact messages go;
anything else a library says still shows.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar

# (logger, text) of log records that are noise to a carclf user
_NOISE = (
    ("pytorch_lightning.utilities.rank_zero", "litlogger"),
    ("lightning_fabric.utilities.rank_zero", "litlogger"),
)
# (regex of) warnings that are noise to a carclf user
_WARNINGS = (
    # Lightning's own pytree helper on torch >= 2.10, once per epoch (reloaded loaders)
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r".*torch\.utils\._pytree.*deprecated",
    # carclf logs per epoch (CSV, TensorBoard): step logging intervals do not apply
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)
_installed = False


class _DropContaining(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_third_party() -> None:
    """Filter the known noise (see the module docstring); idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    for name, text in _NOISE:
        logging.getLogger(name).addFilter(_DropContaining(text))
    for message in _WARNINGS:
        warnings.filterwarnings("ignore", message=message)


class RunProgressBar(TQDMProgressBar):
    """Lightning's bar without ``v_num``."""

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


def _fmt(value) -> str:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


class EpochLines(ProgressBar):
    """One line per epoch (none per batch): what a log wants instead of a bar."""

    def __init__(self):
        super().__init__()
        self._enabled = True
        self._started: float | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = ", ".join(
            f"{k} {_fmt(v)}"
            for k, v in sorted(metrics.items())
            if "/" in k and not k.endswith(("_step", "_epoch")) and not k.startswith("lr-")
        )
        seconds = time.perf_counter() - (self._started or time.perf_counter())
        print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {shown} ({seconds:.1f} s)",
            flush=True,
        )


def progress_bar() -> ProgressBar:
    """The bar for this process: tqdm on a terminal, one line per epoch otherwise."""
    return RunProgressBar() if sys.stdout.isatty() else EpochLines()
