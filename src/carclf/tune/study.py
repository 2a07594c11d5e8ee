"""Opening the study from its storage: the one place the sweeper and its jobs meet.

The study's storage (SQLite in the sweep dir by default) is the single source of truth: the
sweeper creates the study and keeps the pruner's settings among its user attributes; a job gets
only ``TrialRef`` (storage, study name, trial number) and rebuilds the same pruner and the same
``optuna.Trial`` from there. Only public Optuna APIs are used.
"""

from __future__ import annotations

from typing import Any

PRUNER_ATTR = "carclf.pruner"  # study user attribute: the pruner's Hydra config (_target_ + args)
SPACE_ATTR = "carclf.search_space"  # study user attribute: {param: sweep expression}
REASON_ATTR = "reason"  # trial user attribute: why a trial failed or was pruned


def storage(url: str):
    """An Optuna storage; SQLite waits for a lock instead of failing when jobs write at once."""
    import optuna

    if url.startswith("sqlite:"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    return optuna.storages.get_storage(url)


def make_pruner(spec: Any):
    """The pruner described by a ``{_target_: optuna.pruners.X, ...}`` mapping (None: no pruning)."""
    import optuna
    from hydra.utils import instantiate

    if not spec:
        return optuna.pruners.NopPruner()
    return instantiate(dict(spec))


def open_trial(ref):
    """The running ``optuna.Trial`` that ``ref`` (a ``TrialRef``-like config) points at."""
    import optuna

    store = storage(ref.storage)
    study_id = store.get_study_id_from_name(ref.study)
    study = optuna.load_study(study_name=ref.study, storage=store)
    study.pruner = make_pruner(study.user_attrs.get(PRUNER_ATTR))
    trial_id = store.get_trial_id_from_study_id_trial_number(study_id, int(ref.trial))
    return optuna.trial.Trial(study, trial_id)
