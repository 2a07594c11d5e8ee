"""EnsembleNet: several trained networks answering as one, by averaging their logits.

An ensemble bundle is an ordinary bundle (``model.safetensors`` + ``meta.json``) whose
``meta.backbone`` is ``"ensemble"`` and whose ``meta.extra["members"]`` lists each member's
backbone and head; the weights hold every member under ``members.<i>.``. So ``load_bundle``,
``Classifier``, ``predict.py``, the service and the ONNX export take it like a single model: one
input batch in, one (N, K) logit tensor out. Members must share the class list and the
preprocessing contract (checked where the ensemble is built, :mod:`carclf.ensemble`).
"""

from __future__ import annotations

import torch
from torch import nn

ENSEMBLE = "ensemble"
# Out-of-fold logits an ensemble bundle keeps (``logits``, ``labels``, ``tta``): held-out answers
# for calibration-dependent choices such as pseudo-label thresholds.
HELDOUT_FILE = "heldout.npz"


class EnsembleNet(nn.Module):
    """The mean of the members' logits (logit averaging, as TTA merges views)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def member_specs(meta) -> list[dict]:
    """``[{"backbone": ..., "head": {...}}, ...]`` of an ensemble bundle's metadata."""
    return list(meta.extra.get("members", []))
