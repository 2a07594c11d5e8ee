"""A Hydra sweeper that runs an Optuna study: ``python train.py -m hparams_search=cpu_quick``.

Why carclf has its own sweeper instead of hydra-optuna-sweeper 1.3.0 (see README, "Search"):
that plugin pins optuna<3 (2.10, 2021); as pip resolves it today its SQLite storage fails on
SQLAlchemy 2, it needs hand pins (sqlalchemy<2, alembic<1.14, hydra-core 1.3) to start at all,
and then one trial returning NaN ends the whole sweep with a ValueError (hydra #2237). It also
cannot hand the trial to the job, so no per-epoch pruning. The plugin API is small; this one
runs on current Optuna and is built for long, interruptible searches:

* the study lives in ``<sweep dir>/optuna.db`` (SQLite): the same command with the same sweep
  dir continues a killed sweep. Trials that were running when it was killed are marked failed
  ("interrupted") and their parameters are queued again; they do not count against n_trials;
* a trial that raises, diverges (NaN loss), returns no finite objective or runs out of its time
  budget is recorded as failed or pruned with its reason, and the sweep goes on;
* each job gets a ``tune:`` node (storage, study, trial number) so it can report per epoch and
  be pruned (``carclf.tune.trial``); job dirs are named by trial number;
* after every batch of trials the report is rewritten (``carclf.tune.report``), so a sweep can
  be read while it runs.

Search dimensions come from ``hydra.sweeper.params`` and from sweep overrides on the command line
(``model.mixup=0,0.2``), both in Hydra's sweep syntax (``carclf.tune.space``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from carclf import io
from carclf.errors import CarclfError
from carclf.tune.space import as_overrides, parse_space, suggest
from carclf.tune.study import PRUNER_ATTR, REASON_ATTR, SPACE_ATTR, storage

log = logging.getLogger(__name__)

INTERRUPTED_ATTR = "interrupted"


@dataclass
class OptunaSweeperConf:
    """``hydra.sweeper`` keys (``hydra/sweeper=carclf_optuna``)."""

    _target_: str = "hydra_plugins.carclf_optuna_sweeper.CarclfOptunaSweeper"
    _recursive_: bool = False  # sampler/pruner configs are instantiated here, not by Hydra
    study_name: str = "carclf"
    storage: str | None = None  # default: sqlite:///<sweep dir>/optuna.db
    direction: str = "maximize"  # the job returns validation accuracy
    n_trials: int = 20  # trials that ended on their own (complete, pruned or failed)
    n_jobs: int = 1  # trials launched together (one launcher batch)
    seed: int | None = None  # TPE's seed: the same seed and results give the same trials
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "n_startup_trials": 5}
    )
    pruner: Any = field(
        default_factory=lambda: {
            "_target_": "optuna.pruners.MedianPruner",
            "n_startup_trials": 4,
            "n_warmup_steps": 2,
        }
    )
    params: dict[str, str] = field(default_factory=dict)  # {config key: sweep expression}
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # trials to run first (fresh study)
    monitor: str = "val/acc"


class OptunaSweeper(Sweeper):
    def __init__(self, **conf: Any):
        self.conf = OmegaConf.structured(OptunaSweeperConf(**conf))
        self.launcher = None
        self.config: DictConfig | None = None
        self._url = ""

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # -- the loop ---------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> Any:
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise CarclfError(
                "hydra/sweeper=carclf_optuna needs Optuna: pip install 'carclf[tune]'"
            ) from None
        from optuna.trial import TrialState

        from carclf.tune.report import write_report

        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(self.config.hydra.sweep.dir).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        fixed, cli_space = self._split(arguments)
        exprs = {**OmegaConf.to_container(self.conf.params), **cli_space}
        if not exprs:
            raise CarclfError("hydra.sweeper.params is empty: nothing to search over")
        space = parse_space(exprs)
        url = self._url = self.conf.storage or f"sqlite:///{sweep_dir / 'optuna.db'}"
        study = self._open_study(url, exprs)
        recovered = self._recover_interrupted(study, sweep_dir)
        c = self.conf
        log.info(
            "study %r in %s: %d trials so far%s",
            c.study_name,
            url,
            len(study.trials),
            f", {recovered} interrupted trial(s) queued again" if recovered else "",
        )
        ref = {"storage": url, "study": c.study_name, "monitor": c.monitor}
        while (left := c.n_trials - self._counted(study)) > 0:
            trials = [study.ask() for _ in range(min(c.n_jobs, left))]
            params = [suggest(t, space) for t in trials]
            batch = [
                [*fixed, *as_overrides(p), *self._ref_overrides(ref, t.number)]
                for t, p in zip(trials, params, strict=True)
            ]
            try:  # a search space naming a key that does not exist stops the search
                self.validate_batch_is_legal(batch)
            except Exception as e:
                for t in trials:
                    t.set_user_attr(REASON_ATTR, f"invalid overrides: {e}"[:500])
                    study.tell(t, state=TrialState.FAIL)
                raise CarclfError(f"the search's overrides do not compose: {e}") from None
            for t, p in zip(trials, params, strict=True):
                t.set_user_attr("overrides", [*fixed, *as_overrides(p)])
            try:
                returns = self._launch(batch, [t.number for t in trials])
            except Exception as e:  # a launcher that lost its jobs (e.g. a cluster job killed)
                returns = [e] * len(trials)
            for trial, ret in zip(trials, returns, strict=True):
                self._tell(study, trial, ret, sweep_dir)
            write_report(study, sweep_dir)
        write_report(study, sweep_dir, final=True)
        return study

    def _launch(self, batch: list[list[str]], numbers: list[int]) -> Sequence[Any]:
        """Launch a batch with job numbers = trial numbers (job dirs are named by trial)."""
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return self.launcher.launch(batch, initial_job_idx=numbers[0])
        out = []  # another sweeper on the same study took numbers in between
        for overrides, n in zip(batch, numbers, strict=True):
            out.extend(self.launcher.launch([overrides], initial_job_idx=n))
        return out

    # -- study ------------------------------------------------------------------------------
    def _open_study(self, url: str, exprs: dict[str, str]):
        import optuna
        from hydra.utils import instantiate

        c = self.conf
        sampler_cfg = OmegaConf.to_container(c.sampler)
        if c.seed is not None:
            sampler_cfg.setdefault("seed", c.seed)
        study = optuna.create_study(
            study_name=c.study_name,
            storage=storage(url),
            direction=c.direction,
            sampler=instantiate(sampler_cfg),
            load_if_exists=True,
        )
        pruner = OmegaConf.to_container(c.pruner) if c.pruner else None
        known = study.user_attrs.get(SPACE_ATTR)
        if known is None:
            study.set_user_attr(SPACE_ATTR, exprs)
            for params in OmegaConf.to_container(c.enqueue):
                study.enqueue_trial(params, skip_if_exists=True)
        elif known != exprs:
            raise CarclfError(
                f"study {c.study_name!r} in {url} was searching {known}, not {exprs}; "
                "use a new hydra.sweep.dir (or hydra.sweeper.study_name) for a new search space"
            )
        study.set_user_attr(PRUNER_ATTR, pruner)  # the jobs build their pruner from this
        return study

    def _recover_interrupted(self, study, sweep_dir: Path) -> int:
        """Trials left RUNNING by a killed sweep: fail them and queue their parameters again.

        One sweeper per study: a trial RUNNING at start-up belongs to a sweep that died.
        """
        from optuna.trial import TrialState

        stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        store = storage(self._url)
        study_id = store.get_study_id_from_name(study.study_name)
        for t in stale:
            trial_id = store.get_trial_id_from_study_id_trial_number(study_id, t.number)
            store.set_trial_user_attr(trial_id, INTERRUPTED_ATTR, True)
            store.set_trial_user_attr(trial_id, REASON_ATTR, "interrupted: the sweep was stopped")
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            _write_trial_json(sweep_dir, study.trials[t.number])
        return len(stale)

    @staticmethod
    def _counted(study) -> int:
        from optuna.trial import TrialState

        done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        return sum(
            t.state in done and not t.user_attrs.get(INTERRUPTED_ATTR)
            for t in study.get_trials(deepcopy=False)
        )

    def _tell(self, study, trial, ret: Any, sweep_dir: Path) -> None:
        import optuna
        from optuna.trial import TrialState

        try:
            if isinstance(ret, BaseException):
                raise ret
            value = ret.return_value  # raises the job's exception if it failed
            value = float(value) if value is not None else float("nan")
            if not math.isfinite(value):
                raise ValueError(f"the job returned {value}, not a finite {self.conf.monitor}")
        except optuna.TrialPruned as e:
            trial.set_user_attr(REASON_ATTR, str(e) or "pruned")
            study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d pruned: %s", trial.number, e)
        except Exception as e:
            reason = trial.user_attrs.get(REASON_ATTR) or f"{type(e).__name__}: {e}"
            trial.set_user_attr(REASON_ATTR, reason[:500])
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, reason)
        else:
            study.tell(trial, value)
            log.info("trial %d: %s = %.4f", trial.number, self.conf.monitor, value)
        _write_trial_json(sweep_dir, study.trials[trial.number])

    # -- overrides --------------------------------------------------------------------------
    @staticmethod
    def _split(arguments: list[str]) -> tuple[list[str], dict[str, str]]:
        """Command-line overrides: fixed ones (passed to every trial) and sweep ones (searched)."""
        fixed, space = [], {}
        for o in OverridesParser.create().parse_overrides(arguments):
            if o.is_sweep_override():
                space[o.get_key_element()] = o.get_value_string()
            else:
                fixed.append(o.input_line)
        return fixed, space

    @staticmethod
    def _ref_overrides(ref: dict[str, Any], number: int) -> list[str]:
        return [
            f"tune.storage='{ref['storage']}'",
            f"tune.study='{ref['study']}'",
            f"tune.trial={number}",
            f"tune.monitor='{ref['monitor']}'",
        ]


def _write_trial_json(sweep_dir: Path, t) -> None:
    """``<job dir>/trial.json``: the trial's state and reason, read by the sweep summary."""
    job = sweep_dir / str(t.number)
    job.mkdir(parents=True, exist_ok=True)
    record = {
        "trial": t.number,
        "state": t.state.name.lower(),
        "value": t.value,
        "reason": t.user_attrs.get(REASON_ATTR, ""),
        "params": t.params,
        "epochs_reported": len(t.intermediate_values),
        "duration_s": round(t.duration.total_seconds(), 1) if t.duration else None,
    }
    io.write_text(job / "trial.json", json.dumps(record, indent=1, default=str))


def register() -> None:
    """Make ``hydra/sweeper=carclf_optuna`` available (called by the hydra_plugins shim)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(
        group="hydra/sweeper", name="carclf_optuna", node=OptunaSweeperConf, provider="carclf"
    )
