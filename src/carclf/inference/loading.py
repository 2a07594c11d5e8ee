"""Find and load a model: a bundle folder, a training run folder, or a Lightning checkpoint.

A bundle (``carclf.models.bundle``) is the deployable form; a checkpoint is what training leaves.
Both load here without Hydra or any training code path, so every consumer (``Classifier``, the
exporter, the service, the batch job) resolves a model path the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from carclf.errors import ModelError
from carclf.models.bundle import BundleMeta, is_bundle
from carclf.models.network import CarNet


def find_model(path: str | os.PathLike) -> Path:
    """The bundle or checkpoint that ``path`` (bundle, run dir, or checkpoint) stands for."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(
            f"{p}: no such model (expected a bundle folder, a run folder or a .ckpt file)"
        )
    if p.is_file():
        return p
    if is_bundle(p):
        return p
    if is_bundle(p / "bundle"):
        return p / "bundle"
    for ckpt in (p / "checkpoints" / "best.ckpt", p / "checkpoints" / "last.ckpt"):
        if ckpt.is_file():
            return ckpt
    raise ModelError(f"{p}: no bundle/ and no checkpoints/best.ckpt or last.ckpt in this folder")


def load_checkpoint_net(path: Path) -> tuple[CarNet, BundleMeta]:
    """Network and metadata from a Lightning checkpoint written by carclf's training."""
    from carclf.models.factory import build_net

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ModelError(f"{path}: cannot read checkpoint ({e})") from None
    hp = ckpt.get("hyper_parameters", {})
    if "meta" not in hp:
        raise ModelError(
            f"{path}: not a carclf checkpoint (no model metadata in its hyper-parameters)"
        )
    meta = BundleMeta.from_dict(hp["meta"])
    net = build_net(meta.backbone, meta.num_classes, weights="none", head=meta.head)
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state, strict=True)
    return net.eval(), meta
