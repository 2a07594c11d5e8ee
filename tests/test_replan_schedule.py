"""A stage re-planned mid-way keeps its LR curve: the same cosine over the new length, from the
step it has reached, counted as a resumed run counts it."""

from __future__ import annotations

import dataclasses
import math

import torch

from carclf.train.optim import build_scheduler
from carclf.train.stages import resolve_stages

STEPS = 5  # per epoch


def _stage(epochs):
    cfg = {"top": {"epochs": epochs, "scheduler": "cosine", "warmup_epochs": 1.0, "lr": 1.0}}
    return resolve_stages(cfg, 9, 64, 8, 1.0)[0]


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_a_replanned_cosine_goes_on_from_where_it_is():
    opt = _optimizer()
    planned = build_scheduler(opt, _stage(10), STEPS)["scheduler"]
    for _ in range(20):  # 4 epochs
        opt.step()
        planned.step()
    before = opt.param_groups[0]["lr"]
    longer = dataclasses.replace(_stage(10), epochs=12)
    sched = build_scheduler(opt, longer, STEPS, start_step=20)["scheduler"]
    after = opt.param_groups[0]["lr"]
    warm = STEPS
    low = longer.min_lr_ratio
    want = low + (1 - low) * 0.5 * (1 + math.cos(math.pi * (20 - warm) / (12 * STEPS - warm)))
    assert math.isclose(after, want, rel_tol=1e-6)
    assert (
        after > before and after - before < 0.1
    )  # a little more time: a little higher, no restart
    assert sched.last_epoch == 20
    # a run resumed here rebuilds the stage's scheduler from step 0 and loads the state
    opt2 = _optimizer()
    resumed = build_scheduler(opt2, longer, STEPS)["scheduler"]
    resumed.load_state_dict(sched.state_dict())
    opt.step(), sched.step(), opt2.step(), resumed.step()
    assert math.isclose(opt.param_groups[0]["lr"], opt2.param_groups[0]["lr"], rel_tol=1e-9)
