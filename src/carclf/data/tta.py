"""Test-time augmentation (TTA) presets: several views of each image, one merged answer.

A preset is a small keyword-only class like the eval preset in :mod:`carclf.data.presets`: called
on an RGB array it returns a *list* of tensors, one per view. Views may differ in size (multiscale),
so they are never stacked into one tensor; a loader collates them into one batch per view, the
model runs once per view, and :func:`merge_views` averages the answers. Because the dataset item
carries its row index next to the views, the merged answer maps back to its image whatever order
the loader delivers batches in.

The plain view (scale 1, no crop, no flip) is the eval preset itself, so ``NoTTA`` sees exactly
the pixels the model was validated on.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from carclf.data.presets import EvalPreset, _resize

MERGES = ("logits", "probs")
# Crop positions inside an image resized to ``zoom`` x the view size; "full" means no crop.
CROPS = ("full", "center", "tl", "tr", "bl", "br", "left", "right")


@dataclass(frozen=True)
class View:
    """One way of looking at an image.

    Attributes:
        scale: input size as a multiple of the model's image size (1.15 at 224 px is 258 px).
        crop: ``full`` (the whole image, as in eval) or a crop position in the zoomed image.
        hflip: mirror left-right (cars are near-symmetric; a mirrored car is the same model).
    """

    scale: float = 1.0
    crop: str = "full"
    hflip: bool = False

    @property
    def key(self) -> str:
        """A short stable name, e.g. ``s1.15-tl-flip``: benchmarks cache logits under it."""
        parts = [f"s{self.scale:.2f}"] + ([self.crop] if self.crop != "full" else [])
        return "-".join(parts + (["flip"] if self.hflip else []))


def _crop_box(big: int, out: int, position: str) -> tuple[int, int, int, int]:
    far, mid = big - out, (big - out) // 2
    x, y = {
        "center": (mid, mid),
        "tl": (0, 0),
        "tr": (far, 0),
        "bl": (0, far),
        "br": (far, far),
        "left": (0, mid),
        "right": (far, mid),
    }[position]
    return x, y, x + out, y + out


class CropPreset:
    """Resize to ``zoom`` x ``size``, then cut a ``size`` square at ``position`` (optionally
    mirrored). A class, not a closure, so loader worker processes can pickle it."""

    def __init__(
        self, *, size: int, mean, std, position: str, zoom: float, resize="squash", hflip=False
    ):
        big = max(size, round(size * zoom))
        ops = [*_resize(big, resize), A.Crop(*_crop_box(big, size, position))]
        ops += [A.HorizontalFlip(p=1.0)] if hflip else []
        self.size = size
        self.transform = A.Compose(
            [*ops, A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
        )

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.transform(image=image)["image"]


def view_transform(view: View, *, size: int, mean, std, resize: str = "squash", zoom: float = 1.15):
    """The callable (RGB array -> tensor) for one view."""
    out = max(8, round(size * view.scale))
    if view.crop == "full":
        return EvalPreset(size=out, mean=mean, std=std, resize=resize, hflip=view.hflip)
    return CropPreset(
        size=out, mean=mean, std=std, position=view.crop, zoom=zoom, resize=resize, hflip=view.hflip
    )


def merge_views(logits: torch.Tensor, temperature: float = 1.0, merge: str = "logits"):
    """Probabilities (N, K) from per-view logits (N, V, K).

    ``logits`` averages logits and then applies the softmax (a geometric mean of the views'
    probabilities: one confident view counts more); ``probs`` averages the views' probabilities
    (an arithmetic mean: a single odd view cannot dominate). Temperature divides the logits of
    every view first, so calibration carries over to either rule.
    """
    if logits.ndim == 2:
        logits = logits[:, None, :]
    if merge == "logits":
        return torch.softmax(logits.mean(dim=1) / temperature, dim=-1)
    if merge == "probs":
        return torch.softmax(logits / temperature, dim=-1).mean(dim=1)
    raise ValueError(f"unknown TTA merge {merge!r}; choose one of {list(MERGES)}")


class TTAPreset:
    """Every view of an image as a list of tensors, and how to merge the model's answers.

    Subclasses only choose ``views``; use one of them, or this class with your own views.
    """

    name = "custom"

    def __init__(
        self,
        *,
        size: int,
        mean,
        std,
        resize: str = "squash",
        views: Sequence[View] = (View(),),
        zoom: float = 1.15,
        merge: str = "logits",
    ):
        views = tuple(views)
        if not views:
            raise ValueError("a TTA preset needs at least one view")
        for v in views:
            if v.crop not in CROPS:
                raise ValueError(f"unknown TTA crop {v.crop!r}; choose one of {list(CROPS)}")
            if not 0.25 <= v.scale <= 4.0:
                raise ValueError(f"TTA scale {v.scale} is outside 0.25..4")
        if merge not in MERGES:
            raise ValueError(f"unknown TTA merge {merge!r}; choose one of {list(MERGES)}")
        if zoom < 1.0:
            raise ValueError(
                f"TTA zoom must be >= 1 (crops come from an enlarged image), got {zoom}"
            )
        self.size, self.views, self.zoom, self.merge = size, views, zoom, merge
        self.transforms = [
            view_transform(v, size=size, mean=mean, std=std, resize=resize, zoom=zoom)
            for v in views
        ]

    def __len__(self) -> int:
        return len(self.views)

    def __call__(self, image: np.ndarray) -> list[torch.Tensor]:
        return [t(image) for t in self.transforms]

    def probabilities(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return merge_views(logits, temperature, self.merge)

    def describe(self) -> str:
        keys = ", ".join(v.key for v in self.views)
        return f"{self.name}: {len(self)} view(s) [{keys}], merge={self.merge}"


class NoTTA(TTAPreset):
    """The eval view only (the baseline)."""

    name = "none"

    def __init__(self, *, size: int, mean, std, resize: str = "squash", merge: str = "logits"):
        super().__init__(size=size, mean=mean, std=std, resize=resize, merge=merge)


class HFlipTTA(TTAPreset):
    """The eval view and its mirror image: 2 views, the cheapest TTA that usually helps."""

    name = "hflip"

    def __init__(self, *, size: int, mean, std, resize: str = "squash", merge: str = "logits"):
        views = (View(), View(hflip=True))
        super().__init__(size=size, mean=mean, std=std, resize=resize, views=views, merge=merge)


class MultiScaleTTA(TTAPreset):
    """The eval view at several input sizes. Models trained on random crops see objects larger
    than the eval resize shows them, so a slightly larger test size often helps (FixRes)."""

    name = "multiscale"

    def __init__(
        self,
        *,
        size: int,
        mean,
        std,
        resize: str = "squash",
        scales: Sequence[float] = (1.0, 1.15),
        merge: str = "logits",
    ):
        views = tuple(View(scale=float(s)) for s in scales)
        super().__init__(size=size, mean=mean, std=std, resize=resize, views=views, merge=merge)


class HFlipMultiScaleTTA(TTAPreset):
    """Every scale, mirrored and not: 2 x len(scales) views."""

    name = "hflip_multiscale"

    def __init__(
        self,
        *,
        size: int,
        mean,
        std,
        resize: str = "squash",
        scales: Sequence[float] = (1.0, 1.15),
        merge: str = "logits",
    ):
        views = tuple(View(scale=float(s), hflip=f) for s, f in itertools.product(scales, (0, 1)))
        super().__init__(size=size, mean=mean, std=std, resize=resize, views=views, merge=merge)


class MultiCropTTA(TTAPreset):
    """The whole image plus crops of an enlarged copy (``zoom``): details such as grilles and
    lights at a higher resolution, at the price of cutting off part of the car."""

    name = "multicrop"

    def __init__(
        self,
        *,
        size: int,
        mean,
        std,
        resize: str = "squash",
        crops: Sequence[str] = ("full", "tl", "tr", "bl", "br"),
        zoom: float = 1.15,
        hflip: bool = False,
        merge: str = "logits",
    ):
        flips = (False, True) if hflip else (False,)
        views = tuple(View(crop=c, hflip=f) for c, f in itertools.product(crops, flips))
        super().__init__(
            size=size, mean=mean, std=std, resize=resize, views=views, zoom=zoom, merge=merge
        )


TTA_PRESETS: dict[str, type[TTAPreset]] = {
    cls.name: cls for cls in (NoTTA, HFlipTTA, MultiScaleTTA, HFlipMultiScaleTTA, MultiCropTTA)
}


def tta_preset(policy, *, size: int, mean, std, resize: str = "squash", **kwargs) -> TTAPreset:
    """A preset from a policy name (see ``TTA_PRESETS``), ``None`` (no TTA) or a preset (as is)."""
    if isinstance(policy, TTAPreset):
        return policy
    name = "none" if policy is None else str(policy)
    if name not in TTA_PRESETS:
        raise ValueError(f"unknown TTA policy {name!r}; choose one of {sorted(TTA_PRESETS)}")
    return TTA_PRESETS[name](size=size, mean=mean, std=std, resize=resize, **kwargs)
