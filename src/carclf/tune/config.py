"""The part of a job's config that ties it to a search trial (``tune:`` in config.yaml).

The sweeper fills it in for every trial it launches; an ordinary run leaves ``storage`` null. It is
plain data so the job can open its trial from the study's storage wherever it runs (this
process, a submitit worker, a SLURM node): storage URL + study name + trial number.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrialRef:
    storage: str | None = None  # an Optuna storage URL, e.g. sqlite:////abs/sweep/optuna.db
    study: str | None = None
    trial: int | None = None  # the trial's number in the study (also its job dir's name)
    monitor: str = "val/acc"  # the metric reported per epoch (and maximised)
