"""Batch-level mixing augmentations (MixUp, CutMix), as torchvision's references keep them:
beside the transforms, not inside the model.

A :class:`BatchMix` draws from its own seeded ``torch.Generator`` (never the global NumPy RNG), and
its state travels in the checkpoint, so a resumed run mixes exactly the batches an unkilled one
would have mixed. It works on images and on cached feature maps alike (both are N x C x H x W).
"""

from __future__ import annotations

import torch


class BatchMix:
    """MixUp (``mixup`` = Beta alpha) or CutMix (``cutmix`` = Beta alpha) on a share of batches.

    ``__call__(x, y)`` returns ``(x, y, y_other, lam, perm)``: the loss of a mixed batch is
    ``lam * loss(y) + (1 - lam) * loss(y_other)``, with ``perm`` the partner of each row (None
    and ``lam == 1`` when the batch is left as it is).
    """

    def __init__(self, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 0.5, seed: int = 0):
        self.mixup, self.cutmix, self.prob = float(mixup), float(cutmix), float(prob)
        self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def enabled(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _beta(self, alpha: float) -> float:
        # Beta(a, a) from two Gamma(a) draws on our own generator (torch's Beta takes none).
        a = torch.full((2,), alpha)
        g = torch._standard_gamma(a, generator=self.generator)
        return float(g[0] / g.sum())

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        if not self.enabled or self._uniform() >= self.prob:
            return x, y, y, 1.0, None
        perm = torch.randperm(x.size(0), generator=self.generator).to(x.device)
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or self._uniform() < 0.5)
        lam = self._beta(self.cutmix if use_cutmix else self.mixup)
        if use_cutmix and x.ndim == 4:
            x, lam = self._cut(x, perm, lam)
        else:
            x = lam * x + (1 - lam) * x[perm]
        return x, y, y[perm], lam, perm

    def _cut(self, x: torch.Tensor, perm: torch.Tensor, lam: float):
        h, w = x.shape[-2:]
        rh, rw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy = int(torch.randint(h, (), generator=self.generator))
        cx = int(torch.randint(w, (), generator=self.generator))
        y0, y1 = max(cy - rh // 2, 0), min(cy + rh // 2, h)
        x0, x1 = max(cx - rw // 2, 0), min(cx + rw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        return x, 1 - (y1 - y0) * (x1 - x0) / (h * w)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
