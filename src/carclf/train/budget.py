"""Plan a recipe to fill its time budget: how many cached views, how many epochs.

``trainer.time_budget_min`` used to be only a stop: a recipe written for one machine either ran
out of time on a slower one (its cosine schedule cut off mid-way) or finished early on a faster
one and left the budget unused. A stage may instead say ``epochs: auto`` and ``cache_views:
auto``; :class:`carclf.train.callbacks.StagedFinetuning` measures this machine in the run's first
seconds (the frozen prefix on real photos, a few training steps of each stage's trainable part)
and this module turns those rates into a plan:

1. the time available is ``fill`` x the budget, less what has already run and an estimate of the
   end of the run (the validation pass with the calibration TTA views, the bundle);
2. views: the most (up to ``max_views``) whose caches take at most ``cache_share`` of it and still
   leave ``min_epochs`` for every ``auto`` stage (the notes in ``shared/notes/cpu-training.md``:
   more cached views beat a longer tail, but a tail needs a few epochs);
3. epochs: the rest of the time, split evenly between the ``auto`` stages.

Everything here is arithmetic on measured rates, so it is tested without a network.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

from carclf.train.stages import Stage


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
    fill: float = 0.94,
    min_views: int = 2,
    max_views: int = 16,
    cache_share: float = 0.45,
    min_epochs: int = 6,
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
