"""Batched inference over files: a DataLoader decodes in worker processes, the model runs per view.

Every item carries its row index, and logits are written to ``out[index]``; nothing depends on
the order batches arrive in (shuffled loaders, several workers, files skipped as unreadable).
A file the loader could not decode is decoded once more in this process, only to learn the reason
it is listed with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from carclf.data.dataset import CarDataset, skip_none_collate
from carclf.data.images import load_rgb
from carclf.data.tta import TTAPreset
from carclf.errors import ImageDecodeError

log = logging.getLogger(__name__)


@dataclass
class ViewLogits:
    """Logits for every view of every image; rows of unreadable images are NaN.

    Attributes:
        logits: (N, V, K) float32.
        errors: row index -> why that image could not be read.
        seconds: wall time of the loop (decode + preprocess + model), for images/s.
        features: (N, D) penultimate features of the plain view, when the open-set score
            needs them (else None).
    """

    logits: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    features: np.ndarray | None = None

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of rows with a prediction."""
        mask = np.ones(len(self.logits), dtype=bool)
        mask[list(self.errors)] = False
        return mask

    @property
    def images_per_second(self) -> float:
        return len(self.logits) / self.seconds if self.seconds > 0 else 0.0


def _views(batch) -> list[torch.Tensor]:
    """A collated batch's views: a list of (B, 3, H, W) tensors (one per view)."""
    return list(batch) if isinstance(batch, (list, tuple)) else [batch]


def loader_logits(
    classifier, loader, num_items: int, num_views: int, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(N, V, K) logits from a loader of ``(views, label, index)`` batches, and a mask of rows seen.

    Works with any loader over a :class:`CarDataset` whose transform is a TTA preset (or a plain
    eval preset), e.g. ``CarDataModule.tta_dataloader``; the order of batches does not matter.
    """
    out, seen, _ = loader_outputs(classifier, loader, num_items, num_views, progress, False)
    return out, seen


def loader_outputs(
    classifier,
    loader,
    num_items: int,
    num_views: int,
    progress: bool = False,
    features: bool | None = None,
    desc: str = "predict",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """As :func:`loader_logits`, plus the (N, D) plain-view features when ``features`` (default:
    when the classifier's open-set score needs them), from the same model calls."""
    if features is None:
        features = getattr(classifier, "needs_features", False)
    out = np.full((num_items, num_views, classifier.num_classes), np.nan, dtype=np.float32)
    feats = None
    seen = np.zeros(num_items, dtype=bool)
    # progress: a bar on a terminal only (in a log a bar is a stream of carriage returns)
    bar = tqdm(
        total=num_items, unit="img", desc=desc, disable=None if progress else True, leave=False
    )
    for batch in loader:
        if batch is None:  # every image of this batch was unreadable
            continue
        views, _, index = batch
        index = index.numpy()
        if features:
            logits, f = classifier.view_outputs(_views(views), True)
        else:  # the plain contract: anything with view_logits and num_classes
            logits, f = classifier.view_logits(_views(views)), None
        out[index] = logits.numpy()
        if f is not None:
            if feats is None:
                feats = np.full((num_items, f.shape[1]), np.nan, dtype=np.float32)
            feats[index] = f.numpy()
        seen[index] = True
        bar.update(len(index))
    bar.close()
    return out, seen, feats


def _reason(path: str) -> str:
    try:
        load_rgb(path)
    except ImageDecodeError as e:
        return e.reason
    return "could not be read by the loader"


def infer_paths(
    classifier,
    paths: Sequence[str],
    tta: TTAPreset | str | None = None,
    batch_size: int = 32,
    num_workers: int = 2,
    progress: bool = False,
    features: bool | None = None,
) -> ViewLogits:
    """Per-view logits for image files, decoded in ``num_workers`` loader processes (and the
    plain view's features with ``features``; default: when the open-set score needs them)."""
    preset = classifier.tta if tta is None else classifier.tta_preset(tta)
    dataset = CarDataset(list(map(str, paths)), None, preset)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers if len(dataset) > batch_size else 0,
        collate_fn=skip_none_collate,
    )
    start = time.perf_counter()
    logits, seen, feats = loader_outputs(
        classifier, loader, len(dataset), len(preset), progress, features
    )
    seconds = time.perf_counter() - start
    errors = {int(i): _reason(dataset.paths[i]) for i in np.flatnonzero(~seen)}
    return ViewLogits(logits, errors, seconds, feats)
