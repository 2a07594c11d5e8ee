"""Sample images for the parity check and for int8 calibration.

Parity and calibration are only as good as their inputs: real photos of the kind the model will
see. The user names them (files or folders); without any, parity falls back to synthetic images
(smooth colour fields with edges, so activations are not all saturated or all zero) and says so.
Calibration never falls back: int8 scales fitted to synthetic images would be wrong for photos.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from carclf.data.images import is_image_name, load_rgb
from carclf.data.presets import EvalPreset
from carclf.errors import DataError, ImageDecodeError
from carclf.models.bundle import BundleMeta


def list_images(sources: Sequence[str | os.PathLike], limit: int) -> list[Path]:
    """Up to ``limit`` image files from files and folders (recursively), spread over the folders.

    Files are taken evenly across the sorted list rather than the first ``limit``, so a folder per
    class contributes photos of many classes, not ``limit`` photos of the first one.
    """
    found: list[Path] = []
    for src in sources:
        p = Path(src).expanduser()
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and is_image_name(f))
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f"{p}: no such image file or folder")
    if not found:
        names = ", ".join(map(str, sources))
        raise DataError(f"no images (.jpg, .png, .webp, .bmp, ...) found in {names}")
    if len(found) <= limit:
        return found
    step = len(found) / limit
    return [found[int(i * step)] for i in range(limit)]


def photo_batch(paths: Sequence[Path], meta: BundleMeta) -> tuple[torch.Tensor, list[str]]:
    """Preprocessed photos (N, 3, S, S) and the files skipped as undecodable."""
    preset = EvalPreset(size=meta.image_size, mean=meta.mean, std=meta.std, resize=meta.resize)
    tensors, skipped = [], []
    for path in paths:
        try:
            tensors.append(preset(load_rgb(path)))
        except ImageDecodeError as e:
            skipped.append(str(e))
    if not tensors:
        raise DataError(f"none of the {len(paths)} sample images could be decoded: {skipped[:3]}")
    return torch.stack(tensors), skipped


def synthetic_batch(meta: BundleMeta, n: int = 8, seed: int = 0) -> torch.Tensor:
    """Deterministic stand-in images: colour gradients, a few rectangles, mild noise."""
    rng = np.random.default_rng(seed)
    s = meta.image_size
    preset = EvalPreset(size=s, mean=meta.mean, std=meta.std, resize=meta.resize)
    yy, xx = np.mgrid[0:s, 0:s] / max(s - 1, 1)
    images = []
    for _ in range(n):
        base = np.stack([a * xx + b * yy + c for a, b, c in rng.uniform(0, 0.5, (3, 3))], axis=-1)
        for _ in range(4):
            x0, y0 = rng.integers(0, s - s // 4, 2)
            w, h = rng.integers(s // 8, s // 3, 2)
            base[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 1, 3)
        base += rng.normal(0, 0.03, base.shape)
        images.append(preset((np.clip(base, 0, 1) * 255).astype(np.uint8)))
    return torch.stack(images)
