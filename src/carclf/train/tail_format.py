"""How a stage's trained part runs on a CPU: memory layout and bf16 autocast, by measurement.

On 2 cores the same training step of Lite2's tail on cached features ran at very different
speeds in different formats (``benchmarks/bench_cache.py``, BENCHMARKS.md): channels_last beat
the default NCHW layout, and bf16 autocast with channels_last beat both on this AMD EPYC
(AVX512-BF16, no AMX), while on another box bf16 in backprop was slower than fp32. So nothing is
assumed: with ``tail_format=auto`` the planner's speed probe (:mod:`carclf.train.probe`) times a
few training steps of every stage in each format on this machine and the stage trains in the
fastest; the choice is part of the plan (``plan.json`` and the checkpoint), so a resumed run
keeps it. ``fp32`` (the default layout), ``channels_last`` or ``bf16`` (autocast +
channels_last) fix it. Only the trained part changes: the frozen prefix (computed by the cache's
engines, fingerprinted by its weights) keeps its layout, and the end of the run's validation is
fp32 (:mod:`carclf.train.final_pass`).
"""

from __future__ import annotations

import torch

from carclf.errors import ConfigError

FORMATS = ("fp32", "channels_last", "bf16")
CHOICES = ("auto", *FORMATS)


def check_format(name: str) -> None:
    if name not in CHOICES:
        raise ConfigError(f"tail_format={name!r}: choose one of {', '.join(CHOICES)}")


def candidates(choice: str, device: torch.device) -> tuple[str, ...]:
    """The formats to time for ``tail_format=choice`` (one: nothing to measure)."""
    if device.type != "cpu":
        return ("fp32",)  # on a GPU the trainer's precision setting decides
    return FORMATS if choice == "auto" else (choice,)


def apply_format(pl_module, name: str, cut: int) -> None:
    """Run ``pl_module``'s groups from ``cut`` (and its head) in format ``name`` (on a CPU;
    ``model.channels_last=true`` keeps the whole network channels_last as it asked)."""
    hparams = getattr(pl_module, "hparams", {})
    if pl_module.device.type != "cpu" or hparams.get("channels_last"):
        return
    net = pl_module.net
    channels_last = name in ("channels_last", "bf16")
    memory = torch.channels_last if channels_last else torch.contiguous_format
    if net.splittable:
        modules = [m for i in range(cut, net.num_groups) for m in net.group_modules(i)]
    else:
        modules = [net.backbone]
    for module in [*modules, net.head]:
        module.to(memory_format=memory)
    pl_module.input_channels_last = channels_last
    pl_module.autocast_bf16 = name == "bf16"
