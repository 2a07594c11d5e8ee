"""The job side of a search trial: report per epoch, stop early, fail with a reason.

Why the job opens the trial itself: a Hydra sweeper only sees a job's return value, after the
job ends, so it cannot stop a bad trial half-way. The sweeper therefore puts a ``TrialRef``
(storage URL, study name, trial number) into the job's config; the job opens that trial from the
study's storage (``carclf.tune.study.open_trial``) and a Lightning callback reports validation
accuracy after every epoch and asks the study's pruner whether to go on. This works wherever the
job runs (in the sweeper's process, a submitit worker, a SLURM node) as long as it can reach the
storage, and keeps Hydra's config composition untouched: a trial's config is an ordinary
carclf config plus ``tune:``.

Why not optuna-integration's ``PyTorchLightningPruningCallback``: it is written against the
``lightning`` package (``lightning.pytorch``), carclf is built on ``pytorch_lightning``, and a
Trainer of one does not take callbacks of the other. ``TrialReporter`` below does the same job in
the same way (report, ``should_prune``, decision made on rank 0 and broadcast under DDP).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch

from carclf.tune.study import REASON_ATTR, open_trial

log = logging.getLogger(__name__)


class TrialDiverged(RuntimeError):
    """The training loss stopped being a finite number."""


class TrialReporter(pl.Callback):
    """Reports ``monitor`` per epoch to an Optuna trial; prunes it; fails it on a NaN/inf loss.

    Every decision is taken the same way on all ranks (rank 0 decides, the others follow), so a
    DDP trial never leaves one process waiting in a collective for another that stopped.
    """

    def __init__(self, trial, monitor: str = "val/acc"):
        self.trial = trial
        self.monitor = monitor

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        bad = isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            value = float(loss) if isinstance(loss, torch.Tensor) else float("nan")
            raise TrialDiverged(
                f"training loss became {value} at epoch {trainer.current_epoch}, step {trainer.global_step}"
            )

    def on_validation_end(self, trainer, pl_module) -> None:
        import optuna

        if trainer.sanity_checking:
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is None:
            return
        epoch, value = trainer.current_epoch, float(score)
        prune = False
        if trainer.is_global_zero:
            self.trial.report(value, step=epoch)
            prune = self.trial.should_prune()
        if trainer.world_size > 1:
            prune = trainer.strategy.broadcast(prune)
        if prune:
            raise optuna.TrialPruned(
                f"pruned after epoch {epoch + 1}: {self.monitor} {value:.4f} is below the pruner's bar"
            )


def run_trial(cfg, run_dir: str | Path, train: Callable[..., dict]) -> float | None:
    """Run ``train(cfg, run_dir, callbacks=...)`` as trial ``cfg.tune``; return the objective.

    A pruned, diverged or failed trial raises (the sweeper records the state); the reason is also
    kept on the trial in storage. A trial that ran out of ``trainer.time_budget_min`` before its
    last epoch is pruned with that reason: its accuracy is not comparable with finished trials.
    On a DDP rank other than 0 nothing is raised, so its process exits cleanly and Lightning
    does not tear down the job (rank 0 reports the outcome).
    """
    import optuna

    started = time.perf_counter()
    ref = cfg.tune
    trial = open_trial(ref)
    # Lightning's own launcher sets LOCAL_RANK/NODE_RANK in the ranks it starts; SLURM sets
    # SLURM_PROCID in every task it starts (slurm_ddp); torchrun sets RANK.
    rank_vars = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    rank0 = all(os.environ.get(v, "0") == "0" for v in rank_vars)
    try:
        metrics = train(cfg, run_dir, callbacks=[TrialReporter(trial, ref.monitor)])
    except optuna.TrialPruned as e:
        _note(trial, rank0, str(e))
        if rank0:
            raise
        return None
    except Exception as e:
        _note(trial, rank0, f"{type(e).__name__}: {e}")
        if rank0:
            raise
        return None
    if not rank0:
        return None
    budget = cfg.trainer.get("time_budget_min")
    done, planned = metrics.get("epochs_completed"), metrics.get("epochs")
    if budget and done is not None and planned and done < planned:
        # the run stops early enough to finish inside its budget: it says when it was stopped
        if metrics.get("stopped_by_budget") or time.perf_counter() - started >= budget * 60:
            reason = f"out of its {budget:g}-minute time budget after {done} of {planned} epochs"
            _note(trial, rank0, reason)
            raise optuna.TrialPruned(reason)
    value = metrics.get(ref.monitor.replace("/", "_"))
    if value is None or not math.isfinite(value):
        reason = f"no finite {ref.monitor} (got {value}); does the data have a validation split?"
        _note(trial, rank0, reason)
        raise RuntimeError(reason)
    return float(value)


def _note(trial, rank0: bool, reason: str) -> None:
    if not rank0:
        return
    log.warning("trial %d: %s", trial.number, reason)
    try:
        trial.set_user_attr(REASON_ATTR, reason[:500])
    except Exception as e:  # the reason is a courtesy; the sweeper records the state anyway
        log.warning("trial %d: could not store its reason: %s", trial.number, e)
