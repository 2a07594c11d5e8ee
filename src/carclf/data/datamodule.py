"""CarDataModule: the dataset index, its split, and loaders whose image size can change mid-run.

``image_size``, ``batch_size`` and ``augment_strength`` are plain attributes: the stage callback
sets them between epochs and the trainer (``reload_dataloaders_every_n_epochs=1``) asks for fresh
loaders. A ``loader_source`` (the stage callback) is asked first for every train and validation
loader: it applies the epoch's stage (Lightning builds an epoch's loaders *before*
``on_train_epoch_start``) and may answer with its own loader, e.g. over cached features.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import pandas as pd
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from carclf.data.dataset import CarDataset, skip_none_collate
from carclf.data.extra import ExtraData
from carclf.data.layouts import DatasetIndex, read_dataset
from carclf.data.presets import AugmentConfig, EvalPreset, TrainPreset
from carclf.data.split import fold_split, stratified_split

log = logging.getLogger(__name__)


class LoaderSource(Protocol):
    def loader(self, split: str) -> DataLoader | None:
        """A loader for ``split`` (train | val), or None for the DataModule's own."""


class CarDataModule(pl.LightningDataModule):
    def __init__(
        self,
        path: str | None = None,
        *,
        index: DatasetIndex | None = None,
        layout: str = "auto",
        class_map: str = "auto",
        image_size: int = 224,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        val_fraction: float = 0.15,
        fold: int | None = None,
        num_folds: int = 5,
        seed: int = 0,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        resize: str = "squash",
        augment: AugmentConfig | dict | None = None,
        bad_files=(),
        extra: ExtraData | None = None,
    ):
        super().__init__()
        if index is None and path is None:
            raise ValueError("CarDataModule needs a dataset path or an index")
        self.index = (
            index if index is not None else read_dataset(path, layout=layout, class_map=class_map)
        )
        self.index = self.index.drop(bad_files)
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.mean, self.std, self.resize = tuple(mean), tuple(std), resize
        self.augment = (
            augment if isinstance(augment, AugmentConfig) else AugmentConfig(**(augment or {}))
        )
        self.augment_strength = self.augment.strength
        labels = self.index.train["label"].to_numpy()
        if fold is not None:
            self.train_idx, self.val_idx = fold_split(labels, fold, num_folds, seed)
        else:
            self.train_idx, self.val_idx = stratified_split(labels, val_fraction, seed)
        # Extra training rows (data.extra, distillation's unlabelled photos): never in validation.
        self.extra_rows = pd.DataFrame(columns=["id", "path", "label", "weight"])
        # Per training row: soft targets (probabilities, NaN rows = none) and the share of the loss
        # they take (alpha); set by soft pseudo-labels or a distillation teacher.
        self.soft_targets: np.ndarray | None = None
        self.soft_alpha: np.ndarray | None = None
        self.soft_temperature = 1.0
        if extra is not None:
            extra.remove_leaks(self.rows("val"), self.index.test, self.rows("train"))
            self.add_train_rows(extra.rows, extra.soft)
        self.loader_source: LoaderSource | None = None

    # -- facts ----------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.index.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.index.class_names

    def rows(self, split: str):
        """The index rows of ``train``, ``val``, ``all`` (train+val) or ``test``."""
        table = self.index.train
        if split == "train":
            if len(self.extra_rows):
                main = table.iloc[self.train_idx].assign(weight=1.0)
                return pd.concat([main, self.extra_rows], ignore_index=True)
            return table.iloc[self.train_idx]
        if split == "val":
            return table.iloc[self.val_idx]
        if split == "all":
            return table
        if split == "test":
            return self.index.test
        raise ValueError(f"unknown split {split!r}")

    def class_weights(self) -> np.ndarray:
        """Inverse-frequency weights over the training split (mean 1)."""
        labels = self.rows("train")["label"].to_numpy()
        counts = np.bincount(labels[labels >= 0], minlength=self.num_classes).astype(float)
        w = 1.0 / np.maximum(counts, 1.0)
        return w / w.mean()

    def add_train_rows(self, rows: pd.DataFrame, soft: np.ndarray | None = None) -> None:
        """Append rows (``path``, ``label`` (-1: unlabelled), ``weight``) to the training split only.

        ``soft``: (len(rows), K) soft targets for them (NaN rows: none).
        """
        rows = rows.assign(weight=rows["weight"] if "weight" in rows else 1.0)
        if "id" not in rows:
            rows = rows.assign(id=rows["path"])
        n_before = len(self.rows("train"))
        self.extra_rows = pd.concat(
            [self.extra_rows, rows[["id", "path", "label", "weight"]]], ignore_index=True
        )
        if soft is not None or self.soft_targets is not None:
            k = self.num_classes
            old = self.soft_targets
            old = np.full((n_before, k), np.nan, np.float32) if old is None else old
            new = np.full((len(rows), k), np.nan, np.float32) if soft is None else soft
            self.soft_targets = np.concatenate([old, new.astype(np.float32)])
            has = ~np.isnan(self.soft_targets).any(1)
            self.soft_alpha = has.astype(np.float32)

    def row_targets(self) -> dict | None:
        """What the loss needs beyond labels, per row of ``rows("train")`` (None: plain labels).

        ``weight`` (N,), ``soft`` (N, K) with NaN rows, ``alpha`` (N,) and ``temperature``.
        """
        rows = self.rows("train")
        weight = rows["weight"].to_numpy(float) if "weight" in rows else np.ones(len(rows))
        unlabelled = (rows["label"].to_numpy() < 0).any()
        if self.soft_targets is None and (weight == 1).all() and not unlabelled:
            return None
        return {
            "weight": weight,
            "soft": self.soft_targets,
            "alpha": self.soft_alpha,
            "temperature": self.soft_temperature,
        }

    # -- presets ----------------------------------------------------------------------------
    def eval_preset(self, size: int | None = None, hflip: bool = False) -> EvalPreset:
        return EvalPreset(
            size=size or self.image_size,
            mean=self.mean,
            std=self.std,
            resize=self.resize,
            hflip=hflip,
        )

    def train_preset(self, size: int | None = None, strength: float | None = None) -> TrainPreset:
        s = self.augment_strength if strength is None else strength
        return TrainPreset(
            size=size or self.image_size,
            mean=self.mean,
            std=self.std,
            aug=self.augment,
            resize=self.resize,
            strength=s,
        )

    def dataset(self, split: str, transform=None) -> CarDataset:
        rows = self.rows(split)
        if transform is None:
            transform = self.train_preset() if split == "train" else self.eval_preset()
        labels = rows["label"].tolist() if "label" in rows else None
        return CarDataset(rows["path"].tolist(), labels, transform)

    def loader(
        self,
        dataset,
        *,
        shuffle: bool = False,
        batch_size: int | None = None,
        drop_last: bool = False,
    ) -> DataLoader:
        bs = batch_size or (
            self.batch_size if shuffle else (self.eval_batch_size or self.batch_size)
        )
        return DataLoader(
            dataset,
            batch_size=bs,
            shuffle=shuffle,
            drop_last=drop_last and len(dataset) > bs,
            num_workers=self.num_workers,
            collate_fn=skip_none_collate,
            persistent_workers=False,
        )

    # -- Lightning hooks ------------------------------------------------------------------------
    def _from_source(self, split: str) -> DataLoader | None:
        return self.loader_source.loader(split) if self.loader_source is not None else None

    def train_dataloader(self) -> DataLoader:
        custom = self._from_source("train")
        if custom is not None:
            return custom
        return self.loader(self.dataset("train"), shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        custom = self._from_source("val")
        if custom is not None:
            return custom
        return self.loader(self.dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.dataset("test"))

    def tta_dataloader(self, policy, split: str = "test") -> DataLoader:
        """Eval loader whose items are ``(list of view tensors, label, index)`` for a TTA policy.

        ``policy`` is a name from ``carclf.data.tta.TTA_PRESETS``, None, or a preset instance;
        names use this module's size, mean, std and resize. The index in each item is what keeps
        TTA order-safe: merge per index, never by position in the loader.
        """
        from carclf.data.tta import tta_preset

        preset = tta_preset(
            policy, size=self.image_size, mean=self.mean, std=self.std, resize=self.resize
        )
        return self.loader(self.dataset(split, transform=preset))
