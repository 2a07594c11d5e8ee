"""``TorchBackend``: logits from the PyTorch network, on the CPU or a GPU.

The backend contract (shared with :class:`carclf.inference.onnx_backend.OnnxBackend`): a callable
from a preprocessed float batch (N, 3, H, W) to float32 CPU logits (N, K), with a ``name``.
"""

from __future__ import annotations

import torch

from carclf.models.network import CarNet


class TorchBackend:
    """Logits from the PyTorch network (eager)."""

    name = "torch"

    def __init__(self, net: CarNet, device: torch.device):
        self.net = net.to(device).eval()
        self.device = device

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch.to(self.device)).float().cpu()
