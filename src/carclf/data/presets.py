"""Augmentation presets (albumentations), as small keyword-only classes like torchvision's.

The eval preset is the preprocessing contract of a trained model: the bundle records its size,
mean, std and resize mode, and every inference path (Classifier, ONNX, the service) uses this
same class so training-time validation and serving see identical pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2


@dataclass
class AugmentConfig:
    """Train-time augmentation. ``strength`` (0..1+) scales crop range and colour changes, so a
    stage can train lighter or heavier without a new pipeline; 0 means eval resize plus flips."""

    scale_min: float = 0.35
    ratio_min: float = 0.75
    ratio_max: float = 1.333
    hflip: float = 0.5
    color: float = 0.3
    rotate: float = 10.0
    blur: float = 0.1
    grayscale: float = 0.05
    strength: float = 1.0


def _resize(size: int, mode: str) -> list[A.BasicTransform]:
    """``squash``: whole image to size x size (cars are wide: keep the whole car, the default);
    ``crop``: shorter side to size, then a centre crop."""
    if mode == "squash":
        return [A.Resize(size, size, interpolation=cv2.INTER_AREA)]
    if mode == "crop":
        return [
            A.SmallestMaxSize(max_size=size, interpolation=cv2.INTER_AREA),
            A.CenterCrop(size, size),
        ]
    raise ValueError(f"unknown resize mode {mode!r}; choose squash or crop")


class EvalPreset:
    def __init__(self, *, size: int, mean, std, resize: str = "squash", hflip: bool = False):
        self.size = size
        ops = _resize(size, resize) + ([A.HorizontalFlip(p=1.0)] if hflip else [])
        self.transform = A.Compose(
            [*ops, A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
        )

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.transform(image=image)["image"]


class TrainPreset:
    def __init__(
        self,
        *,
        size: int,
        mean,
        std,
        aug: AugmentConfig | None = None,
        resize: str = "squash",
        strength: float | None = None,
    ):
        aug = aug or AugmentConfig()
        s = aug.strength if strength is None else strength
        self.size = size
        if s <= 0:
            ops = [*_resize(size, resize), A.HorizontalFlip(p=aug.hflip)]
        else:
            scale_min = 1.0 - (1.0 - aug.scale_min) * min(s, 1.0)
            c = aug.color * s
            ops = [
                A.RandomResizedCrop(
                    size=(size, size),
                    scale=(scale_min, 1.0),
                    ratio=(aug.ratio_min, aug.ratio_max),
                    interpolation=cv2.INTER_AREA,
                ),
                A.HorizontalFlip(p=aug.hflip),
                A.Affine(
                    rotate=(-aug.rotate * s, aug.rotate * s), p=0.3 if aug.rotate > 0 else 0.0
                ),
                A.ColorJitter(
                    brightness=c,
                    contrast=c,
                    saturation=c,
                    hue=min(0.05 * s, 0.5),
                    p=0.8 if c > 0 else 0.0,
                ),
                A.ToGray(p=aug.grayscale),
                A.GaussianBlur(blur_limit=(3, 5), p=aug.blur),
            ]
        self.transform = A.Compose(
            [*ops, A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
        )

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.transform(image=image)["image"]
