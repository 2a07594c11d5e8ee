"""``TorchBackend``: logits from the PyTorch network, on the CPU or a GPU.

The backend contract (shared with :class:`carclf.inference.onnx_backend.OnnxBackend`): a callable
from a preprocessed float batch (N, 3, H, W) to float32 CPU logits (N, K), with a ``name``;
``with_features`` adds the penultimate features the open-set ``knn`` score needs
(:func:`net_outputs`, also what the ONNX export's second output computes).
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

    @torch.inference_mode()
    def with_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and penultimate features (the open-set ``knn`` score), from one pass."""
        logits, feats = net_outputs(self.net, batch.to(self.device))
        return logits.float().cpu(), feats.float().cpu()


def net_outputs(net, x):
    """``(logits, features)`` of a CarNet or EnsembleNet in one pass.

    Features are the classifier layer's input (``head(..., pre_logits=True)``); an ensemble's are
    its members' L2-normalised features concatenated and scaled by ``1/sqrt(members)``, so their
    cosine is the members' mean cosine.
    """
    members = getattr(net, "members", None)
    if members is not None:
        outs = [net_outputs(m, x) for m in members]
        logits = torch.stack([o[0] for o in outs]).mean(0)
        scale = 1.0 / len(outs) ** 0.5
        feats = torch.cat([torch.nn.functional.normalize(o[1], dim=1) * scale for o in outs], 1)
        return logits, feats
    feats = net.head(net.features_from(x), pre_logits=True)
    return net.head.fc(net.head.dropout(feats)), feats


def feature_net(net):
    """A module around ``net`` whose forward returns ``(logits, features)`` (the ONNX export)."""

    class WithFeatures(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.net = inner

        def forward(self, x):
            return net_outputs(self.net, x)

    return WithFeatures(net).eval()
