"""The trained tail's format on a CPU (layout, bf16 autocast): chosen by measurement, kept."""

from __future__ import annotations

import pytest
import torch

from carclf.errors import ConfigError
from carclf.models.bundle import BundleMeta
from carclf.models.module import CarClassifier
from carclf.train import probe
from carclf.train.feature_cache import prefix_fingerprint
from carclf.train.finetune import StagedFinetuning
from carclf.train.planner import Budget, Plan, Planner
from carclf.train.stages import resolve_stages
from carclf.train.tail_format import FORMATS, apply_format, candidates, check_format

CUT = 7


@pytest.fixture(scope="module")
def module():
    meta = BundleMeta(
        backbone="tf_efficientnet_lite0",
        class_names=[str(i) for i in range(5)],
        image_size=64,
        mean=[0.5] * 3,
        std=[0.5] * 3,
    )
    m = CarClassifier(meta.__dict__, weights="offline")
    m.net.set_trainable_groups(2)
    return m


def _cached(module, n=8):
    """What the cache holds for 64 px photos: groups 0-6's output."""
    torch.manual_seed(0)
    with torch.no_grad():
        return module.net.features_from(torch.randn(n, 3, 64, 64), 0, CUT)


def test_each_format_trains_the_same_tail(module):
    """Every format computes the same logits from cached features (bf16 within its rounding),
    returns fp32 logits, trains (finite gradients), and leaves the frozen prefix as it was (its
    fingerprint keys the cache)."""
    x = _cached(module)
    module.input_start = CUT
    before = prefix_fingerprint(module.net, CUT)
    module.net.eval()
    outs = {}
    for name in FORMATS:
        apply_format(module, name, CUT)
        conv = next(
            m.weight
            for m in module.net.group_modules(CUT + 1)
            if getattr(m, "weight", None) is not None
            and m.weight.ndim == 4
            and m.weight.shape[1] > 1
            and m.weight.shape[2:] == (1, 1)
        )
        # a 1x1 conv's weight (O, I, 1, 1): strides (I, 1, 1, 1), channels_last (I, 1, I, I)
        assert (conv.stride()[-1] != 1) == (name != "fp32"), (name, conv.stride())
        with torch.no_grad():
            outs[name] = module(x)
        assert outs[name].dtype == torch.float32
    saved = {k: v.clone() for k, v in module.net.state_dict().items()}
    for name in FORMATS:  # a training step (BatchNorm in train mode: its statistics move)
        apply_format(module, name, CUT)
        module.net.train()
        module(x).logsumexp(1).mean().backward()
        grads = [p.grad for p in module.net.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
        module.zero_grad(set_to_none=True)
    module.net.load_state_dict(saved)
    module.net.eval()
    apply_format(module, "fp32", CUT)
    module.input_start = 0
    ref = outs["fp32"]
    assert torch.allclose(outs["channels_last"], ref, atol=1e-4, rtol=1e-4)
    rel = float((outs["bf16"] - ref).norm() / ref.norm())
    assert 0 < rel < 0.05, rel  # bf16 rounds, a little
    assert prefix_fingerprint(module.net, CUT) == before


def test_the_probe_keeps_the_fastest_format_and_fp32_on_a_tie(module, monkeypatch):
    stage = resolve_stages({"top": {"epochs": 2, "trainable_groups": 2}}, 9, 64, 8, 1.0)[0]
    speeds = {}

    def timed(trainer, pl_module, stage, cut, inputs, steps=3):
        name = (
            "bf16"
            if pl_module.autocast_bf16
            else ("channels_last" if pl_module.input_channels_last else "fp32")
        )
        return speeds[name]

    monkeypatch.setattr(probe, "_train_rate", timed)
    speeds.update(fp32=100.0, channels_last=140.0, bf16=180.0)
    best, rate, tried = probe._fastest_format(None, module, stage, CUT, None, "auto")
    assert (best, rate) == ("bf16", 180.0) and tried == speeds
    assert not module.autocast_bf16 and not module.input_channels_last  # left in fp32
    speeds.update(fp32=100.0, channels_last=103.0, bf16=60.0)  # within the timing noise
    assert probe._fastest_format(None, module, stage, CUT, None, "auto")[0] == "fp32"
    best, _, tried = probe._fastest_format(None, module, stage, CUT, None, "channels_last")
    assert best == "channels_last" and list(tried) == ["channels_last"]  # a fixed choice
    assert candidates("auto", torch.device("cuda")) == ("fp32",)


def test_the_plan_carries_the_choice_through_a_resume():
    """The stage trains in the format the probe chose; a run restored from its checkpoint reads
    the same plan (the choice is part of it) and keeps it; a fixed setting wins over the plan."""
    stages = resolve_stages(
        {
            "head": {"epochs": 1, "trainable_groups": 0},
            "top": {"epochs": "auto", "trainable_groups": 2},
        },
        9,
        64,
        8,
        1.0,
    )
    planner = Planner(Budget(60.0))
    planner.plan = Plan(None, {"top": 3}, {}, {"tail_format": ["fp32", "bf16"]})
    staged = StagedFinetuning(stages, planner=planner)
    assert [staged.stage_format(s) for s in staged.stages] == ["fp32", "bf16"]
    state = staged.state_dict()
    resumed = StagedFinetuning(stages, planner=Planner(Budget(60.0)))
    resumed.load_state_dict(state)
    assert resumed.stage_format(resumed.stages[1]) == "bf16"
    fixed = StagedFinetuning(stages, planner=planner, tail_format="channels_last")
    assert fixed.stage_format(stages[1]) == "channels_last"


def test_a_wrong_format_fails_at_start():
    with pytest.raises(ConfigError, match="tail_format='fp16'"):
        check_format("fp16")
