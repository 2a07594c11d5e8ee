"""CarDataset: (path, label) rows decoded robustly; a bad file yields None, never an exception."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset, default_collate

from carclf.data.images import MAX_PIXELS, load_rgb
from carclf.errors import ImageDecodeError

log = logging.getLogger(__name__)


class CarDataset(Dataset):
    """Items are ``(transform(image), label, index)``; ``label`` is -1 for unlabelled images.

    The index travels with every item so predictions map back to their rows whatever the order
    of the loader (shuffling, TTA views, skipped files). ``draft_size`` lets the JPEG decoder
    downscale large photos by a power of two while keeping at least that many pixels on each
    side (see :func:`carclf.data.images.open_image`).
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int] | None,
        transform: Callable,
        max_pixels: int = MAX_PIXELS,
        draft_size: int | None = None,
    ):
        self.paths = list(paths)
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        self.transform = transform
        self.max_pixels = max_pixels
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = load_rgb(self.paths[i], max_pixels=self.max_pixels, draft_size=self.draft_size)
        except ImageDecodeError as e:
            log.warning("skipping unreadable image %s", e)
            return None
        return self.apply(image), self.labels[i], i

    def apply(self, image):
        return self.transform(image)


class MultiViewDataset(CarDataset):
    """Items are ``(views tensor V x C x H x W, label, index)``: every view from ONE decode.

    A feature cache wants several views of each image (the plain image, its mirror, random
    crops). Decoding the file once per view made decoding the cache build's main cost on a
    small CPU; here each file is opened and decoded once and all ``transforms`` run on that
    array.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int] | None,
        transforms: Sequence[Callable],
        draft_size: int | None = None,
        max_pixels: int = MAX_PIXELS,
    ):
        super().__init__(paths, labels, None, max_pixels, draft_size)
        self.transforms = list(transforms)

    def apply(self, image) -> torch.Tensor:
        return torch.stack([t(image) for t in self.transforms])


def skip_none_collate(batch):
    """Collate that drops items a dataset could not decode (returns None for an empty batch)."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return default_collate(batch)
