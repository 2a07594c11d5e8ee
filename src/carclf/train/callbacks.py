"""StagedFinetuning: the one piece of code that applies a recipe's stages.

At each stage boundary, inside a single ``Trainer.fit``, it

1. freezes/unfreezes backbone groups (BatchNorm of frozen parts stays in eval mode),
2. sets the DataModule's image size, batch size and augmentation strength,
3. on a CPU, installs loaders over a :class:`FeatureCache` of the frozen prefix when that is
   possible (single process, a splittable backbone), and
4. rebuilds the optimizer and scheduler from the new stage's named parameter groups.

Lightning reloads dataloaders *before* ``on_train_epoch_start``, so steps 1-3 run from the
DataModule's ``before_loader`` hook; step 4 runs in ``on_train_epoch_start``. The stage index is
part of the checkpoint: on resume the optimizer is rebuilt for the same stage *before* its saved
state is loaded into it, so param groups always line up.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from carclf.train.feature_cache import CacheKey, FeatureCache, prefix_fingerprint
from carclf.train.optim import build_optimizer, build_scheduler, trainable_parameter_count
from carclf.train.stages import Stage, stage_at

log = logging.getLogger(__name__)


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
    ):
        self.stages = stages
        self.layer_decay = layer_decay
        self.max_cache_mb = max_cache_mb
        self.cache_dir = Path(cache_dir) if cache_dir else None
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
        }

    def load_state_dict(self, state: dict) -> None:
        names = state.get("stage_names")
        if names is not None and names != [s.name for s in self.stages]:
            raise ValueError(
                f"checkpoint was written by a recipe with stages {names}, not {[s.name for s in self.stages]}"
            )
        self.restored_stage = state.get("stage")
        self._restored_rng = state.get("rng")

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
        if self._restored_rng is not None:
            _set_rng_state(self._restored_rng)
            self._restored_rng = None

    def on_fit_end(self, trainer, pl_module) -> None:
        pl_module.input_start = 0
        trainer.datamodule.loader_overrides.clear()
        self.caches.clear()

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
                self.caches.pop(split, None)  # free memory before building the new one
                presets = (
                    [dm.eval_preset(), dm.eval_preset(hflip=True)]
                    if split == "train"
                    else [dm.eval_preset()]
                )
                while len(presets) < views:
                    presets.append(dm.train_preset())
                datasets = [dm.dataset(split, transform=p) for p in presets[:views]]
                t0 = time.perf_counter()
                self.caches[split] = FeatureCache.build(
                    key,
                    net,
                    datasets,
                    rows["label"].to_numpy(),
                    batch_size=max(stage.batch_size, 32),
                    num_workers=dm.num_workers,
                    max_mb=self.max_cache_mb,
                    spill_dir=self.cache_dir,
                    device=pl_module.device,
                )
                self.cache_seconds[f"{stage.name}/{split}"] = time.perf_counter() - t0
        train_cache, val_cache = self.caches["train"], self.caches["val"]
        dm.loader_overrides["train"] = lambda: train_cache.loader(
            stage.batch_size, shuffle=True, drop_last=True
        )
        dm.loader_overrides["val"] = lambda: val_cache.loader(
            dm.eval_batch_size or stage.batch_size, shuffle=False
        )
        pl_module.input_start = cut

    # -- optimizers -------------------------------------------------------------------------
    def _steps_per_epoch(self, stage: Stage, trainer: pl.Trainer) -> int:
        n = len(trainer.datamodule.train_idx)
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
        self.sync(trainer, pl_module)
        if self.optim_stage != self.applied:
            trainer.strategy.setup_optimizers(trainer)
        pl_module.log("stage", float(self.applied), on_step=False, on_epoch=True)


class TimeBudget(pl.Callback):
    """Stop training once ``minutes`` have passed since ``start`` (a ``time.perf_counter`` value).

    Unlike Lightning's ``max_time``, the clock starts when the run starts, so the data check and
    the building of feature caches count against the budget too.
    """

    def __init__(self, minutes: float, start: float | None = None):
        self.seconds = minutes * 60.0
        self.start = time.perf_counter() if start is None else start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.perf_counter() - self.start > self.seconds and not trainer.should_stop:
            log.info(
                "time budget of %.1f min reached: stopping after this batch", self.seconds / 60
            )
            trainer.should_stop = True
