"""Atomic checkpoint writes: a crash mid-save never leaves a truncated last.ckpt behind."""

from __future__ import annotations

import os

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from carclf import io


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    with io.atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO whose saves are all-or-nothing."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, path)
