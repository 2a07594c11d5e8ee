"""Globally pooled features of a frozen pretrained backbone, cached on disk: the label doctor's
input (:mod:`carclf.inspect.doctor`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from carclf import io, phases


def _feature_key(paths: list[str], backbone: str, weights: str, size: int) -> str:
    h = hashlib.sha1(f"{backbone}|{weights}|{size}".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()[:16]


def pooled_features(
    paths: list[str],
    backbone: str = "tf_efficientnet_lite0",
    weights: str = "auto",
    image_size: int = 224,
    batch_size: int = 32,
    num_workers: int = 2,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Globally pooled features of a frozen backbone, one row per path, and a mask of the rows
    that decoded. Cached in ``cache_dir`` by paths, file sizes and times, backbone and size."""
    import torch
    from torch.utils.data import DataLoader

    from carclf.data.dataset import CarDataset, skip_none_collate
    from carclf.data.presets import EvalPreset
    from carclf.models.factory import create_backbone, data_config

    cache = None
    if cache_dir is not None:
        key = _feature_key(paths, backbone, weights, image_size)
        cache = Path(cache_dir) / f"features-{backbone}-{image_size}-{key}.npz"
        if cache.is_file():
            with np.load(cache) as z:
                return z["features"], z["valid"]
    model = create_backbone(backbone, weights).eval()
    cfg = data_config(model)
    preset = EvalPreset(size=image_size, mean=cfg["mean"], std=cfg["std"])
    loader = DataLoader(
        CarDataset(paths, None, preset),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=skip_none_collate,
    )
    # a bar on a terminal, one line in a log; the clock of a training run's budget is checked
    desc = f"label doctor: features of {len(paths)} photos ({backbone}, {image_size} px)"
    loader = phases.track(loader, desc, unit="batch", show=progress or not phases.is_terminal())
    feats = np.zeros((len(paths), model.num_features), dtype=np.float32)
    valid = np.zeros(len(paths), dtype=bool)
    with torch.inference_mode():
        for batch in loader:
            if batch is None:
                continue
            x, _, idx = batch
            feats[idx.numpy()] = model(x).mean((2, 3)).float().numpy()
            valid[idx.numpy()] = True
    if cache is not None:
        with io.atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=feats, valid=valid)
    return feats, valid
