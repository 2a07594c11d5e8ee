"""Feature cache: compute a stage's frozen backbone prefix once, not every epoch.

On a CPU, backprop through the whole backbone runs at ~6 img/s for Lite0, while the top blocks
alone train at hundreds of img/s once their input is known. While the first ``cut`` groups are
frozen (and BatchNorm there is in eval mode) their output for a given input image never changes,
so a stage can run them once for a fixed pool of augmented views per image (the plain image, its
mirror, and random train-time crops) and train the rest on those outputs. Each epoch still sees
every image once, in one randomly chosen view, so a recipe means the same thing with or without
the cache; only the augmentation is drawn from a finite pool.

Storage is fp16, in RAM up to ``max_mb`` and in a memory-mapped file in the run dir above that.
The cache is keyed by the cut, image size, view pool and a fingerprint of the frozen weights, so
it is rebuilt whenever any of them changes.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from tqdm import tqdm

from carclf.models.network import CarNet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheKey:
    split: str
    cut: int
    image_size: int
    views: int
    augment_strength: float
    num_items: int
    fingerprint: str


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


class FeatureCache:
    """Outputs of the first ``cut`` groups for ``V`` views of ``N`` images: shape (V, N, C, H, W)."""

    def __init__(self, key: CacheKey, store, labels: np.ndarray, valid: np.ndarray, seconds: float):
        self.key = key
        self.store = store
        self.labels = torch.tensor(np.asarray(labels), dtype=torch.long)
        self.valid = np.flatnonzero(valid)
        self.seconds = seconds

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.store.shape)) * 2

    @classmethod
    @torch.inference_mode()
    def build(
        cls,
        key: CacheKey,
        net: CarNet,
        datasets: list[Dataset],
        labels,
        *,
        batch_size: int = 64,
        num_workers: int = 2,
        max_mb: int = 2048,
        spill_dir: Path | None = None,
        device: torch.device | str = "cpu",
    ) -> FeatureCache:
        """Run ``net``'s first ``key.cut`` groups (eval mode) over each view dataset."""
        t0 = time.perf_counter()
        was_training = net.training
        net.eval()
        n = len(labels)
        store, valid = None, np.zeros(n, dtype=bool)
        total, done = len(datasets) * n, 0
        bar = tqdm(
            total=total,
            desc=f"caching {key.split} features (groups 0-{key.cut - 1}, {len(datasets)} views)",
            unit="img",
            file=sys.stderr,
            leave=False,
            disable=None,
        )
        from carclf.data.dataset import skip_none_collate

        try:
            for v, ds in enumerate(datasets):
                loader = DataLoader(
                    ds, batch_size=batch_size, num_workers=num_workers, collate_fn=skip_none_collate
                )
                for batch in loader:
                    if batch is None:
                        continue
                    x, _, idx = batch
                    feats = net.features_from(x.to(device), 0, key.cut).to("cpu", torch.float16)
                    if store is None:
                        store = cls._allocate(
                            (len(datasets), n, *feats.shape[1:]), max_mb, spill_dir, key
                        )
                    store[v, idx.numpy()] = feats.numpy() if isinstance(store, np.memmap) else feats
                    if v == 0:
                        valid[idx.numpy()] = True
                    bar.update(len(idx))
                    done += len(idx)
                    if done * 4 // total > (done - len(idx)) * 4 // total:  # a log line per quarter
                        log.info(
                            "caching %s features: %d/%d images (%.0f s)",
                            key.split,
                            done,
                            total,
                            time.perf_counter() - t0,
                        )
        finally:
            bar.close()
            net.train(was_training)
        if store is None:
            raise RuntimeError(f"no readable image in the {key.split} split")
        seconds = time.perf_counter() - t0
        log.info(
            "cached %s features: %d views x %d images, %.0f MB, %.1f s",
            key.split,
            len(datasets),
            n,
            int(np.prod(store.shape)) * 2 / 2**20,
            seconds,
        )
        return cls(key, store, labels, valid, seconds)

    @staticmethod
    def _allocate(shape, max_mb: int, spill_dir: Path | None, key: CacheKey):
        size_mb = int(np.prod(shape)) * 2 / 2**20
        if size_mb <= max_mb or spill_dir is None:
            return torch.zeros(shape, dtype=torch.float16)
        spill_dir.mkdir(parents=True, exist_ok=True)
        path = spill_dir / f"{key.split}-cut{key.cut}-{key.image_size}px-{key.fingerprint}.f16"
        log.info("feature cache of %.0f MB exceeds %d MB: memory-mapping %s", size_mb, max_mb, path)
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)

    def loader(self, batch_size: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
        """Batches ``(features, label, index)``; in shuffled mode each item takes a random view."""
        ds = _CachedBatches(self, random_view=shuffle)
        sampler = RandomSampler(ds) if shuffle else SequentialSampler(ds)
        drop = drop_last and len(ds) > batch_size
        return DataLoader(
            ds,
            batch_size=None,
            sampler=BatchSampler(sampler, batch_size, drop_last=drop),
            num_workers=0,
        )


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
