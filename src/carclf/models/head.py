"""The classifier head that replaces the backbone's ImageNet one."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from timm.layers import SelectAdaptivePool2d
from torch import nn


@dataclass
class HeadConfig:
    """Pooling, then optional hidden layers (Linear-BN-act-dropout), then dropout and Linear."""

    pool: str = "avg"  # avg | max | avgmax | catavgmax
    dropout: float = 0.2
    hidden: list[int] = field(default_factory=list)
    hidden_dropout: float = 0.1


class ClassifierHead(nn.Module):
    def __init__(
        self,
        in_features: int,
        num_classes: int,
        pool: str = "avg",
        dropout: float = 0.2,
        hidden=(),
        hidden_dropout: float = 0.1,
    ):
        super().__init__()
        self.pool = SelectAdaptivePool2d(pool_type=pool, flatten=True)
        width = in_features * self.pool.feat_mult()
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [
                nn.Linear(width, h, bias=False),
                nn.BatchNorm1d(h),
                nn.SiLU(inplace=True),
                nn.Dropout(hidden_dropout),
            ]
            width = h
        self.hidden = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)
        self.num_features = width

    def forward(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.hidden(self.pool(features))
        return x if pre_logits else self.fc(self.dropout(x))
