"""Globally pooled features of a frozen pretrained backbone, cached on disk: the label doctor's
input (:mod:`carclf.inspect.doctor`).

Each photo is decoded once and seen in a few *views* (``plain``: the whole photo squashed to the
square; ``flip``: its mirror; ``crop``: shorter side to the size, centre crop); the doctor
averages the views' pooled features, which steadies them against framing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from carclf import io, phases

VIEWS = ("plain", "flip", "crop")


def _feature_key(paths: list[str], backbone: str, weights: str, size: int, views) -> str:
    h = hashlib.sha1(f"{backbone}|{weights}|{size}|{','.join(views)}".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()[:16]


def native_size(backbone: str) -> int:
    """The input size the backbone's pretrained weights were made for (timm's config)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(backbone)
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224


def _view_presets(views, size: int, mean, std) -> list:
    from carclf.data.presets import EvalPreset

    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise ValueError(f"unknown feature view(s) {bad}; choose from {list(VIEWS)}")
    spec = {"plain": ("squash", False), "flip": ("squash", True), "crop": ("crop", False)}
    return [
        EvalPreset(size=size, mean=mean, std=std, resize=spec[v][0], hflip=spec[v][1])
        for v in views
    ]


def view_features(
    paths: list[str],
    backbone: str = "tf_efficientnet_lite0",
    weights: str = "auto",
    image_size: int | None = 224,
    views: tuple[str, ...] = ("plain",),
    batch_size: int = 32,
    num_workers: int = 2,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of a frozen backbone, ``N x len(views) x D``, and a mask of the rows that
    decoded. Cached in ``cache_dir`` by paths, file sizes and times, backbone, size and views."""
    import torch
    from torch.utils.data import DataLoader

    from carclf.data.dataset import MultiViewDataset, skip_none_collate
    from carclf.models.factory import create_backbone, data_config

    views = tuple(views)
    image_size = image_size or native_size(backbone)
    cache = None
    if cache_dir is not None:
        key = _feature_key(paths, backbone, weights, image_size, views)
        cache = Path(cache_dir) / f"features-{backbone}-{image_size}-{key}.npz"
        if cache.is_file():
            with np.load(cache) as z:
                return z["features"], z["valid"]
    model = create_backbone(backbone, weights).eval()
    cfg = data_config(model)
    presets = _view_presets(views, image_size, cfg["mean"], cfg["std"])
    loader = DataLoader(
        MultiViewDataset(paths, None, presets, draft_size=image_size),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=skip_none_collate,
    )
    # a bar on a terminal, one line in a log; the clock of a training run's budget is checked
    desc = (
        f"label doctor: features of {len(paths)} photos ({backbone}, {image_size} px, "
        f"{'+'.join(views)})"
    )
    loader = phases.track(loader, desc, unit="batch", show=progress or not phases.is_terminal())
    feats = np.zeros((len(paths), len(views), model.num_features), dtype=np.float32)
    valid = np.zeros(len(paths), dtype=bool)
    with torch.inference_mode():
        for batch in loader:
            if batch is None:
                continue
            x, _, idx = batch  # x: B x V x C x H x W
            b, v = x.shape[:2]
            out = model(x.flatten(0, 1)).mean((2, 3)).float().numpy()
            feats[idx.numpy()] = out.reshape(b, v, -1)
            valid[idx.numpy()] = True
    if cache is not None:
        with io.atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=feats, valid=valid)
    return feats, valid


def pooled_features(paths: list[str], *args, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """:func:`view_features` averaged over the views: ``N x D``, and the decoded mask."""
    feats, valid = view_features(paths, *args, **kwargs)
    return feats.mean(1), valid
