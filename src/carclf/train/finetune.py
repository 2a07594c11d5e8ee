"""StagedFinetuning: the callback that applies a recipe's stages inside one ``Trainer.fit``.

In the spirit of Lightning's ``BaseFinetuning``: a stage is data (:class:`carclf.train.stages.Stage`:
which backbone groups train, at what learning rate, size and batch size, for how many epochs),
and at each stage boundary this callback

1. freezes the bottom groups and unfreezes the top ones (BatchNorm of frozen parts stays in eval
   mode; under DDP every group stays trainable and frozen ones get lr 0, see :meth:`freeze`),
2. sets the DataModule's image size, batch size and augmentation strength,
3. on a CPU, has its :class:`~carclf.train.cache_stage.CacheStage` cache the frozen prefix and
   serves the epoch's loaders from it (the DataModule asks through its ``loader_source``),
4. rebuilds the optimizer and scheduler from the new stage's named parameter groups.

Stages with ``epochs: auto`` or ``cache_views: auto`` follow the plan of its
:class:`~carclf.train.planner.Planner`, made at fit start from a short speed probe.

Lightning asks for an epoch's loaders *before* ``on_train_epoch_start``, so steps 1-3 run when
the DataModule asks this callback for a loader (:meth:`loader`); step 4 runs in
``on_train_epoch_start``. The stage index, the plan and the RNG states are part of the
checkpoint: on resume the optimizer is rebuilt for the same stage *before* its saved state is
loaded into it, so param groups always line up.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import statistics
import time

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, SequentialSampler

from carclf.data.dataset import skip_none_collate
from carclf.train.cache_stage import CacheStage
from carclf.train.final_pass import final_backend
from carclf.train.optim import build_optimizer, build_scheduler, trainable_parameter_count
from carclf.train.planner import FINISH_MARGIN, Plan, Planner
from carclf.train.probe import finish_cost, measure_costs
from carclf.train.stages import Stage, stage_at, total_epochs
from carclf.train.tail_format import apply_format
from carclf.train.time_budget import BudgetBatches

log = logging.getLogger(__name__)

# An auto stage's epochs are fitted to its own speed after this many of them (the first pays the
# stage's warm-up, so the median of the later ones is used), then every REPLAN_EVERY epochs so
# a drift (a box that slows down or speeds up) is absorbed before the stage's last epochs.
REPLAN_AFTER_EPOCHS = (2, 8)
REPLAN_EVERY = 16


def rng_state() -> dict:
    """RNG states as plain types, so checkpoints load with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


class StagedFinetuning(pl.Callback):
    """Apply ``stages`` in order; see the module docstring.

    Args:
        stages: the resolved recipe.
        layer_decay: layer-wise learning-rate decay per backbone group (None: off).
        cache: the run's feature caches (default: in memory only, ``cache_engine=auto``).
        planner: plans ``auto`` stages to the time budget (required when a stage says ``auto``).
        finish_views: network passes per validation photo at the end of the run, in units of
            one plain view: what the planner keeps free for it.
        tail_format: how the trained part runs on a CPU (:mod:`carclf.train.tail_format`);
            ``auto``: the format the planner's probe measured fastest for the stage (fp32's
            default layout for a run without a plan).
    """

    def __init__(
        self,
        stages: list[Stage],
        *,
        layer_decay: float | None = None,
        cache: CacheStage | None = None,
        planner: Planner | None = None,
        finish_views: float = 1.0,
        tail_format: str = "auto",
    ):
        self.stages = stages
        self.tail_format = tail_format
        self.layer_decay = layer_decay
        self.cache = cache or CacheStage()
        self.planner = planner
        self.finish_views = finish_views
        if any(s.auto_epochs or s.auto_views for s in stages) and planner is None:
            raise ValueError(
                "stages with epochs: auto or cache_views: auto need a time budget: "
                "set trainer.time_budget_min"
            )
        self.applied: int | None = None  # stage whose freezing and data settings are in place
        self.optim_stage: int | None = None  # stage the current optimizer was built for
        self.restored_stage: int | None = None
        self.resumed = False
        self.ddp_safe = False
        self.cut = 0  # groups served from the cache in the current stage
        self._restored_rng: dict | None = None
        self._epoch_started: float | None = None
        self._paused = 0.0  # time spent applying stages (caches) inside the current epoch span
        self._last_epoch_stage: int | None = None
        self.interrupt: KeyboardInterrupt | None = None  # Ctrl-C or SIGTERM inside fit

    @property
    def state_key(self) -> str:
        return "StagedFinetuning"

    @property
    def auto(self) -> bool:
        return any(s.auto_epochs or s.auto_views for s in self.stages)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        planner = self.planner.state_dict() if self.planner else {"plan": None, "epoch_log": []}
        return {
            "stage": self.applied,
            "stage_names": [s.name for s in self.stages],
            "rng": rng_state(),
            **planner,
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
        if self.planner is not None:
            self.planner.load_state_dict(state)
            if self.planner.plan is not None:
                self.stages = self.planner.apply(self.stages)

    # -- wiring ---------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        trainer.datamodule.loader_source = self
        pl_module.optimizer_factory = self.configure_optimizers
        # Under DDP, flipping requires_grad after wrapping breaks gradient reduction: keep all
        # parameters trainable and give frozen groups lr 0 instead (and never use the cache).
        self.ddp_safe = trainer.world_size > 1
        self.cache.enabled = not self.ddp_safe
        self._trainer = trainer

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.auto:
            self._plan(trainer, pl_module)
            trainer.fit_loop.max_epochs = total_epochs(self.stages)
        elif self.planner is not None:  # a budget, no plan: keep the end of the run free anyway
            size = self.stages[-1].image_size
            backend = final_backend(self.cache, self.stages, pl_module)
            seconds = finish_cost(trainer, pl_module, size, self.finish_views, backend)
            self.planner.budget.keep(FINISH_MARGIN * seconds)
        if self._restored_rng is not None:
            set_rng_state(self._restored_rng)
            self._restored_rng = None

    def _plan(self, trainer, pl_module) -> None:
        planner = self.planner
        if planner.plan is not None:  # restored from the checkpoint
            self.stages = planner.apply(self.stages)
        elif planner.saved_plan() is not None:
            # A run restarted before its first checkpoint follows the plan it had made.
            self.resumed, self.optim_stage = True, None
            self.stages = planner.apply(self.stages)
            log.info(
                "budget plan (from %s): %s", planner.plan_file, planner.plan.describe(self.stages)
            )
        else:
            planner.make(
                self.stages,
                lambda: measure_costs(
                    self.stages,
                    self.cache,
                    trainer,
                    pl_module,
                    self.finish_views,
                    self.tail_format,
                ),
            )
            planner.plan = Plan.from_dict(trainer.strategy.broadcast(planner.plan.to_dict(), src=0))
            self.optim_stage = None  # the optimizer was built before the plan: rebuild it
            self.stages = planner.apply(self.stages)
            log.info("budget plan: %s", planner.plan.describe(self.stages))
            if trainer.is_global_zero:
                planner.save()

    def on_fit_end(self, trainer, pl_module) -> None:
        # The caches stay until the end of the run has used them (the open set's feature bank,
        # :mod:`carclf.train.finish`), which then closes them.
        pl_module.input_start = 0
        trainer.datamodule.loader_source = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        # Lightning turns Ctrl-C into sys.exit(1); the run reads this to say how to resume
        self.interrupt = exception if isinstance(exception, KeyboardInterrupt) else None

    def current_stage(self) -> Stage:
        idx = self.applied if self.applied is not None else (self.restored_stage or 0)
        return self.stages[idx]

    # -- applying a stage ----------------------------------------------------------------------
    def freeze(self, pl_module, stage: Stage) -> None:
        net = pl_module.net
        net.set_trainable_groups(
            net.num_groups if self.ddp_safe else stage.trainable_groups,
            frozen=net.num_groups - stage.trainable_groups,
        )

    def loader(self, split: str):
        """The DataModule's ``loader_source`` hook: apply the epoch's stage, then a cache loader
        for ``split`` when the stage is cached (None: the DataModule's own loader)."""
        trainer = self._trainer
        self.sync(trainer, trainer.lightning_module)
        if not self.cut:
            return self._budget_val_loader(trainer.datamodule) if split == "val" else None
        dm, stage = trainer.datamodule, self.current_stage()
        size = stage.batch_size if split == "train" else (dm.eval_batch_size or stage.batch_size)
        return self.cache.loader(split, size)

    def _budget_val_loader(self, dm) -> DataLoader | None:
        """With a time budget, the DataModule's validation loader whose pass ends early past
        it (:class:`~carclf.train.time_budget.BudgetBatches`); None: the DataModule's own."""
        if self.planner is None or self.ddp_safe:
            return None
        ds = dm.dataset("val")
        batches = BudgetBatches(SequentialSampler(ds), dm.eval_batch_size or dm.batch_size, False)
        return DataLoader(
            ds, batch_sampler=batches, num_workers=dm.num_workers, collate_fn=skip_none_collate
        )

    def sync(self, trainer: pl.Trainer, pl_module) -> None:
        """Apply the stage of the current epoch if it is not in place yet (idempotent)."""
        idx = stage_at(self.stages, trainer.current_epoch)
        if idx != self.applied:
            self.apply(self.stages[idx], trainer, pl_module)

    def apply(self, stage: Stage, trainer: pl.Trainer, pl_module) -> None:
        t0 = time.perf_counter()
        dm = trainer.datamodule
        self.freeze(pl_module, stage)
        dm.image_size, dm.batch_size, dm.augment_strength = (
            stage.image_size,
            stage.batch_size,
            stage.augment_strength,
        )
        self.cut = self.cache.cut(self.stages, stage, pl_module)
        if self.cut:
            self.cache.prepare(stage, self.cut, dm, pl_module)
        pl_module.input_start = self.cut
        apply_format(pl_module, self.stage_format(stage), self.cut)
        if stage.auto_epochs and self.planner is not None and not self.resumed:
            if self.planner.replan(self.stages, stage) is not None:  # after the cache is paid
                self.stages = self.planner.apply(self.stages)
                trainer.fit_loop.max_epochs = total_epochs(self.stages)
            stage = self.stages[stage.index]
        self.applied = stage.index
        self._log_stage(stage, pl_module)
        self._paused += time.perf_counter() - t0

    def stage_format(self, stage: Stage) -> str:
        """The format ``stage``'s trained part runs in (the plan's measured choice under
        ``auto``)."""
        if self.tail_format != "auto":
            return self.tail_format
        plan = self.planner.plan if self.planner is not None else None
        chosen = plan.rates.get("tail_format", []) if plan is not None else []
        return chosen[stage.index] if stage.index < len(chosen) else "fp32"

    def _log_stage(self, stage: Stage, pl_module) -> None:
        log.info(
            "stage %d/%d %r: epochs %d-%d, %d/%d backbone groups trained (%s params), %d px, batch %d, lr %.2g%s%s",
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
            f", cached groups 0-{self.cut - 1}" if self.cut else "",
            f", trained in {self.stage_format(stage)}" if pl_module.device.type == "cpu" else "",
        )

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
        self.freeze(pl_module, stage)
        optimizer = build_optimizer(
            pl_module.net, stage, self.layer_decay, include_frozen=self.ddp_safe
        )
        self.optim_stage = stage.index
        scheduler = build_scheduler(optimizer, stage, self._steps_per_epoch(stage, self._trainer))
        return {"optimizer": optimizer, "lr_scheduler": scheduler} if scheduler else optimizer

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        now = time.perf_counter()
        if self._epoch_started is not None and self.applied is not None and self.planner:
            # The span since the last epoch start, less any stage set-up (cache builds) in it.
            self.planner.record_epoch(
                self._last_epoch_stage, now - self._epoch_started - self._paused
            )
        self._epoch_started, self._paused = now, 0.0
        self.sync(trainer, pl_module)
        self._replan_after_first_epoch(trainer)
        self._last_epoch_stage = self.applied
        if self.optim_stage != self.applied:
            trainer.strategy.setup_optimizers(trainer)
        pl_module.log("stage", float(self.applied), on_step=False, on_epoch=True)

    def _replan_after_first_epoch(self, trainer: pl.Trainer) -> None:
        """Once an ``auto`` stage's second epoch has run (the first one pays the stage's warm-up),
        fit its epochs to the second one's measured time (then to the median of its epochs after
        the 8th and every :data:`REPLAN_EVERY`) and let the LR schedule run over the new length
        from where it is."""
        stage = self.current_stage()
        done = trainer.current_epoch - stage.start_epoch
        if (
            self.planner is None
            or self.planner.plan is None
            or self.resumed
            or not stage.auto_epochs
            or not (done in REPLAN_AFTER_EPOCHS or (done > 8 and done % REPLAN_EVERY == 0))
            or self._last_epoch_stage != stage.index
            or not self.planner.epoch_log
        ):
            return
        own = [t for i, t in self.planner.epoch_log[-(done - 1) :] if i == stage.index]
        if not own:
            return
        epochs = self.planner.replan_running(self.stages, stage, statistics.median(own), done)
        if epochs is None:
            return
        self.stages = self.planner.apply(self.stages)
        trainer.fit_loop.max_epochs = total_epochs(self.stages)
        stage = self.stages[stage.index]
        configs = trainer.lr_scheduler_configs
        if configs and self.optim_stage == stage.index:
            steps = self._steps_per_epoch(stage, trainer)
            if stage.scheduler == "cosine":  # the same curve over the new length, from here
                built = build_scheduler(trainer.optimizers[0], stage, steps, done * steps)
            else:  # the rest of the schedule over what is left, no warm-up
                rest = dataclasses.replace(stage, epochs=stage.epochs - done, warmup_epochs=0.0)
                built = build_scheduler(trainer.optimizers[0], rest, steps)
            if built is not None and configs[0].interval == built["interval"]:
                configs[0].scheduler = built["scheduler"]
