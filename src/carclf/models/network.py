"""CarNet: a timm backbone without its head, our head, and the backbone's layer groups.

Staged fine-tuning needs two views of the backbone:

* **groups**: ordered parameter groups (input to output) from timm's ``group_matcher`` (coarse),
  so "unfreeze the top half" means the same thing for any architecture;
* **chunks**: for architectures whose forward pass is a plain sequence of those same groups
  (EfficientNet, ResNet), callables that run group ``i``. Then ``forward(x, start=k)`` can start
  from the cached output of the first ``k`` groups: the frozen prefix is computed once, not every
  epoch, which is what makes the cheap stages cheap on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.models import group_parameters
from torch import nn

from carclf.models.head import ClassifierHead

Chunk = tuple[Callable[[torch.Tensor], torch.Tensor], list[nn.Module]]


def _efficientnet_chunks(m: nn.Module) -> list[Chunk] | None:
    if not all(hasattr(m, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        return None
    stem = (lambda x: m.bn1(m.conv_stem(x)), [m.conv_stem, m.bn1])
    head = (lambda x: m.bn2(m.conv_head(x)), [m.conv_head, m.bn2])
    return [stem, *((b, [b]) for b in m.blocks), head]


def _resnet_chunks(m: nn.Module) -> list[Chunk] | None:
    if not all(hasattr(m, a) for a in ("conv1", "bn1", "act1", "maxpool", "layer1", "layer4")):
        return None
    stem = (lambda x: m.maxpool(m.act1(m.bn1(m.conv1(x)))), [m.conv1, m.bn1])
    return [stem, *((layer, [layer]) for layer in (m.layer1, m.layer2, m.layer3, m.layer4))]


# Tried in order; the first that recognises the backbone and covers all its parameters wins.
CHUNKERS: list[Callable[[nn.Module], list[Chunk] | None]] = [_efficientnet_chunks, _resnet_chunks]


class CarNet(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, head: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = ClassifierHead(backbone.num_features, num_classes, **(head or {}))
        self._chunks: list[Callable] | None = None
        self.frozen_groups = 0
        self.group_param_names: list[list[str]] = self._chunk_groups() or self._timm_groups()

    def _chunk_groups(self) -> list[list[str]] | None:
        """Groups = the chunks of a known sequential architecture (sets ``self._chunks``)."""
        names = {id(p): n for n, p in self.backbone.named_parameters()}
        for chunker in CHUNKERS:
            chunks = chunker(self.backbone)
            if chunks is None:
                continue
            groups = [
                [names[id(p)] for mod in mods for p in mod.parameters()] for _, mods in chunks
            ]
            if sum(map(len, groups)) == len(names):
                self._chunks = [fn for fn, _ in chunks]
                return groups
        return None

    def _timm_groups(self) -> list[list[str]]:
        """Groups from timm's coarse ``group_matcher``: freezing works, starting mid-way does not."""
        named = group_parameters(self.backbone, self.backbone.group_matcher(coarse=True))
        return [names for _, names in sorted(named.items())]

    @property
    def num_groups(self) -> int:
        return len(self.group_param_names)

    @property
    def splittable(self) -> bool:
        """True if ``forward(x, start=k)`` may start after the first ``k`` groups."""
        return self._chunks is not None

    def group_modules(self, index: int) -> list[nn.Module]:
        """Top-level modules owning group ``index`` (for BatchNorm mode handling)."""
        names = {n.rsplit(".", 1)[0] for n in self.group_param_names[index]}
        mods = dict(self.backbone.named_modules())
        return [mods[n] for n in sorted(names) if n in mods]

    def group_params(self, index: int) -> list[nn.Parameter]:
        params = dict(self.backbone.named_parameters())
        return [params[n] for n in self.group_param_names[index]]

    def features_from(
        self, x: torch.Tensor, start: int = 0, stop: int | None = None
    ) -> torch.Tensor:
        """Run groups ``start..stop-1`` on ``x`` (the output of group ``start-1``, or an image)."""
        if self._chunks is None:
            if start != 0 or stop not in (None, self.num_groups):
                raise ValueError(f"{type(self.backbone).__name__} cannot be run from group {start}")
            return self.backbone.forward_features(x)
        for chunk in self._chunks[start:stop]:
            x = chunk(x)
        return x

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return self.head(self.features_from(x, start))

    # -- freezing ---------------------------------------------------------------------------
    def set_trainable_groups(self, n_top: int, frozen: int | None = None) -> None:
        """Make the top ``n_top`` backbone groups (and the head) trainable, freeze the rest.

        ``frozen`` (default: all groups below the top ``n_top``) is how many leading groups keep
        BatchNorm in eval mode; it differs from ``num_groups - n_top`` only in the DDP-safe mode,
        where every parameter keeps ``requires_grad`` and frozen groups get lr 0 instead.
        """
        n_top = max(0, min(n_top, self.num_groups))
        for i in range(self.num_groups):
            trainable = i >= self.num_groups - n_top
            for p in self.group_params(i):
                p.requires_grad_(trainable)
        for p in self.head.parameters():
            p.requires_grad_(True)
        self.frozen_groups = self.num_groups - n_top if frozen is None else frozen
        self.train(self.training)

    @property
    def frozen_prefix(self) -> int:
        """How many leading groups have no trainable parameter."""
        for i in range(self.num_groups):
            if any(p.requires_grad for p in self.group_params(i)):
                return i
        return self.num_groups

    def train(self, mode: bool = True) -> CarNet:
        """As ``nn.Module.train``, but BatchNorm layers of frozen groups stay in eval mode.

        A frozen layer must not drift: updating running statistics of a frozen BatchNorm changes
        the features the trained layers after it see (and would invalidate a feature cache).
        """
        super().train(mode)
        if mode:
            for i in range(self.frozen_groups):
                for owner in self.group_modules(i):
                    for m in owner.modules():
                        if isinstance(m, nn.modules.batchnorm._BatchNorm):
                            m.eval()
        return self
