"""CacheStage: the feature caches of a run's frozen prefixes and the engines that compute them.

A stage whose bottom backbone groups are frozen can run them once, for a fixed pool of views per
training photo, and train the rest on their cached output (:mod:`carclf.train.feature_cache`).
This class decides where a stage can be cut, keeps one prefix engine per (cut, size, weights)
(:mod:`carclf.train.prefix_engine`), builds or reopens the caches of the train and validation
splits, and hands out loaders over them. The stage callback and the planner's speed probe both
use it through these public methods; neither reaches into its state.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from carclf import io, phases
from carclf.data.dataset import MultiViewDataset
from carclf.train.engine_gate import GateSample, Reference, candidates, select
from carclf.train.feature_cache import CacheKey, FeatureCache, prefix_fingerprint
from carclf.train.lowp_engines import build_low_precision
from carclf.train.prefix_engine import (
    ENGINES,
    CheckedEngine,
    TorchPrefix,
    make_engine,
    resolve_engine,
)
from carclf.train.stages import Stage

log = logging.getLogger(__name__)

# Random crops of a large photo upscale a part of it: keep 1.5x the size when drafting the JPEG.
DRAFT_FACTOR = 1.5
# Photos the probe caches: 48 x 4 views; its rate still varied 155-207 views/s between runs
# whose builds all ran at 158-161 (BENCHMARKS.md), which the re-plans absorb.
PROBE_IMAGES = 48
# The probe's views per photo: one plain view and train-time crops, mostly crops as a large pool
# is (a 32-view pool is 2 plain views and 30 crops).
PROBE_CROPS = 3
GATE_PHOTOS = 32  # training photos a low-precision engine calibrates on; as many held out
CHOICE_FILE = "engine.json"  # the cache dir's record of the engine chosen (resume keeps it)


def _spread(n: int, k: int) -> list[int]:
    """``k`` positions spread evenly over ``n`` rows (splits are often sorted by class)."""
    return sorted({int(i) for i in np.linspace(0, n - 1, num=min(k, n))}) if n else []


class CacheStage:
    """Feature caches and prefix engines of one run.

    Args:
        engine: ``cache_engine`` (auto | torch | onnx | int8 | bf16).
        max_cache_mb: caches up to this size are also held in RAM.
        cache_dir: where caches live (the run dir's ``cache/``): a killed run reuses them.
    """

    def __init__(
        self, engine: str = "auto", max_cache_mb: int = 2048, cache_dir: str | Path | None = None
    ):
        self.engine_choice = engine
        self.max_cache_mb = max_cache_mb
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.enabled = True  # off under DDP: every rank would build its own cache
        self.caches: dict[str, FeatureCache] = {}
        self.seconds: dict[str, float] = {}  # "<stage>/<split>" -> build (or reopen) time
        self.engine_names: set[str] = set()  # engines that computed a cache (for metrics.json)
        self._engines: dict[tuple, CheckedEngine] = {}
        self._final: dict[tuple, CheckedEngine] = {}  # fp32 engines of the end of the run
        self.gate_results: list[dict] = []  # the low-precision gate's measurements (metrics)

    # -- where to cut -------------------------------------------------------------------------
    def cacheable(self, stage: Stage, pl_module) -> bool:
        net = pl_module.net
        if (
            stage.cache == "off"
            or not self.enabled
            or not net.splittable
            or stage.trainable_groups >= net.num_groups
        ):
            return False
        return stage.cache == "on" or pl_module.device.type == "cpu"

    def cut(self, stages: list[Stage], stage: Stage, pl_module) -> int:
        """Groups to cache for ``stage`` (0: no cache): the smallest frozen prefix among it and
        the following stages that can share one cache (same size, views and augmentation)."""
        if not self.cacheable(stage, pl_module):
            return 0
        n = pl_module.net.num_groups
        cut = stage.cut(n)
        same = (stage.image_size, stage.augment_strength, stage.cache_views)
        for nxt in stages[stage.index + 1 :]:
            if (nxt.image_size, nxt.augment_strength, nxt.cache_views) != same:
                break
            if not self.cacheable(nxt, pl_module):
                break
            cut = min(cut, nxt.cut(n))
        return cut

    # -- engines and datasets -----------------------------------------------------------------
    def engine(self, cut: int, size: int, pl_module, dm=None) -> CheckedEngine:
        """The prefix engine for groups ``0..cut-1`` at ``size`` px (built once, then reused).

        With ``dm`` (the DataModule, at ``size``), low-precision engines are considered: gated on
        the run's own photos, and under ``auto`` timed once per run; the choice is recorded in
        the cache dir (:data:`CHOICE_FILE`) so a resumed run keeps it."""
        net = pl_module.net
        key = (cut, size, prefix_fingerprint(net, cut))
        if key not in self._engines:
            name = resolve_engine(self.engine_choice, pl_module.device)
            left = phases.seconds_left()
            spent = left is not None and left < 0
            if self.engine_choice == "auto" and spent:
                name = "torch"  # the time budget is spent: no time for an ONNX export
            engine = make_engine(name, net, pl_module.meta, cut, size, workdir=self.cache_dir)
            names = candidates(self.engine_choice, self._recorded())
            if names and dm is not None and pl_module.device.type == "cpu" and not spent:
                try:
                    engine = self._low_precision(engine, names, key, dm, pl_module)
                except Exception as e:  # no gate, no low precision: the run goes on in fp32
                    log.warning(
                        "low-precision cache engines not tried (%s: %s): using %s",
                        type(e).__name__,
                        e,
                        engine.name,
                    )
            self._engines[key] = engine
        return self._engines[key]

    def final_engine(self, cut: int, size: int, pl_module) -> CheckedEngine:
        """The fp32 engine for groups ``0..cut-1`` at ``size`` px for the end of the run's passes
        (:mod:`carclf.train.final_pass`): the cache's own engine when that is fp32, else one
        exported for it, so the final validation computes what the bundle will."""
        net = pl_module.net
        key = (cut, size, prefix_fingerprint(net, cut))
        own = self._engines.get(key)
        if own is not None and own.name in ("onnx", "torch"):
            return own
        if key not in self._final:
            name = resolve_engine(self.engine_choice, pl_module.device)
            self._final[key] = make_engine(
                name, net, pl_module.meta, cut, size, workdir=self.cache_dir
            )
        return self._final[key]

    def _low_precision(self, baseline: CheckedEngine, names, key: tuple, dm, pl_module):
        """``baseline`` (fp32) or the low-precision engine that passes its gate (and, under
        ``auto`` with nothing recorded, measures faster). A baseline that loses is kept for the
        end of the run's fp32 passes (:meth:`final_engine`) rather than exported again."""
        net, cut = pl_module.net, key[0]
        sample = self.gate_sample(dm)
        reference = Reference(baseline, net, cut, sample)

        def build(name: str):
            return build_low_precision(name, net, cut, baseline.engine, sample.calibration)

        measure = self.engine_choice == "auto" and self._recorded() is None
        chosen, results = select(names, build, reference, baseline, measure=measure)
        self.gate_results = [r.to_dict() for r in results]
        if chosen is None:
            self._record(baseline.name)
            return baseline
        self._final[key] = baseline
        self._record(chosen.name)
        rate = next((r.views_per_s for r in results if r.engine == chosen.name), None)
        log.info(
            "cache engine %s (gate passed%s)",
            chosen.name,
            f", {rate:.0f} views/s vs fp32 {results[-1].views_per_s:.0f}" if rate else "",
        )
        return CheckedEngine(chosen, TorchPrefix(net, cut), checked=True)

    def gate_sample(self, dm) -> GateSample:
        """Views of training photos spread over the split (a plain view and a train-time crop
        each: what int8 calibrates on) and of held-out photos (validation photos, or other
        training photos where there is no validation split; the plain view and its mirror)."""
        train, val = dm.rows("train"), dm.rows("val")
        picked = _spread(len(train), 2 * GATE_PHOTOS if not len(val) else GATE_PHOTOS)
        calib_rows = train.iloc[picked[::2] if not len(val) else picked]
        held_rows = (
            val.iloc[_spread(len(val), GATE_PHOTOS)] if len(val) else train.iloc[picked[1::2]]
        )
        if not len(held_rows):
            held_rows = calib_rows
        calib = self.multiview(dm, calib_rows, [dm.eval_preset(), dm.train_preset()])
        held = self.multiview(dm, held_rows, [dm.eval_preset(), dm.eval_preset(hflip=True)])
        items = [x for x in (calib[i] for i in range(len(calib))) if x is not None]
        views = [x for x in (held[i] for i in range(len(held))) if x is not None]
        if not items or not views:
            raise RuntimeError("no readable photo for the cache engine's gate")
        labels = torch.tensor([int(y) for _, y, _ in items]).repeat_interleave(2)
        return GateSample(
            torch.cat([x for x, _, _ in items]), labels, torch.cat([x for x, _, _ in views])
        )

    def _recorded(self) -> str | None:
        """The engine an earlier start of this run chose (None: none recorded)."""
        if self.cache_dir is None:
            return None
        try:
            name = json.loads((self.cache_dir / CHOICE_FILE).read_text()).get("engine")
        except (OSError, ValueError, AttributeError):
            return None
        return name if name in ENGINES else None

    def _record(self, name: str) -> None:
        if self.cache_dir is None or self._recorded() is not None:
            return
        record = {"choice": self.engine_choice, "engine": name, "gate": self.gate_results}
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        io.write_json(self.cache_dir / CHOICE_FILE, record)

    @staticmethod
    def view_presets(dm, split: str, views: int) -> list:
        """The plain image and its mirror first, then random train-time crops."""
        if split != "train":
            return [dm.eval_preset()]
        presets = [dm.eval_preset(), dm.eval_preset(hflip=True)]
        while len(presets) < views:
            presets.append(dm.train_preset())
        return presets[:views]

    @staticmethod
    def multiview(dm, rows, presets) -> MultiViewDataset:
        draft = int(dm.image_size * DRAFT_FACTOR)
        return MultiViewDataset(rows["path"].tolist(), rows["label"].tolist(), presets, draft)

    # -- building -----------------------------------------------------------------------------
    def prepare(self, stage: Stage, cut: int, dm, pl_module) -> None:
        """Build (or reopen) the train and validation caches of ``stage`` cut at ``cut``."""
        fingerprint = prefix_fingerprint(pl_module.net, cut)
        for split in ("train", "val"):
            views = stage.cache_views if split == "train" else 1
            rows = dm.rows(split)
            key = CacheKey(
                split, cut, stage.image_size, views, stage.augment_strength, len(rows), fingerprint
            )
            old = self.caches.get(split)
            if old is not None and old.key == key:
                continue
            if old is not None:
                old.delete()  # free memory and disk before building the new one
                self.caches.pop(split)
            t0 = time.perf_counter()
            self.caches[split] = self._open_or_build(key, rows, dm, pl_module, stage, split)
            self.seconds[f"{stage.name}/{split}"] = time.perf_counter() - t0

    def _open_or_build(self, key: CacheKey, rows, dm, pl_module, stage: Stage, split: str):
        if self.cache_dir is not None:
            labels = rows["label"].to_numpy()
            cache = FeatureCache.open(key, self.cache_dir, labels, self.max_cache_mb)
            if cache is not None:
                return cache
        return FeatureCache.build(
            key,
            self.engine(key.cut, key.image_size, pl_module, dm),
            self.multiview(dm, rows, self.view_presets(dm, split, key.views)),
            batch_images=max(1, 32 // key.views),
            num_workers=dm.num_workers,
            max_mb=self.max_cache_mb,
            directory=self.cache_dir,
        )

    def loader(self, split: str, batch_size: int) -> DataLoader:
        """A loader over the cache of ``split`` (train: shuffled, one random view per photo)."""
        train = split == "train"
        return self.caches[split].loader(batch_size, shuffle=train, drop_last=train)

    def probe(self, dm, pl_module, stage: Stage, cut: int) -> tuple[torch.Tensor, float]:
        """Cache a plain view and :data:`PROBE_CROPS` crops of a few train photos with the run's
        engine: features and views/s."""
        train = dm.rows("train")
        rows = train.iloc[_spread(len(train), PROBE_IMAGES)]  # not one class's photos
        fingerprint = prefix_fingerprint(pl_module.net, cut)
        views = 1 + PROBE_CROPS
        key = CacheKey(
            "probe", cut, stage.image_size, views, stage.augment_strength, len(rows), fingerprint
        )
        presets = [dm.eval_preset()] + [dm.train_preset() for _ in range(PROBE_CROPS)]
        cache = FeatureCache.build(
            key,
            self.engine(cut, stage.image_size, pl_module, dm),
            self.multiview(dm, rows, presets),
            batch_images=32 // views,
            num_workers=dm.num_workers,
            show=False,
        )
        rate = cache.rate or views * len(cache.valid) / max(cache.seconds, 1e-6)
        feats = torch.as_tensor(cache.store).reshape(-1, *cache.store.shape[2:]).float()
        return feats, rate

    @torch.inference_mode()
    def tail_features(self, net, image_size: int, positions) -> torch.Tensor | None:
        """Penultimate features (the head's input) of train-split rows ``positions`` computed
        from the train cache's plain view through the network's tail, or None when the cache
        cannot stand in for the photos: none, another image size, or frozen weights that are no
        longer those it was computed with (checked by fingerprint). Rows the cache could not
        decode are left out (see :attr:`cached_rows`)."""
        cache = self.caches.get("train")
        if cache is None or cache.store is None or cache.key.image_size != image_size:
            return None
        if prefix_fingerprint(net, cache.key.cut) != cache.key.fingerprint:
            return None
        held = self.cached_rows()
        rows = [int(p) for p in positions if int(p) in held]
        out = []
        for i in range(0, len(rows), 64):
            x = torch.as_tensor(cache.store[0, rows[i : i + 64]]).float()
            out.append(net.head(net.features_from(x, cache.key.cut), pre_logits=True).float())
        return torch.cat(out) if out else None

    def cached_rows(self) -> set[int]:
        """Train-split rows the train cache holds (unreadable photos are not among them)."""
        cache = self.caches.get("train")
        return set(cache.valid.tolist()) if cache is not None else set()

    def close(self) -> None:
        """The run is done: delete its caches (a resume will not need them), close engines."""
        for cache in self.caches.values():
            cache.delete()
        self.caches.clear()
        for engine in self._engines.values():
            if engine.checked or engine.engine is None:
                self.engine_names.add(engine.name)
            engine.close()
        self._engines.clear()
        for engine in self._final.values():
            engine.close()
        self._final.clear()
        if self.cache_dir is not None and self.cache_dir.is_dir():
            (self.cache_dir / CHOICE_FILE).unlink(missing_ok=True)
            try:
                self.cache_dir.rmdir()  # only when empty: nothing of the user's is removed
            except OSError:
                pass
