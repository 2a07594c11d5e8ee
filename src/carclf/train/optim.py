"""Optimizers and schedulers for one stage, built afresh at every stage boundary.

Param groups are named by backbone group (see :class:`carclf.models.network.CarNet`), so a stage
that unfreezes more of the backbone gets a new optimizer with exactly its trainable groups, instead
of groups added mid-run that schedulers never see.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from carclf.models.network import CarNet
from carclf.train.stages import Stage

OPTIMIZERS = {
    "adamw": lambda groups, lr: torch.optim.AdamW(groups, lr=lr),
    "sgd": lambda groups, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True),
}


def _split_decay(params, lr: float, wd: float, name: str) -> list[dict]:
    """Norm weights and biases (1-D) get no weight decay."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = []
    if decay:
        groups.append({"params": decay, "lr": lr, "weight_decay": wd, "name": f"{name}"})
    if no_decay:
        groups.append(
            {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}.no_decay"}
        )
    return groups


def param_groups(
    net: CarNet, stage: Stage, layer_decay: float | None = None, include_frozen: bool = False
) -> list[dict]:
    """Head at ``stage.lr``; trainable backbone groups at ``lr * backbone_lr_scale * layer_decay**depth``.

    With ``include_frozen`` (DDP-safe mode) frozen groups are present at lr 0, so the set of
    parameters DDP reduces never changes between stages.
    """
    groups = _split_decay(list(net.head.parameters()), stage.lr, stage.weight_decay, "head")
    n = net.num_groups
    for i in range(n):
        depth = n - 1 - i  # 0 = the group next to the head
        trainable = i >= n - stage.trainable_groups
        if not trainable and not include_frozen:
            continue
        lr = stage.lr * stage.backbone_lr_scale * (layer_decay**depth if layer_decay else 1.0)
        groups += _split_decay(
            net.group_params(i), lr if trainable else 0.0, stage.weight_decay, f"backbone.{i}"
        )
    return groups


def build_optimizer(
    net: CarNet, stage: Stage, layer_decay: float | None = None, include_frozen: bool = False
) -> torch.optim.Optimizer:
    return OPTIMIZERS[stage.optimizer](
        param_groups(net, stage, layer_decay, include_frozen), stage.lr
    )


def _warmup_cosine(stage: Stage, total_steps: int, steps_per_epoch: int):
    warmup = int(stage.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return stage.min_lr_ratio + (1 - stage.min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, stage: Stage, steps_per_epoch: int, start_step: int = 0
) -> dict | None:
    """A Lightning ``lr_scheduler`` config for the stage (None for a constant LR).

    ``start_step``: the schedule of a stage whose length was re-planned mid-way, at the step it
    has reached (cosine only: the LR goes on from the same point of the new, longer or shorter
    curve, and the scheduler counts steps from the stage's start, as a resumed run's does)."""
    total = max(1, stage.epochs * steps_per_epoch)
    if stage.scheduler == "constant":
        return None
    if stage.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _warmup_cosine(stage, total, steps_per_epoch)
        )
        if start_step:
            sched.last_epoch = start_step - 1
            with warnings.catch_warnings():  # "step() before optimizer.step()": on purpose
                warnings.simplefilter("ignore", UserWarning)
                sched.step()
        return {"scheduler": sched, "interval": "step"}
    if stage.scheduler == "onecycle":
        pct = (
            min(0.5, max(0.05, stage.warmup_epochs / stage.epochs)) if stage.warmup_epochs else 0.25
        )
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total + 1,
            pct_start=pct,
            final_div_factor=1.0 / max(stage.min_lr_ratio, 1e-4) / 25.0,
        )
        return {"scheduler": sched, "interval": "step"}
    if stage.scheduler == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=stage.plateau_factor, patience=stage.plateau_patience
        )
        return {"scheduler": sched, "interval": "epoch", "monitor": "val/loss", "strict": False}
    raise ValueError(f"unknown scheduler {stage.scheduler!r}")


def trainable_parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
