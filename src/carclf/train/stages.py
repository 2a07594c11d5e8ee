"""Stages as data: what trains, how fast, at what resolution, for how many epochs.

Pure Python on purpose: :class:`StagedFinetuning` is the only code that *applies* a stage; this
module only resolves recipe configs into a checked list, so a bad recipe fails before any model
is built, naming the stage and key at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from carclf.errors import ConfigError

OPTIMIZER_NAMES = ("adamw", "sgd")
SCHEDULER_NAMES = ("cosine", "onecycle", "plateau", "constant")
CACHE_MODES = ("auto", "on", "off")
AUTO = "auto"
# Placeholders until the budget planner (carclf.train.planner) has measured this machine.
AUTO_EPOCHS_PLACEHOLDER = 1
AUTO_VIEWS_PLACEHOLDER = 4


class StageError(ConfigError):
    """A recipe's stage list is invalid; the message names the stage and key."""


@dataclass
class StageConfig:
    """One step of a recipe (``conf/stage/``). Stages run in order inside one Trainer.fit.

    The schema of ``stages.<name>`` and the one place a stage option and its default live: add
    an option here, give it a field on :class:`Stage` and use it where the stage is applied.
    """

    epochs: Any = 1  # a whole number, or "auto": fill the time budget (trainer.time_budget_min)
    unfreeze: float = 0.0  # fraction of backbone groups trained, counted from the top (1 = all)
    trainable_groups: int | None = None  # exact number of top groups instead of a fraction
    lr: float = 1e-3  # head learning rate
    backbone_lr_scale: float = 0.1  # backbone lr = lr * this (times layer_decay^depth)
    weight_decay: float = 0.01
    optimizer: str = "adamw"  # adamw | sgd
    scheduler: str = "cosine"  # cosine | onecycle | plateau | constant
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.01
    plateau_patience: int = 3
    plateau_factor: float = 0.3
    image_size: int | None = None  # None keeps the previous size
    batch_size: int | None = None
    augment_strength: float | None = None
    cache: str = "auto"  # auto | on | off: compute the frozen prefix once (see FeatureCache)
    cache_views: Any = 4  # augmented views per image kept in the cache, or "auto" (budget)


STAGE_DEFAULTS = {f.name: f.default for f in fields(StageConfig)}


@dataclass(frozen=True)
class Stage:
    name: str
    index: int
    start_epoch: int
    epochs: int
    trainable_groups: int
    lr: float
    backbone_lr_scale: float
    weight_decay: float
    optimizer: str
    scheduler: str
    warmup_epochs: float
    min_lr_ratio: float
    plateau_patience: int
    plateau_factor: float
    image_size: int
    batch_size: int
    augment_strength: float
    cache: str
    cache_views: int
    auto_epochs: bool = False  # ``epochs: auto``: the budget planner chooses
    auto_views: bool = False  # ``cache_views: auto``: the budget planner chooses

    @property
    def end_epoch(self) -> int:
        return self.start_epoch + self.epochs

    def cut(self, num_groups: int) -> int:
        """Number of leading (frozen) backbone groups."""
        return num_groups - self.trainable_groups


def _get(cfg: Any, key: str):
    """``cfg.key`` (a dict, a DictConfig or a StageConfig), or the StageConfig default."""
    default = STAGE_DEFAULTS[key]
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def resolve_stages(
    configs, num_groups: int, image_size: int, batch_size: int, augment_strength: float
) -> list[Stage]:
    """Turn ``{name: StageConfig}`` (in recipe order) into checked :class:`Stage` objects.

    ``image_size``, ``batch_size`` and ``augment_strength`` carry over from the previous stage
    (the data config for the first) where a stage leaves them unset.
    """
    items = list(configs.items())
    if not items:
        raise StageError("the recipe has no stages: set experiment=<recipe> or add stages.<name>")
    stages, epoch = [], 0
    for i, (name, c) in enumerate(items):
        where = f"stages.{name}"
        epochs, auto_epochs = _count(c, "epochs", AUTO_EPOCHS_PLACEHOLDER, where)
        views, auto_views = _count(c, "cache_views", AUTO_VIEWS_PLACEHOLDER, where)
        unfreeze = float(_get(c, "unfreeze"))
        groups = _get(c, "trainable_groups")
        if groups is None:
            if not 0.0 <= unfreeze <= 1.0:
                raise StageError(f"{where}.unfreeze must be a fraction in [0, 1], got {unfreeze}")
            groups = round(unfreeze * num_groups)
        elif not 0 <= int(groups) <= num_groups:
            raise StageError(f"{where}.trainable_groups must be in 0..{num_groups}, got {groups}")
        for key, allowed in (
            ("optimizer", OPTIMIZER_NAMES),
            ("scheduler", SCHEDULER_NAMES),
            ("cache", CACHE_MODES),
        ):
            value = _get(c, key)
            if value is not None and value not in allowed:
                raise StageError(f"{where}.{key}={value!r}: choose one of {', '.join(allowed)}")
        lr = float(_get(c, "lr"))
        if lr <= 0:
            raise StageError(f"{where}.lr must be > 0, got {lr}")
        image_size = int(_get(c, "image_size") or image_size)
        batch_size = int(_get(c, "batch_size") or batch_size)
        strength = _get(c, "augment_strength")
        augment_strength = float(augment_strength if strength is None else strength)
        stages.append(
            Stage(
                name=name,
                index=i,
                start_epoch=epoch,
                epochs=epochs,
                trainable_groups=int(groups),
                lr=lr,
                backbone_lr_scale=float(_get(c, "backbone_lr_scale")),
                weight_decay=float(_get(c, "weight_decay")),
                optimizer=_get(c, "optimizer"),
                scheduler=_get(c, "scheduler"),
                warmup_epochs=float(_get(c, "warmup_epochs")),
                min_lr_ratio=float(_get(c, "min_lr_ratio")),
                plateau_patience=int(_get(c, "plateau_patience")),
                plateau_factor=float(_get(c, "plateau_factor")),
                image_size=image_size,
                batch_size=batch_size,
                augment_strength=augment_strength,
                cache=_get(c, "cache"),
                cache_views=views,
                auto_epochs=auto_epochs,
                auto_views=auto_views,
            )
        )
        epoch += epochs
    return stages


def _count(c, key: str, placeholder: int, where: str) -> tuple[int, bool]:
    """A positive whole number or ``auto`` (returned as the placeholder, flagged)."""
    value = _get(c, key)
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return placeholder, True
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise StageError(f"{where}.{key}={value!r}: expected a whole number or 'auto'") from None
    if n < 1 or n != float(value):
        raise StageError(f"{where}.{key} must be a whole number >= 1 or 'auto', got {value!r}")
    return n, False


def with_plan(stages: list[Stage], epochs: dict[str, int], views: int | None) -> list[Stage]:
    """``stages`` with planned epochs (by stage name) and views (for ``auto`` views) filled in;
    start epochs are recomputed. The ``auto`` flags stay, so a plan can be refined later."""
    out, epoch = [], 0
    for s in stages:
        n = epochs.get(s.name, s.epochs)
        v = views if (s.auto_views and views) else s.cache_views
        out.append(replace(s, start_epoch=epoch, epochs=int(n), cache_views=int(v)))
        epoch += int(n)
    return out


def stage_at(stages: list[Stage], epoch: int) -> int:
    """Index of the stage that epoch ``epoch`` belongs to (the last one past the end)."""
    for s in stages:
        if epoch < s.end_epoch:
            return s.index
    return stages[-1].index


def total_epochs(stages: list[Stage]) -> int:
    return stages[-1].end_epoch
