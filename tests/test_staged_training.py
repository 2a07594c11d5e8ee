"""The stage callback inside one Trainer.fit: what trains, LR, image size, cache, per stage."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from conftest import ROOT, TINY
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import carclf.config  # noqa: F401  (registers the schema)
from carclf.train.run import train
from carclf.train.stages import StageError, resolve_stages


def compose_train(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


class Spy(pl.Callback):
    """Records, at every training batch, the state the stage callback put in place."""

    def __init__(self):
        self.epochs = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch in self.epochs:
            return
        net = pl_module.net
        opt = trainer.optimizers[0]
        self.epochs[trainer.current_epoch] = {
            "trainable_groups": [
                i
                for i in range(net.num_groups)
                if any(p.requires_grad for p in net.group_params(i))
            ],
            "image_size": trainer.datamodule.image_size,
            "batch": int(batch[0].shape[0]),
            "input_shape": tuple(batch[0].shape[1:]),
            "input_start": pl_module.input_start,
            "lrs": {g["name"]: g["lr"] for g in opt.param_groups},
            "n_opt_params": sum(len(g["params"]) for g in opt.param_groups),
            "bn1_training": net.backbone.bn1.training,
        }


def test_stage_transitions(synthetic, tmp_path):
    cfg = compose_train(
        [
            f"data.path={synthetic}",
            *TINY,
            "+stage@stages.full=full",
            "stages.head.epochs=1",
            "stages.head.cache=on",
            "stages.top.epochs=2",
            "stages.top.lr=0.01",
            "stages.top.cache=on",
            "stages.top.scheduler=constant",
            "stages.full.epochs=1",
            "stages.full.image_size=80",
            "stages.full.batch_size=4",
            "stages.full.cache=off",
            "fit_temperature=false",
        ]
    )
    assert list(cfg.stages) == ["head", "top", "full"]
    spy = Spy()
    metrics = train(cfg, tmp_path / "run", callbacks=[spy])
    e = spy.epochs
    assert sorted(e) == [0, 1, 2, 3]
    # head: nothing in the backbone trains; batches are cached features after group 6 (the
    # cache is shared with the next stage, which trains groups 7 and 8)
    assert (
        e[0]["trainable_groups"] == []
        and e[0]["input_start"] == 7
        and e[0]["input_shape"][0] == 192
    )
    assert set(e[0]["lrs"]) == {"head", "head.no_decay"}
    # top: the last two groups train at lr * backbone_lr_scale, on the same cache
    assert e[1]["trainable_groups"] == [7, 8] and e[1]["input_start"] == 7
    assert e[1]["lrs"]["head"] == pytest.approx(0.01) and e[1]["lrs"][
        "backbone.8"
    ] == pytest.approx(0.01 * 0.5)
    assert e[2] == e[1]
    # full: everything trains, on images at the new size and batch size
    assert e[3]["trainable_groups"] == list(range(9)) and e[3]["input_start"] == 0
    assert e[3]["image_size"] == 80 and e[3]["input_shape"] == (3, 80, 80) and e[3]["batch"] == 4
    assert e[3]["bn1_training"] and not e[0]["bn1_training"]
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 4
    assert (run / "curves.png").stat().st_size > 1000
    assert (run / "bundle" / "meta.json").is_file() and (
        run / "checkpoints" / "last.ckpt"
    ).is_file()
    meta = json.loads((run / "bundle" / "meta.json").read_text())
    # the bundle keeps the best epoch's weights, at the size of the stage that epoch belongs to
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    best_stage = best["callbacks"]["StagedFinetuning"]["stage"]
    assert meta["image_size"] == (80 if best_stage == 2 else 64)
    assert meta["class_names"][0].startswith("synthetic")
    assert metrics["cache_seconds"]  # the cache was used
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))


def test_cache_matches_uncached_forward(synthetic):
    """A cached stage sees exactly the features the uncached network computes (eval view)."""
    from carclf.data.datamodule import CarDataModule
    from carclf.data.dataset import MultiViewDataset
    from carclf.models import build_net
    from carclf.train.feature_cache import CacheKey, FeatureCache, prefix_fingerprint
    from carclf.train.prefix_engine import TorchPrefix

    dm = CarDataModule(synthetic, image_size=64, num_workers=0)
    net = build_net("tf_efficientnet_lite0", dm.num_classes, weights="offline").eval()
    ds = dm.dataset("val", transform=dm.eval_preset())
    rows = dm.rows("val")
    key = CacheKey("val", 6, 64, 1, 1.0, len(ds), prefix_fingerprint(net, 6))
    cache = FeatureCache.build(
        key,
        TorchPrefix(net, 6),
        MultiViewDataset(rows["path"], rows["label"], [dm.eval_preset()]),
        batch_images=4,
        num_workers=0,
    )
    x, y, idx = next(iter(cache.loader(batch_size=len(ds), shuffle=False)))
    images = torch.stack([ds[i][0] for i in idx.tolist()])
    with torch.inference_mode():
        assert torch.allclose(net(x, start=6), net(images), atol=2e-2)
    net.backbone.blocks[2][0].conv_pw.weight.data.mul_(1.01)
    assert prefix_fingerprint(net, 6) != key.fingerprint  # a changed prefix invalidates the cache
    assert prefix_fingerprint(net, 2) == prefix_fingerprint(
        build_net("tf_efficientnet_lite0", 3, weights="offline"), 2
    )


def test_bad_recipes_fail_early():
    with pytest.raises(StageError, match="no stages"):
        resolve_stages({}, 9, 224, 32, 1.0)
    with pytest.raises(StageError, match=r"stages.a.unfreeze"):
        resolve_stages({"a": {"unfreeze": 2.0}}, 9, 224, 32, 1.0)
    with pytest.raises(StageError, match=r"stages.b.scheduler='cosin'"):
        resolve_stages({"a": {}, "b": {"scheduler": "cosin"}}, 9, 224, 32, 1.0)
    s = resolve_stages(
        {"a": {"epochs": 2, "unfreeze": 0.5}, "b": {"image_size": 448, "unfreeze": 1.0}},
        9,
        224,
        32,
        1.0,
    )
    assert [(x.start_epoch, x.trainable_groups, x.image_size) for x in s] == [
        (0, 4, 224),
        (2, 9, 448),
    ]


def test_every_recipe_composes():
    for exp in sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")):
        cfg = compose_train([f"experiment={exp}", "data.path=x"])
        assert cfg.stages, exp
        stages = resolve_stages(
            OmegaConf.to_container(cfg.stages), 9, cfg.data.image_size, cfg.data.batch_size, 1.0
        )
        assert stages[-1].end_epoch >= 2, exp


@pytest.mark.slow
def test_training_features_smoke(synthetic, tmp_path):
    """Mixup/cutmix, EMA, channels_last, clipping, accumulation, layer decay, plateau and
    onecycle schedulers, a hidden head layer and class weights, in one short uncached run."""
    cfg = compose_train(
        [
            f"data.path={synthetic}",
            *TINY,
            "model.mixup=0.2",
            "model.cutmix=1.0",
            "model.mix_prob=1.0",
            "model.ema_decay=0.9",
            "model.channels_last=true",
            "model.layer_decay=0.8",
            "model.class_weights=true",
            "model.head.hidden=[16]",
            "trainer.gradient_clip_val=1.0",
            "trainer.accumulate_grad_batches=2",
            "trainer.deterministic=true",
            "stages.head.epochs=1",
            "stages.head.cache=off",
            "stages.head.scheduler=plateau",
            "stages.top.epochs=1",
            "stages.top.cache=off",
            "stages.top.scheduler=onecycle",
            "stages.top.optimizer=sgd",
            "bundle_fp16=true",
        ]
    )
    metrics = train(cfg, tmp_path / "run")
    assert metrics["epochs"] == 2 and 0.0 <= metrics["val_acc"] <= 1.0
    meta = json.loads((tmp_path / "run" / "bundle" / "meta.json").read_text())
    assert meta["dtype"] == "float16" and meta["head"]["hidden"] == [16]
    from carclf import Classifier

    clf = Classifier.load(tmp_path / "run")
    pred = clf.predict(sorted((synthetic / "test_upload").glob("*.jpg"))[:3], top_k=2)
    assert all(p.ok and len(p.top) == 2 for p in pred)


def test_large_cache_stays_on_disk(synthetic, tmp_path):
    import numpy as np

    from carclf.data.datamodule import CarDataModule
    from carclf.data.dataset import MultiViewDataset
    from carclf.models import build_net
    from carclf.train.feature_cache import CacheKey, FeatureCache
    from carclf.train.prefix_engine import TorchPrefix

    dm = CarDataModule(synthetic, image_size=64, num_workers=0)
    net = build_net("tf_efficientnet_lite0", dm.num_classes, weights="none").eval()
    rows = dm.rows("train")
    labels = rows["label"].to_numpy()
    key = CacheKey("train", 7, 64, 2, 1.0, len(labels), "x")
    cache = FeatureCache.build(
        key,
        TorchPrefix(net, 7),
        MultiViewDataset(rows["path"], labels, [dm.eval_preset(), dm.train_preset()]),
        batch_images=4,
        num_workers=0,
        max_mb=0,
        directory=tmp_path,
    )
    assert isinstance(cache.store, np.memmap) and list(tmp_path.glob("*.npy"))
    x, y, idx = next(iter(cache.loader(batch_size=8, shuffle=True)))
    assert x.dtype == torch.float32 and x.shape == (8, 192, 2, 2)
    assert torch.equal(y, torch.as_tensor(labels[idx.numpy()]))


def test_time_budget_counts_from_run_start(synthetic, tmp_path):
    """A budget already spent before the first batch stops training after one batch."""
    cfg = compose_train(
        [f"data.path={synthetic}", *TINY, "trainer.time_budget_min=0.0001", "fit_temperature=false"]
    )
    metrics = train(cfg, tmp_path / "run")
    epochs = json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]
    assert epochs == metrics["epochs"]
    import pandas as pd

    log = pd.read_csv(tmp_path / "run" / "logs" / "csv" / "metrics.csv")
    assert log["epoch"].max() == 0  # stopped inside the first epoch of 16
    assert metrics["epochs_completed"] <= 1 and metrics["epochs"] == 16
