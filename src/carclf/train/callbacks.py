"""StagedFinetuning: the one piece of code that applies a recipe's stages.

At each stage boundary, inside a single ``Trainer.fit``, it

1. freezes/unfreezes backbone groups (BatchNorm of frozen parts stays in eval mode),
2. sets the DataModule's image size, batch size and augmentation strength,
3. on a CPU, installs loaders over a :class:`FeatureCache` of the frozen prefix when that is
   possible (single process, a splittable backbone), computed by the fastest engine that matches
   PyTorch (:mod:`carclf.train.prefix_engine`), and
4. rebuilds the optimizer and scheduler from the new stage's named parameter groups.

Stages with ``epochs: auto`` or ``cache_views: auto`` are planned to fill the time budget
(:mod:`carclf.train.budget`): at fit start the callback measures this machine (the prefix on real
photos, a few steps of each stage's trainable part) and fixes views and epochs; when an ``auto``
stage starts, its epochs are refined from the time actually left. The plan is part of the
checkpoint, so a resumed run follows it instead of planning a different schedule.

Lightning reloads dataloaders *before* ``on_train_epoch_start``, so steps 1-3 run from the
DataModule's ``before_loader`` hook; step 4 runs in ``on_train_epoch_start``. The stage index is
part of the checkpoint: on resume the optimizer is rebuilt for the same stage *before* its saved
state is loaded into it, so param groups always line up.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from carclf.data.dataset import MultiViewDataset
from carclf.train.budget import (
    Budget,
    Plan,
    plan_budget,
    replan_epochs,
    stage_cache_seconds,
)
from carclf.train.feature_cache import CacheKey, FeatureCache, prefix_fingerprint
from carclf.train.optim import build_optimizer, build_scheduler, trainable_parameter_count
from carclf.train.prefix_engine import make_engine, resolve_engine
from carclf.train.stages import Stage, stage_at, total_epochs, with_plan

log = logging.getLogger(__name__)

FINISH_MARGIN = 1.3


def _rng_state() -> dict:
    """RNG states as plain types, so checkpoints load with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


class StagedFinetuning(pl.Callback):
    def __init__(
        self,
        stages: list[Stage],
        *,
        layer_decay: float | None = None,
        max_cache_mb: int = 2048,
        cache_dir: str | Path | None = None,
        plan_file: str | Path | None = None,
        cache_engine: str = "auto",
        budget: Budget | None = None,
        plan: dict | None = None,
        finish_views: float = 1.0,
    ):
        self.stages = stages
        self.layer_decay = layer_decay
        self.max_cache_mb = max_cache_mb
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.cache_engine = cache_engine
        self.engines: dict[tuple, object] = {}
        self.engine_names: set[str] = set()  # engines that computed a cache (for metrics.json)
        # Budget planning (only used when a stage says ``auto``).
        self.budget = budget
        self.plan_cfg = dict(plan or {})
        self.plan_file = Path(plan_file) if plan_file else None
        self.finish_views = finish_views  # network passes per validation image at the end
        self.plan: Plan | None = None
        self.resumed = False
        self.epoch_log: list[tuple[int, float]] = []  # (stage index, seconds) per finished epoch
        self._epoch_started: float | None = None
        self._paused = 0.0  # time spent applying stages (caches) inside the current epoch span
        if any(s.auto_epochs or s.auto_views for s in stages) and budget is None:
            raise ValueError(
                "stages with epochs: auto or cache_views: auto need a time budget: "
                "set trainer.time_budget_min"
            )
        self.applied: int | None = None  # stage whose freezing and data settings are in place
        self.optim_stage: int | None = None  # stage the current optimizer was built for
        self.restored_stage: int | None = None
        self._restored_rng: dict | None = None
        self.caches: dict[str, FeatureCache] = {}
        self.cache_seconds: dict[str, float] = {}
        self.ddp_safe = False

    @property
    def state_key(self) -> str:
        return "StagedFinetuning"

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "stage": self.applied,
            "stage_names": [s.name for s in self.stages],
            "rng": _rng_state(),
            "plan": self.plan.to_dict() if self.plan else None,
            "epoch_log": [list(e) for e in self.epoch_log],
        }

    def load_state_dict(self, state: dict) -> None:
        names = state.get("stage_names")
        if names is not None and names != [s.name for s in self.stages]:
            raise ValueError(
                f"checkpoint was written by a recipe with stages {names}, not {[s.name for s in self.stages]}"
            )
        self.restored_stage = state.get("stage")
        self._restored_rng = state.get("rng")
        self.resumed = True
        self.epoch_log = [(int(i), float(t)) for i, t in state.get("epoch_log", [])]
        if state.get("plan"):
            self.plan = Plan.from_dict(state["plan"])
            self.stages = with_plan(self.stages, self.plan.epochs, self.plan.views)

    # -- wiring ---------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        dm = trainer.datamodule
        dm.before_loader = lambda: self.sync(trainer, pl_module)
        pl_module.optimizer_factory = self.configure_optimizers
        # Under DDP, flipping requires_grad after wrapping breaks gradient reduction: keep all
        # parameters trainable and give frozen groups lr 0 instead (and never use the cache).
        self.ddp_safe = trainer.world_size > 1
        self._trainer = trainer

    def on_fit_start(self, trainer, pl_module) -> None:
        if any(s.auto_epochs or s.auto_views for s in self.stages):
            if self.plan is None and self.plan_file is not None and self.plan_file.is_file():
                # A run restarted before its first checkpoint follows the plan it had made.
                self.plan = Plan.from_dict(json.loads(self.plan_file.read_text()))
                self.stages = with_plan(self.stages, self.plan.epochs, self.plan.views)
                self.resumed, self.optim_stage = True, None
                log.info(
                    "budget plan (from %s): %s", self.plan_file, self.plan.describe(self.stages)
                )
            if self.plan is None:
                plan = self._make_plan(trainer, pl_module)
                self.plan = Plan.from_dict(trainer.strategy.broadcast(plan.to_dict(), src=0))
                self.stages = with_plan(self.stages, self.plan.epochs, self.plan.views)
                self.optim_stage = None  # the optimizer was built before the plan: rebuild it
                log.info("budget plan: %s", self.plan.describe(self.stages))
                self._save_plan(trainer)
            # The end of the run is kept free with a margin: in a 15-minute Lite2 run it took
            # ~50 s against an estimate of 41 s (bundle, report, exit on top of the last pass).
            self.budget.reserve = FINISH_MARGIN * self.plan.estimate.get("finish_s", 0.0)
            trainer.fit_loop.max_epochs = total_epochs(self.stages)
        if self._restored_rng is not None:
            _set_rng_state(self._restored_rng)
            self._restored_rng = None

    def on_fit_end(self, trainer, pl_module) -> None:
        pl_module.input_start = 0
        trainer.datamodule.loader_overrides.clear()
        for cache in self.caches.values():
            cache.delete()  # the run is done: a resume will not need them
        self.caches.clear()
        for engine in self.engines.values():
            if engine.checked or engine.engine is None:
                self.engine_names.add(engine.name)
            engine.close()
        self.engines.clear()

    def current_stage(self) -> Stage:
        idx = self.applied if self.applied is not None else (self.restored_stage or 0)
        return self.stages[idx]

    # -- applying a stage ----------------------------------------------------------------------
    def _freeze(self, pl_module, stage: Stage) -> None:
        net = pl_module.net
        net.set_trainable_groups(
            net.num_groups if self.ddp_safe else stage.trainable_groups,
            frozen=net.num_groups - stage.trainable_groups,
        )

    def sync(self, trainer: pl.Trainer, pl_module) -> None:
        """Apply the stage of the current epoch if it is not in place yet (idempotent)."""
        idx = stage_at(self.stages, trainer.current_epoch)
        if idx != self.applied:
            self.apply(self.stages[idx], trainer, pl_module)

    def apply(self, stage: Stage, trainer: pl.Trainer, pl_module) -> None:
        t0 = time.perf_counter()
        dm = trainer.datamodule
        self._freeze(pl_module, stage)
        dm.image_size, dm.batch_size, dm.augment_strength = (
            stage.image_size,
            stage.batch_size,
            stage.augment_strength,
        )
        dm.loader_overrides.clear()
        pl_module.input_start = 0
        cut = self._cache_cut(stage, pl_module)
        if cut:
            self._install_cache(stage, cut, trainer, pl_module)
        if stage.auto_epochs and self.plan is not None and not self.resumed:
            stage = self._replan(stage)  # after the cache: its real cost is paid by now
        self.applied = stage.index
        log.info(
            "stage %d/%d %r: epochs %d-%d, %d/%d backbone groups trained (%s params), %d px, batch %d, lr %.2g%s",
            stage.index + 1,
            len(self.stages),
            stage.name,
            stage.start_epoch,
            stage.end_epoch - 1,
            stage.trainable_groups,
            pl_module.net.num_groups,
            f"{trainable_parameter_count(pl_module):,}",
            stage.image_size,
            stage.batch_size,
            stage.lr,
            f", cached groups 0-{pl_module.input_start - 1}" if pl_module.input_start else "",
        )
        self._paused += time.perf_counter() - t0

    # -- the feature cache --------------------------------------------------------------------
    def _cacheable(self, stage: Stage, pl_module) -> bool:
        net = pl_module.net
        if (
            stage.cache == "off"
            or self.ddp_safe
            or not net.splittable
            or stage.trainable_groups >= net.num_groups
        ):
            return False
        return stage.cache == "on" or pl_module.device.type == "cpu"

    def _cache_cut(self, stage: Stage, pl_module) -> int:
        """Where to cut: the smallest frozen prefix among this and the following stages that can
        share one cache (same size, views and augmentation), so one cache serves them all."""
        if not self._cacheable(stage, pl_module):
            return 0
        n = pl_module.net.num_groups
        cut = stage.cut(n)
        for nxt in self.stages[stage.index + 1 :]:
            same = (nxt.image_size, nxt.augment_strength, nxt.cache_views) == (
                stage.image_size,
                stage.augment_strength,
                stage.cache_views,
            )
            if not same or not self._cacheable(nxt, pl_module):
                break
            cut = min(cut, nxt.cut(n))
        return cut

    def _engine(self, cut: int, size: int, fingerprint: str, pl_module):
        """The prefix engine for groups ``0..cut-1`` at ``size`` px (built once, then reused)."""
        key = (cut, size, fingerprint)
        if key not in self.engines:
            name = resolve_engine(self.cache_engine, pl_module.device)
            self.engines[key] = make_engine(
                name, pl_module.net, pl_module.meta, cut, size, workdir=self.cache_dir
            )
        return self.engines[key]

    def _view_presets(self, dm, split: str, views: int) -> list:
        """The plain image and its mirror first, then random train-time crops."""
        if split != "train":
            return [dm.eval_preset()]
        presets = [dm.eval_preset(), dm.eval_preset(hflip=True)]
        while len(presets) < views:
            presets.append(dm.train_preset())
        return presets[:views]

    def _multiview(self, dm, rows, presets) -> MultiViewDataset:
        # Random crops of a large photo upscale a part of it: keep 1.5x the size when drafting.
        draft = int(dm.image_size * 1.5)
        return MultiViewDataset(rows["path"].tolist(), rows["label"].tolist(), presets, draft)

    def _install_cache(self, stage: Stage, cut: int, trainer, pl_module) -> None:
        dm, net = trainer.datamodule, pl_module.net
        fingerprint = prefix_fingerprint(net, cut)
        for split in ("train", "val"):
            views = stage.cache_views if split == "train" else 1
            rows = dm.rows(split)
            key = CacheKey(
                split, cut, stage.image_size, views, stage.augment_strength, len(rows), fingerprint
            )
            old = self.caches.get(split)
            if old is None or old.key != key:
                if old is not None:
                    old.delete()  # free memory and disk before building the new one
                self.caches.pop(split, None)
                labels = rows["label"].to_numpy()
                t0 = time.perf_counter()
                cache = None
                if self.cache_dir is not None:
                    cache = FeatureCache.open(key, self.cache_dir, labels, self.max_cache_mb)
                if cache is None:
                    cache = FeatureCache.build(
                        key,
                        self._engine(cut, stage.image_size, fingerprint, pl_module),
                        self._multiview(dm, rows, self._view_presets(dm, split, views)),
                        batch_images=max(1, 32 // views),
                        num_workers=dm.num_workers,
                        max_mb=self.max_cache_mb,
                        directory=self.cache_dir,
                    )
                self.caches[split] = cache
                self.cache_seconds[f"{stage.name}/{split}"] = time.perf_counter() - t0
        train_cache, val_cache = self.caches["train"], self.caches["val"]
        dm.loader_overrides["train"] = lambda: train_cache.loader(
            stage.batch_size, shuffle=True, drop_last=True
        )
        dm.loader_overrides["val"] = lambda: val_cache.loader(
            dm.eval_batch_size or stage.batch_size, shuffle=False
        )
        pl_module.input_start = cut

    # -- planning to the time budget ---------------------------------------------------------
    def _make_plan(self, trainer, pl_module) -> Plan:
        from carclf.train.probe import measure_costs

        t0 = time.perf_counter()
        costs, finish_s, rates = measure_costs(self, trainer, pl_module)
        c = self.plan_cfg
        plan = plan_budget(
            self.stages,
            costs,
            budget_s=self.budget.seconds,
            elapsed_s=self.budget.elapsed(),
            finish_s=finish_s,
            **{
                k: c[k]
                for k in ("fill", "min_views", "max_views", "cache_share", "min_epochs")
                if k in c
            },
        )
        plan.rates = {
            **rates,
            "epoch_s": [round(x.epoch, 3) for x in costs],
            "stage_cache_s": [
                round(stage_cache_seconds(st, x, plan.views), 2)
                for st, x in zip(self.stages, costs, strict=True)
            ],
            "measure_s": round(time.perf_counter() - t0, 1),
        }
        return plan

    def _save_plan(self, trainer) -> None:
        if self.plan_file is None or not trainer.is_global_zero:
            return
        tmp = self.plan_file.with_name(self.plan_file.name + ".tmp")
        tmp.write_text(json.dumps(self.plan.to_dict(), indent=1))
        os.replace(tmp, self.plan_file)

    def _replan(self, stage: Stage) -> Stage:
        """Refine an ``auto`` stage's epochs from the time actually left when it starts.

        Caches are built by now (their real cost is known) and finished epochs show how far the
        measured rates were off on this machine today; that ratio scales the remaining estimates.
        """
        predicted = self.plan.rates.get("epoch_s", [])
        done = [(i, t) for i, t in self.epoch_log if i < len(predicted)]
        ratio = (
            sum(t for _, t in done) / max(sum(predicted[i] for i, _ in done), 1e-6) if done else 1.0
        )
        ratio = min(max(ratio, 0.2), 5.0)
        fill = float(self.plan_cfg.get("fill", 0.94))
        deadline = fill * self.budget.seconds - self.budget.elapsed() - self.budget.reserve
        caches = self.plan.rates.get("stage_cache_s", [0.0] * len(self.stages))
        later = sum(
            (predicted[s.index] * s.epochs + caches[s.index]) * ratio
            for s in self.stages[stage.index + 1 :]
        )
        epochs = replan_epochs(
            stage, predicted[stage.index] * ratio, deadline_s=deadline, later_s=later
        )
        if epochs != stage.epochs:
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
            self.stages = with_plan(self.stages, self.plan.epochs, self.plan.views)
            self._trainer.fit_loop.max_epochs = total_epochs(self.stages)
            self._save_plan(self._trainer)
        return self.stages[stage.index]

    # -- optimizers -------------------------------------------------------------------------
    def _steps_per_epoch(self, stage: Stage, trainer: pl.Trainer) -> int:
        n = len(trainer.datamodule.rows("train"))  # data.extra / unlabelled rows included
        batches = n // stage.batch_size if n > stage.batch_size else 1
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            batches = min(batches, limit)
        elif limit is not None and limit < 1.0:
            batches = max(1, int(batches * limit))
        return max(1, -(-batches // trainer.accumulate_grad_batches))

    def configure_optimizers(self, pl_module):
        """Called by ``CarClassifier.configure_optimizers``: optimizer + scheduler of the stage."""
        stage = self.current_stage()
        self._freeze(pl_module, stage)
        optimizer = build_optimizer(
            pl_module.net, stage, self.layer_decay, include_frozen=self.ddp_safe
        )
        self.optim_stage = stage.index
        scheduler = build_scheduler(optimizer, stage, self._steps_per_epoch(stage, self._trainer))
        return {"optimizer": optimizer, "lr_scheduler": scheduler} if scheduler else optimizer

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        now = time.perf_counter()
        if self._epoch_started is not None and self.applied is not None:
            # The span since the last epoch start, less any stage set-up (cache builds) in it.
            self.epoch_log.append(
                (self._last_epoch_stage, now - self._epoch_started - self._paused)
            )
        self._epoch_started, self._paused = now, 0.0
        self.sync(trainer, pl_module)
        self._last_epoch_stage = self.applied
        if self.optim_stage != self.applied:
            trainer.strategy.setup_optimizers(trainer)
        pl_module.log("stage", float(self.applied), on_step=False, on_epoch=True)


class TimeBudget(pl.Callback):
    """Stop training when the run's :class:`Budget` is spent, keeping its ``reserve`` free.

    Unlike Lightning's ``max_time``, the clock starts when the run starts, so the data check and
    the building of feature caches count against the budget too, and the end of the run (the
    validation pass with TTA, the bundle) is kept inside it: the planner sets ``reserve``.
    """

    def __init__(self, budget: Budget):
        self.budget = budget

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.budget.left() < 0 and not trainer.should_stop:
            log.info(
                "time budget of %.1f min reached (%.0f s kept for the end of the run): "
                "stopping after this batch",
                self.budget.seconds / 60,
                self.budget.reserve,
            )
            trainer.should_stop = True
