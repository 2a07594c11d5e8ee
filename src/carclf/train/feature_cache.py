"""Feature cache: compute a stage's frozen backbone prefix once, not every epoch.

On a CPU, backprop through the whole backbone runs at ~6 img/s for Lite0, while the top blocks
alone train at hundreds of img/s once their input is known. While the first ``cut`` groups are
frozen (and BatchNorm there is in eval mode) their output for a given input image never changes,
so a stage can run them once for a fixed pool of augmented views per image (the plain image, its
mirror, and random train-time crops) and train the rest on those outputs. Each epoch still sees
every image once, in one randomly chosen view, so a recipe means the same thing with or without
the cache; only the augmentation is drawn from a finite pool.

Building is the expensive part, so it is made cheap and never paid twice:

* each file is decoded once for all its views (:class:`carclf.data.dataset.MultiViewDataset`);
* the prefix runs on the fastest engine that matches PyTorch (:mod:`carclf.train.prefix_engine`);
* with a ``directory`` (the run dir), the store is a memory-mapped fp16 file there, with its key
  and progress beside it: a run killed while building resumes the build where it stopped, and a
  run killed later reuses the finished cache instead of building it again. Caches up to
  ``max_mb`` are then copied into RAM for the fastest reads.

The cache is keyed by the cut, image size, view pool and a fingerprint of the frozen weights, so
it is rebuilt whenever any of them changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    Subset,
)

from carclf import io, phases
from carclf.data.dataset import MultiViewDataset, skip_none_collate
from carclf.models.network import CarNet
from carclf.train.time_budget import BudgetBatches

log = logging.getLogger(__name__)

# How often (seconds) a build on disk records its progress: what a kill can cost at most.
PROGRESS_EVERY_S = float(os.environ.get("CARCLF_CACHE_PROGRESS_S", "10"))


@dataclass(frozen=True)
class CacheKey:
    split: str
    cut: int
    image_size: int
    views: int
    augment_strength: float
    num_items: int
    fingerprint: str

    @property
    def stem(self) -> str:
        return (
            f"{self.split}-cut{self.cut}-{self.image_size}px-{self.views}v"
            f"-s{self.augment_strength:g}-n{self.num_items}-{self.fingerprint}"
        )


def prefix_fingerprint(net: CarNet, cut: int) -> str:
    """A cheap digest of the first ``cut`` groups' weights and BatchNorm statistics."""
    h = hashlib.sha1()
    for i in range(cut):
        for mod in net.group_modules(i):
            for t in mod.state_dict().values():
                if t.is_floating_point():
                    h.update(np.float64(t.double().sum().item()).tobytes())
                    h.update(np.float64(t.double().abs().sum().item()).tobytes())
    return h.hexdigest()[:16]


class _DiskStore:
    """Paths of one cache in a directory: the fp16 array and its key/progress record."""

    def __init__(self, directory: Path, key: CacheKey):
        self.array = directory / f"{key.stem}.npy"
        self.record = directory / f"{key.stem}.json"
        self.key = key

    def read_record(self) -> dict | None:
        try:
            rec = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None
        if rec.get("key") != asdict(self.key) or not self.array.is_file():
            return None
        return rec

    def delete(self) -> None:
        for p in (self.array, self.record):
            p.unlink(missing_ok=True)


class FeatureCache:
    """Outputs of the first ``cut`` groups for ``V`` views of ``N`` images: shape (V, N, C, H, W)."""

    def __init__(
        self,
        key: CacheKey,
        store,
        labels: np.ndarray,
        valid: np.ndarray,
        seconds: float,
        disk: _DiskStore | None = None,
        rate: float | None = None,
    ):
        self.key = key
        self.store = store
        self.labels = torch.tensor(np.asarray(labels), dtype=torch.long)
        self.valid = np.flatnonzero(valid)
        self.seconds = seconds
        self.disk = disk
        self.rate = rate  # image-views per second of the build, after its first batch

    @classmethod
    def open(cls, key: CacheKey, directory: Path, labels, max_mb: int) -> FeatureCache | None:
        """A finished cache with this key in ``directory`` (from an earlier, killed run), or None."""
        disk = _DiskStore(Path(directory), key)
        rec = disk.read_record()
        if rec is None or not rec.get("complete"):
            return None
        try:
            store = np.load(disk.array, mmap_mode="r")
        except (OSError, ValueError):
            return None
        log.info(
            "reusing the %s feature cache in %s (built in %.0f s)",
            key.split,
            disk.array,
            rec.get("seconds", 0.0),
        )
        valid = np.zeros(key.num_items, dtype=bool)
        valid[np.asarray(rec["valid"], dtype=int)] = True
        return cls(key, cls._in_ram(store, max_mb), labels, valid, 0.0, disk, rec.get("rate"))

    @staticmethod
    def _in_ram(store, max_mb: int):
        size_mb = int(np.prod(store.shape)) * 2 / 2**20
        return torch.from_numpy(np.array(store)) if size_mb <= max_mb else store

    @classmethod
    def build(
        cls,
        key: CacheKey,
        engine,
        dataset: MultiViewDataset,
        *,
        batch_images: int = 8,
        num_workers: int = 2,
        max_mb: int = 2048,
        directory: Path | None = None,
        show: bool = True,
    ) -> FeatureCache:
        """Run ``engine`` (the frozen prefix) over every view of every image in ``dataset``.

        With a ``directory`` the store lives on disk there and a build killed part-way resumes
        from its last recorded progress. A build that reaches the run's time budget
        (:mod:`carclf.phases`) stops after its current batch and keeps the photos it reached
        (at least one batch): the epoch then visits those only, and the budget holds. ``show``:
        progress (a bar on a terminal, one line in a log).
        """
        t0 = time.perf_counter()
        n = len(dataset)
        disk = _DiskStore(Path(directory), key) if directory is not None else None
        store, valid, start = cls._resume(disk, key, n)
        todo = dataset if start == 0 else Subset(dataset, range(start, n))
        loader = DataLoader(
            todo, batch_size=batch_images, num_workers=num_workers, collate_fn=skip_none_collate
        )
        build = _Build(key, len(dataset.transforms), n, store, valid, start, disk, t0)
        build.run(loader, engine, show)
        store, seconds, rate = build.store, time.perf_counter() - t0, build.rate()
        complete = build.cut_short is None  # a cut-short build continues on resume
        if disk is not None:
            store.flush()
            done = n if complete else build.position
            record = {**cls._record(key, valid, done, complete), "seconds": seconds, "rate": rate}
            io.write_json(disk.record, record, indent=None)
            store = cls._in_ram(store, max_mb)
        if not complete:
            log.warning(
                "%s: the %s feature cache holds %d of %d photos",
                build.cut_short,
                key.split,
                int(valid.sum()),
                n,
            )
        (log.info if show else log.debug)(
            "cached %s features: %d views x %d images, %.0f MB, %.1f s (%s, %s image-views/s)",
            key.split,
            build.views,
            n,
            int(np.prod(store.shape)) * 2 / 2**20,
            seconds,
            getattr(engine, "name", type(engine).__name__),
            f"{rate:.0f}" if rate else "?",
        )
        return cls(key, store, np.asarray(dataset.labels), valid, seconds, disk, rate)

    @staticmethod
    def _resume(disk: _DiskStore | None, key: CacheKey, n: int):
        """(store, valid, first image to compute) of a build killed part-way, or a fresh start."""
        valid = np.zeros(n, dtype=bool)
        rec = disk.read_record() if disk else None
        if rec is None or rec.get("complete"):
            return None, valid, 0
        try:
            store = np.load(disk.array, mmap_mode="r+")
            start = int(rec["done"])
            valid[np.asarray(rec["valid"], dtype=int)] = True
        except (OSError, ValueError, KeyError):
            return None, np.zeros(n, dtype=bool), 0
        log.info("resuming the %s feature cache build at image %d/%d", key.split, start, n)
        return store, valid, start

    @staticmethod
    def _record(key: CacheKey, valid: np.ndarray, done: int, complete: bool) -> dict:
        return {
            "key": asdict(key),
            "done": done,
            "valid": np.flatnonzero(valid).tolist(),
            "complete": complete,
        }

    @staticmethod
    def _allocate(shape, disk: _DiskStore | None):
        if disk is None:
            return torch.zeros(shape, dtype=torch.float16)
        disk.array.parent.mkdir(parents=True, exist_ok=True)
        size_mb = int(np.prod(shape)) * 2 / 2**20
        log.debug("feature cache of %.0f MB in %s", size_mb, disk.array)
        return np.lib.format.open_memmap(disk.array, mode="w+", dtype=np.float16, shape=shape)

    def delete(self) -> None:
        """Remove the cache's files from disk (the run no longer needs them)."""
        if self.disk is not None:
            self.store = None
            self.disk.delete()

    def loader(self, batch_size: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
        """Batches ``(features, label, index)``; in shuffled mode each item takes a random view."""
        ds = _CachedBatches(self, random_view=shuffle)
        drop = drop_last and len(ds) > batch_size
        if shuffle:
            batches = BatchSampler(RandomSampler(ds), batch_size, drop_last=drop)
        else:  # an evaluation pass: ends early past the time budget (see BudgetBatches)
            batches = BudgetBatches(SequentialSampler(ds), batch_size, drop_last=drop)
        return DataLoader(ds, batch_size=None, sampler=batches, num_workers=0)


class _Build:
    """The loop of one cache build: fills the store batch by batch, shows and records progress."""

    def __init__(self, key, views, n, store, valid, start, disk, t0):
        self.key, self.views, self.n = key, views, n
        self.store, self.valid, self.disk, self.t0 = store, valid, disk, t0
        self.position = start
        self.total, self.done = views * n, views * start
        self.first_at, self.first_done = None, self.done
        self.cut_short: str | None = None  # why the build stopped early (the time budget)

    def run(self, loader, engine, show: bool = True) -> None:
        key = self.key
        views = f"{self.views} view{'s' if self.views > 1 else ''}"
        desc = f"caching {key.split} features (groups 0-{key.cut - 1}, {views})"
        last_saved = time.perf_counter()
        with phases.bar(desc, self.total, "view", initial=self.done, show=show) as bar:
            for batch in loader:
                if batch is None:
                    continue
                added = self._add(batch, engine)
                now = time.perf_counter()
                if self.first_at is None:
                    self.first_at, self.first_done = now, self.done
                if self.disk is not None and now - last_saved > PROGRESS_EVERY_S:
                    self.store.flush()
                    record = FeatureCache._record(key, self.valid, self.position, False)
                    io.write_json(self.disk.record, record, indent=None)
                    last_saved = now
                try:
                    bar.update(added)
                except phases.BudgetSpent as e:
                    if self.done < self.total:
                        self.cut_short = str(e)
                    break
        if self.store is None:
            raise RuntimeError(f"no readable image in the {key.split} split")

    def _add(self, batch, engine) -> int:
        x, _, idx = batch
        b = len(idx)
        feats = engine(x.flatten(0, 1))
        feats = feats.reshape(b, self.views, *feats.shape[1:]).transpose(0, 1)
        feats = feats.to("cpu", torch.float16)
        if self.store is None:
            self.store = FeatureCache._allocate((self.views, self.n, *feats.shape[2:]), self.disk)
        ids = idx.numpy()
        if isinstance(self.store, np.ndarray):
            self.store[:, ids] = feats.numpy()
        else:
            self.store[:, torch.from_numpy(ids)] = feats
        self.valid[ids] = True
        self.position = int(ids.max()) + 1
        self.done += b * self.views
        return b * self.views

    def rate(self) -> float | None:
        """Image-views per second after the first batch (worker start-up left out)."""
        steady = time.perf_counter() - self.first_at if self.first_at else 0.0
        if steady > 0 and self.done > self.first_done:
            return (self.done - self.first_done) / steady
        return None


class _CachedBatches(Dataset):
    """Indexed by a list of positions (one batch), so a batch is one fancy-indexing read."""

    def __init__(self, cache: FeatureCache, random_view: bool):
        self.cache = cache
        self.random_view = random_view

    def __len__(self) -> int:
        return len(self.cache.valid)

    def __getitem__(self, positions):
        items = self.cache.valid[np.asarray(positions)]
        views = self.cache.store.shape[0]
        v = (
            np.random.randint(views, size=len(items))
            if self.random_view and views > 1
            else np.zeros(len(items), dtype=int)
        )
        feats = self.cache.store[v, items]
        feats = (
            torch.from_numpy(np.ascontiguousarray(feats))
            if isinstance(feats, np.ndarray)
            else feats
        )
        return feats.float(), self.cache.labels[items], torch.as_tensor(items)
