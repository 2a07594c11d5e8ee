"""Measure what a recipe's stages cost on this machine, in the run's first seconds.

The budget planner (:mod:`carclf.train.planner`) needs three rates per stage: how fast the frozen
prefix is cached (decode + augment + engine, on real photos of the train split), how fast the
trainable part trains (forward, backward and an optimizer step at the stage's batch size) and
how fast it validates; plus how long the end of the run will take. Each is measured on a small
sample with the run's own engine and loaders, so it includes what a synthetic benchmark would
miss (decoding, worker start-up amortised out, this box's load today).

The probe leaves no trace: the network's weights, BatchNorm statistics, ``requires_grad`` flags
and the DataModule's settings are restored afterwards, and the prefix engine it exported is the
one the real cache build then uses (both go through :class:`carclf.train.cache_stage.CacheStage`).
"""

from __future__ import annotations

import logging
import statistics
import time

import torch
import torch.nn.functional as F

from carclf.train.cache_stage import CacheStage
from carclf.train.final_pass import final_backend
from carclf.train.planner import StageCost
from carclf.train.stages import Stage
from carclf.train.tail_format import apply_format, candidates

log = logging.getLogger(__name__)
# Per epoch beyond the measured steps: checkpoints (best + last), logging, loader set-up.
EPOCH_OVERHEAD_S = 0.6
# The end of a run beyond its network passes: loader start-ups (a second each on 2 cores), the
# temperature and open-set fits, bundle, curves, summaries, metrics. Measured on the 2-core box:
# 4-6 s on small data; under-estimating it let the final validation be cut short.
FINISH_OVERHEAD_S = 6.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(inputs: torch.Tensor, size: int) -> torch.Tensor:
    reps = -(-size // len(inputs))
    return inputs.repeat(reps, *([1] * (inputs.ndim - 1)))[:size]


# A format other than fp32's default layout must beat it by this much (3 timed steps are noisy).
FORMAT_MARGIN = 1.05


def _fastest_format(trainer, pl_module, stage, cut: int, inputs, choice: str):
    """(format, images/s, {format: images/s}): ``stage``'s trained part timed in each of the
    formats ``tail_format=choice`` allows (:mod:`carclf.train.tail_format`); the fastest kept."""
    rates = {}
    try:
        for name in candidates(choice, pl_module.device):
            apply_format(pl_module, name, cut)
            rates[name] = _train_rate(trainer, pl_module, stage, cut, inputs)
    finally:
        apply_format(pl_module, "fp32", cut)
    fp32 = rates.get("fp32", 0.0) * FORMAT_MARGIN
    best = max(rates, key=lambda n: rates[n] if n != "fp32" else fp32)
    return best, rates[best], {k: round(v, 1) for k, v in rates.items()}


def _train_rate(trainer, pl_module, stage, cut: int, inputs: torch.Tensor, steps: int = 3):
    """Images/s of training steps of ``stage``'s trainable part starting at group ``cut``."""
    net, device = pl_module.net, pl_module.device
    net.set_trainable_groups(stage.trainable_groups)
    net.train()
    pl_module.input_start = cut
    x = _batch(inputs, stage.batch_size).to(device)
    y = torch.randint(0, net.head.fc.out_features, (len(x),), device=device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6) if params else None
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with trainer.precision_plugin.forward_context():
            logits = pl_module(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - t)
    return len(x) / statistics.median(times[1:])


@torch.inference_mode()
def _eval_rate(
    trainer, pl_module, cut: int, inputs: torch.Tensor, batch: int = 32, runs: int = 3
) -> float:
    net, device = pl_module.net, pl_module.device
    net.eval()
    pl_module.input_start = cut
    x = _batch(inputs, batch).to(device)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        with trainer.precision_plugin.forward_context():
            pl_module(x)
        _sync(device)
        times.append(time.perf_counter() - t)
    return len(x) / statistics.median(times[1:])


@torch.inference_mode()
def _backend_rate(backend, size: int, batch: int = 8, runs: int = 4) -> float:
    """Images/s of the end of the run's backend (:mod:`carclf.train.final_pass`); its first
    call exports the prefix engine it will use then."""
    x = torch.randn(batch, 3, size, size)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        backend(x)
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times[1:])


def _finish_cost(
    trainer, pl_module, size: int, finish_views: float, backend=None
) -> tuple[float, float]:
    """(seconds, images/s): the end of the run, from the speed at ``size`` of what will run it
    (``backend``: the frozen prefix through an engine + the tail; None: the whole network)."""
    if backend is not None:
        pl_module.net.eval()
        full = _backend_rate(backend, size)
    else:
        full = _eval_rate(trainer, pl_module, 0, torch.randn(8, 3, size, size), batch=8, runs=4)
    n_val = len(trainer.datamodule.rows("val"))
    return n_val * finish_views / full + FINISH_OVERHEAD_S, full


def finish_cost(trainer, pl_module, size: int, finish_views: float, backend=None) -> float:
    """Seconds the end of the run will take (its validation pass with ``finish_views`` network
    passes per photo, the bundle): what a budget without a plan keeps free. The network is left
    as it was."""
    net = pl_module.net
    training, start = net.training, pl_module.input_start
    try:
        seconds, full = _finish_cost(trainer, pl_module, size, finish_views, backend)
    finally:
        net.train(training)
        pl_module.input_start = start
    log.info("the end of the run: about %.0f s (%.0f img/s on the whole network)", seconds, full)
    return seconds


def measure_costs(
    stages: list[Stage],
    cache: CacheStage,
    trainer,
    pl_module,
    finish_views: float,
    tail_format: str = "auto",
) -> tuple[list[StageCost], float, dict]:
    """Costs of each stage (its trained part in the fastest format ``tail_format`` allows),
    of the end of the run (``finish_views`` network passes per validation photo), and the
    measured rates."""
    dm, net = trainer.datamodule, pl_module.net
    saved_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    saved_grad = {n: p.requires_grad for n, p in net.named_parameters()}
    saved = (
        net.frozen_groups,
        net.training,
        pl_module.input_start,
        dm.image_size,
        dm.batch_size,
        dm.augment_strength,
    )
    rates: dict = {
        "prefix_views_per_s": {},
        "train_img_per_s": [],
        "val_img_per_s": [],
        "tail_format": [],
        "tail_formats_img_per_s": [],
    }
    try:
        costs = _stage_costs(stages, cache, trainer, pl_module, rates, tail_format)
        backend = final_backend(cache, stages, pl_module)
        finish, full = _finish_cost(
            trainer, pl_module, stages[-1].image_size, finish_views, backend
        )
        rates["full_eval_img_per_s"] = round(full, 1)
    finally:
        net.load_state_dict(saved_state)
        for n, p in net.named_parameters():
            p.requires_grad_(saved_grad[n])
        (
            net.frozen_groups,
            training,
            pl_module.input_start,
            dm.image_size,
            dm.batch_size,
            dm.augment_strength,
        ) = saved
        net.train(training)
    log.info("measured this machine: %s", rates)
    return costs, finish, rates


def _stage_costs(
    stages, cache: CacheStage, trainer, pl_module, rates: dict, tail_format: str
) -> list[StageCost]:
    dm = trainer.datamodule
    n_train, n_val = len(dm.rows("train")), len(dm.rows("val"))
    costs, probes, previous = [], {}, None
    for stage in stages:
        dm.image_size, dm.batch_size, dm.augment_strength = (
            stage.image_size,
            stage.batch_size,
            stage.augment_strength,
        )
        cut = cache.cut(stages, stage, pl_module)
        cache_id = (
            (cut, stage.image_size, stage.augment_strength, stage.cache_views, stage.auto_views)
            if cut
            else None
        )
        shares = cache_id is not None and cache_id == previous
        previous = cache_id
        per_view = fixed = 0.0
        if cut:
            if (cut, stage.image_size) not in probes:
                probes[(cut, stage.image_size)] = cache.probe(dm, pl_module, stage, cut)
            inputs, rate = probes[(cut, stage.image_size)]
            rates["prefix_views_per_s"][f"cut{cut}@{stage.image_size}"] = round(rate, 1)
            if not shares:
                per_view, fixed = n_train / rate, n_val / rate
        else:
            inputs = torch.randn(8, 3, stage.image_size, stage.image_size)
        fmt, train, tried = _fastest_format(trainer, pl_module, stage, cut, inputs, tail_format)
        val = _eval_rate(trainer, pl_module, cut, inputs) if n_val else float("inf")
        rates["tail_format"].append(fmt)
        rates["tail_formats_img_per_s"].append(tried)
        rates["train_img_per_s"].append(round(train, 1))
        rates["val_img_per_s"].append(round(val, 1))
        costs.append(StageCost(per_view, fixed, n_train / train + n_val / val + EPOCH_OVERHEAD_S))
    return costs
