"""Plan a recipe to fill its time budget: how many cached views, how many epochs.

``trainer.time_budget_min`` used to be only a stop: a recipe written for one machine either ran
out of time on a slower one (its cosine schedule cut off mid-way) or finished early on a faster
one and left the budget unused. A stage may instead say ``epochs: auto`` and ``cache_views:
auto``; the speed probe (:mod:`carclf.train.probe`) measures this machine in the run's first
seconds (the frozen prefix on real photos, a few training steps of each stage's trainable part)
and this module turns those rates into a plan:

1. the time available is ``fill`` x the budget, less what has already run and an estimate of the
   end of the run (the validation pass with the calibration TTA views, the bundle);
2. views: the most (up to ``max_views``) whose caches take at most ``cache_share`` of it and still
   leave ``min_epochs`` for every ``auto`` stage (the notes in ``shared/notes/cpu-training.md``:
   more cached views beat a longer tail, but a tail needs a few epochs);
3. epochs: the rest of the time, split evenly between the ``auto`` stages.

The arithmetic (:func:`plan_budget`, :func:`replan_epochs`) is pure, so it is tested without a
network. :class:`Planner` holds a run's plan: it makes it once (or reads the one a restarted run
had made), refines an ``auto`` stage's epochs when the stage starts, and keeps it on disk
(``plan.json``) and in the checkpoint. :class:`carclf.train.time_budget.TimeBudget` is the stop that enforces the budget.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from carclf import io, phases
from carclf.train.stages import Stage, with_plan

log = logging.getLogger(__name__)

# The end of the run is kept free with a margin: in a 15-minute Lite2 run it took ~50 s against
# an estimate of 41 s (bundle, report, exit on top of the last validation pass).
FINISH_MARGIN = 1.3


@dataclass
class PlanConfig:
    """How `epochs: auto` and `cache_views: auto` fill trainer.time_budget_min (the ``plan`` key)."""

    fill: float = 0.94  # aim to end at this share of the budget (the rest absorbs timing noise)
    min_views: int = 2  # the plain view and its mirror
    # 16 until the int8 cache engine halved a view's cost; more views beat a longer tail
    # (shared/notes/cpu-training.md), and cache_share still bounds them
    max_views: int = 32
    cache_share: float = 0.45  # at most this share of the planned time builds caches
    min_epochs: int = 6  # fewer views before fewer epochs than this


DEFAULTS = PlanConfig()


@dataclass
class Budget:
    """A run's deadline. ``reserve`` is kept free for the end of the run (set by the planner)."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)
    reserve: float = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        """Seconds training may still use."""
        return self.seconds - self.reserve - self.elapsed()

    @property
    def end(self) -> float:
        """The deadline as a ``time.perf_counter`` value."""
        return self.start + self.seconds

    def keep(self, reserve: float) -> None:
        """Keep ``reserve`` seconds free for the end of the run (and tell every phase)."""
        self.reserve = reserve
        phases.set_reserve(reserve)
        if reserve > self.seconds - self.elapsed():
            log.warning(
                "the time budget of %.1f min leaves %.0f s, less than the end of the run needs "
                "(about %.0f s: the final validation with its TTA views, the bundle): training stops "
                "after its first batch; give it more time, or calibration_tta=none",
                self.seconds / 60,
                max(self.seconds - self.elapsed(), 0.0),
                reserve,
            )


@dataclass
class StageCost:
    """Measured costs of one stage on this machine (seconds).

    ``cache_per_view`` is the time to cache one view of the train split and ``cache_fixed`` the
    rest of its caches (the validation split); both are 0 for a stage that shares the cache of
    the stage before it, or has none. ``epoch`` is one epoch: training steps, validation and the
    per-epoch overhead (checkpoints, logs).
    """

    cache_per_view: float
    cache_fixed: float
    epoch: float


@dataclass
class Plan:
    views: int | None
    epochs: dict[str, int]
    estimate: dict[str, float]
    rates: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        return cls(
            d.get("views"), dict(d["epochs"]), dict(d.get("estimate", {})), dict(d.get("rates", {}))
        )

    def describe(self, stages: list[Stage]) -> str:
        parts = [
            f"{s.name}: {self.epochs.get(s.name, s.epochs)} epochs"
            + (" (auto)" if s.auto_epochs else "")
            for s in stages
        ]
        e = self.estimate
        return (
            f"views {self.views if self.views else 'as configured'}; "
            + ", ".join(parts)
            + f"; estimated caches {e.get('cache_s', 0):.0f} s + epochs {e.get('epochs_s', 0):.0f} s"
            f" + end of run {e.get('finish_s', 0):.0f} s -> run ends at"
            f" {e.get('end_s', 0):.0f} s of {e.get('budget_s', 0):.0f} s"
        )


def stage_cache_seconds(stage: Stage, cost: StageCost, views: int | None) -> float:
    """Seconds ``stage``'s caches take with ``views`` for an ``auto``-views stage."""
    v = views if (stage.auto_views and views) else stage.cache_views
    return v * cost.cache_per_view + cost.cache_fixed


def _cache_seconds(stages: list[Stage], costs: list[StageCost], views: int | None) -> float:
    return sum(stage_cache_seconds(s, c, views) for s, c in zip(stages, costs, strict=True))


def plan_budget(
    stages: list[Stage],
    costs: list[StageCost],
    *,
    budget_s: float,
    elapsed_s: float,
    finish_s: float,
    fill: float = DEFAULTS.fill,
    min_views: int = DEFAULTS.min_views,
    max_views: int = DEFAULTS.max_views,
    cache_share: float = DEFAULTS.cache_share,
    min_epochs: int = DEFAULTS.min_epochs,
) -> Plan:
    """Views and epochs for the ``auto`` stages so the run ends near ``fill`` x ``budget_s``."""
    available = fill * budget_s - elapsed_s - finish_s
    auto = [i for i, s in enumerate(stages) if s.auto_epochs]
    fixed_epochs_s = sum(
        c.epoch * s.epochs for s, c in zip(stages, costs, strict=True) if not s.auto_epochs
    )
    any_auto_views = any(s.auto_views for s in stages)
    candidates = range(max(max_views, min_views), min_views - 1, -1) if any_auto_views else [None]
    chosen, epochs = None, {}
    for views in candidates:
        cache_s = _cache_seconds(stages, costs, views)
        rest = available - cache_s - fixed_epochs_s
        last = views is None or views == min_views
        if any_auto_views and cache_s > cache_share * available and not last:
            continue
        if auto:
            share = max(rest, 0.0) / len(auto)
            epochs = {stages[i].name: int(share // costs[i].epoch) for i in auto}
            if min(epochs.values()) >= min_epochs or last:
                chosen = views
                break
        elif rest >= 0 or last:
            chosen = views
            break
    epochs = {name: max(1, n) for name, n in epochs.items()}
    cache_s = _cache_seconds(stages, costs, chosen)
    epochs_s = fixed_epochs_s + sum(costs[i].epoch * epochs[stages[i].name] for i in auto)
    estimate = {
        "budget_s": budget_s,
        "elapsed_s": elapsed_s,
        "cache_s": cache_s,
        "epochs_s": epochs_s,
        "finish_s": finish_s,
        "end_s": elapsed_s + cache_s + epochs_s + finish_s,
    }
    return Plan(chosen, epochs, {k: round(v, 1) for k, v in estimate.items()})


def replan_epochs(
    stage: Stage,
    epoch_s: float,
    *,
    deadline_s: float,
    later_s: float,
) -> int:
    """Epochs for an ``auto`` stage about to start: what fits before ``deadline_s`` (seconds
    left until the planned end of training) after ``later_s`` for the stages after it."""
    return max(1, int(math.floor(max(deadline_s - later_s, 0.0) / max(epoch_s, 1e-6))))


class Planner:
    """A run's plan for its ``auto`` stages: made once, refined per stage, saved and restored.

    Args:
        budget: the run's deadline.
        config: a :class:`PlanConfig` as a dict (the ``plan`` config node).
        plan_file: where the plan is kept (``plan.json`` in the run dir), so a run restarted
            before its first checkpoint follows the plan it had made.
    """

    def __init__(self, budget: Budget, config: dict | None = None, plan_file=None):
        self.budget = budget
        self.config = PlanConfig(**(config or {}))
        self.plan_file = Path(plan_file) if plan_file else None
        self.plan: Plan | None = None
        self.epoch_log: list[tuple[int, float]] = []  # (stage index, seconds) per finished epoch

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "plan": self.plan.to_dict() if self.plan else None,
            "epoch_log": [list(e) for e in self.epoch_log],
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch_log = [(int(i), float(t)) for i, t in state.get("epoch_log", [])]
        if state.get("plan"):
            self.plan = Plan.from_dict(state["plan"])

    def saved_plan(self) -> Plan | None:
        """The plan of a run restarted before its first checkpoint (from ``plan_file``)."""
        if self.plan_file is None or not self.plan_file.is_file():
            return None
        self.plan = Plan.from_dict(json.loads(self.plan_file.read_text()))
        return self.plan

    def save(self) -> None:
        if self.plan_file is not None and self.plan is not None:
            io.write_json(self.plan_file, self.plan.to_dict())

    def apply(self, stages: list[Stage]) -> list[Stage]:
        """``stages`` with this plan's epochs and views (and the end of the run reserved)."""
        self.budget.keep(FINISH_MARGIN * self.plan.estimate.get("finish_s", 0.0))
        return with_plan(stages, self.plan.epochs, self.plan.views)

    # -- planning -----------------------------------------------------------------------------
    def make(self, stages: list[Stage], measure: Callable[[], tuple]) -> Plan:
        """Measure this machine (``measure()`` -> costs, finish seconds, rates) and plan."""
        t0 = time.perf_counter()
        costs, finish_s, rates = measure()
        plan = plan_budget(
            stages,
            costs,
            budget_s=self.budget.seconds,
            elapsed_s=self.budget.elapsed(),
            finish_s=finish_s,
            **asdict(self.config),
        )
        plan.rates = {
            **rates,
            "epoch_s": [round(x.epoch, 3) for x in costs],
            "stage_cache_s": [
                round(stage_cache_seconds(st, x, plan.views), 2)
                for st, x in zip(stages, costs, strict=True)
            ],
            "measure_s": round(time.perf_counter() - t0, 1),
        }
        self.plan = plan
        return plan

    def record_epoch(self, stage_index: int, seconds: float) -> None:
        self.epoch_log.append((stage_index, seconds))

    def _time_left(self, stages: list[Stage], stage: Stage, ratio: float) -> tuple[float, float]:
        """Seconds until the planned end of training, and the estimate for the stages after
        ``stage`` (their epochs and caches scaled by the measured ``ratio``)."""
        b = self.budget
        deadline = self.config.fill * b.seconds - b.elapsed() - b.reserve
        predicted = self.plan.rates.get("epoch_s", [])
        caches = self.plan.rates.get("stage_cache_s", [0.0] * len(stages))
        later = sum(
            (predicted[s.index] * s.epochs + caches[s.index]) * ratio
            for s in stages[stage.index + 1 :]
        )
        return deadline, later

    def replan(self, stages: list[Stage], stage: Stage) -> int | None:
        """New epochs for the ``auto`` stage ``stage`` from the time actually left (None: keep).

        Caches are built by now (their real cost is known) and finished epochs show how far the
        measured rates were off on this machine today; that ratio scales the remaining estimates.
        """
        predicted = self.plan.rates.get("epoch_s", [])
        done = [(i, t) for i, t in self.epoch_log if i < len(predicted)]
        ratio = (
            sum(t for _, t in done) / max(sum(predicted[i] for i, _ in done), 1e-6) if done else 1.0
        )
        ratio = min(max(ratio, 0.2), 5.0)
        deadline, later = self._time_left(stages, stage, ratio)
        epochs = replan_epochs(
            stage, predicted[stage.index] * ratio, deadline_s=deadline, later_s=later
        )
        if epochs == stage.epochs:
            return None
        log.info(
            "budget plan: stage %r gets %d epochs instead of %d (%.0f s left for it, "
            "epochs measured at %.2fx the estimate)",
            stage.name,
            epochs,
            stage.epochs,
            deadline - later,
            ratio,
        )
        self.plan.epochs[stage.name] = epochs
        self.save()
        return epochs

    def replan_running(self, stages: list[Stage], stage: Stage, epoch_s: float, done: int):
        """New epochs for the running ``auto`` stage ``stage`` after its first ``done`` epochs,
        from their measured ``epoch_s`` (the probe's estimate can be several times off for a
        stage's own epochs: per-epoch overheads, a tail that runs faster than sampled), or None
        to keep the plan. The stages after it are scaled by the same measured ratio."""
        predicted = self.plan.rates.get("epoch_s", [])
        if stage.index >= len(predicted) or epoch_s <= 0:
            return None
        ratio = min(max(epoch_s / max(predicted[stage.index], 1e-6), 0.2), 5.0)
        deadline, later = self._time_left(stages, stage, ratio)
        rest = replan_epochs(stage, epoch_s, deadline_s=deadline, later_s=later)
        epochs = done + rest
        if epochs == stage.epochs:
            return None
        log.info(
            "budget plan: stage %r gets %d epochs instead of %d (after %d, its epochs take %.2f s, "
            "%.2fx the estimate; %.0f s left for it)",
            stage.name,
            epochs,
            stage.epochs,
            done,
            epoch_s,
            ratio,
            deadline - later,
        )
        self.plan.epochs[stage.name] = epochs
        self.save()
        return epochs
