"""Backbones, offline weights, the network's groups and chunks, bundles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carclf.data.images import load_rgb
from carclf.data.presets import EvalPreset
from carclf.errors import ModelError
from carclf.models import build_net
from carclf.models.bundle import BundleMeta, load_bundle, save_bundle
from carclf.models.factory import create_backbone

# ImageNet classes that a photo of a passenger car plausibly gets.
IMAGENET_CARS = {
    407,
    436,
    468,
    479,
    511,
    555,
    569,
    573,
    575,
    581,
    586,
    609,
    627,
    654,
    656,
    661,
    675,
    705,
    717,
    734,
    751,
    779,
    803,
    817,
    864,
    867,
    874,
}


@pytest.mark.parametrize(
    "name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
)
def test_offline_weights_are_real_imagenet_weights(name, sfdl_photos):
    """The packaged weights load strictly, and real car photos get car classes in the top-5."""
    model = create_backbone(name, weights="offline", keep_imagenet_head=True).eval()
    preset = EvalPreset(size=224, mean=(0.5,) * 3, std=(0.5,) * 3)
    paths = sorted((sfdl_photos / "train").rglob("*.jpg"))
    x = torch.stack([preset(load_rgb(p)) for p in paths])
    with torch.inference_mode():
        top5 = model(x).topk(5).indices.tolist()
    hits = sum(bool(IMAGENET_CARS & set(t)) for t in top5)
    assert hits >= 0.9 * len(paths), f"only {hits}/{len(paths)} photos got a car class in the top-5"


def test_random_weights_do_not_pass_the_car_check(sfdl_photos):
    model = create_backbone("tf_efficientnet_lite0", weights="none", keep_imagenet_head=True).eval()
    preset = EvalPreset(size=224, mean=(0.5,) * 3, std=(0.5,) * 3)
    x = torch.stack(
        [preset(load_rgb(p)) for p in sorted((sfdl_photos / "train").rglob("*.jpg"))[:10]]
    )
    with torch.inference_mode():
        top5 = model(x).topk(5).indices.tolist()
    assert sum(bool(IMAGENET_CARS & set(t)) for t in top5) < 8


def test_hub_failure_names_offline_choices(monkeypatch):
    import timm

    def no_network(*a, **k):
        if k.get("pretrained"):
            raise OSError("network unreachable")
        return real(*a, **k)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", no_network)
    with pytest.raises(ModelError, match="tf_efficientnet_lite0"):
        create_backbone("resnet18", weights="hub")
    with pytest.raises(ModelError, match="unknown backbone"):
        create_backbone("no_such_net", weights="none")
    with pytest.raises(ModelError, match="no such file"):
        create_backbone("resnet18", weights="/nonexistent/w.pth")


def test_local_weights_file(tmp_path):
    src = create_backbone("resnet18", weights="none")
    torch.save(src.state_dict(), tmp_path / "w.pth")
    dst = create_backbone("resnet18", weights=str(tmp_path / "w.pth"))
    for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "name,groups,splittable",
    [("tf_efficientnet_lite0", 9, True), ("resnet18", 5, True), ("convnext_atto", None, False)],
)
def test_groups_and_split_forward(name, groups, splittable):
    net = build_net(name, 3, weights="none").eval()
    if groups:
        assert net.num_groups == groups
    assert net.splittable is splittable
    n_params = sum(1 for _ in net.backbone.parameters())
    assert sum(len(g) for g in net.group_param_names) == n_params
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        full = net(x)
        if splittable:
            for cut in range(net.num_groups + 1):
                assert torch.allclose(net(net.features_from(x, 0, cut), start=cut), full, atol=1e-5)


def test_freezing_keeps_frozen_batchnorm_in_eval():
    net = build_net("tf_efficientnet_lite0", 3, weights="none")
    net.set_trainable_groups(2)
    assert net.frozen_prefix == 7
    trainable = {n for n, p in net.backbone.named_parameters() if p.requires_grad}
    assert trainable == set(net.group_param_names[7]) | set(net.group_param_names[8])
    assert all(p.requires_grad for p in net.head.parameters())
    net.train()
    assert not net.backbone.bn1.training and not net.backbone.blocks[5][0].bn1.training
    assert net.backbone.blocks[6][0].bn1.training and net.backbone.bn2.training
    net.set_trainable_groups(net.num_groups)
    net.train()
    assert net.backbone.bn1.training


def test_bundle_roundtrip(tmp_path):
    net = build_net("tf_efficientnet_lite0", 4, weights="none", head={"hidden": [32]}).eval()
    meta = BundleMeta(
        backbone="tf_efficientnet_lite0",
        class_names=list("abcd"),
        image_size=64,
        mean=[0.5] * 3,
        std=[0.5] * 3,
        head={"hidden": [32]},
    )
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ref = net(x)
    save_bundle(net, meta, tmp_path / "b")
    net2, meta2 = load_bundle(tmp_path / "b")
    with torch.inference_mode():
        assert torch.equal(net2(x), ref)
    assert meta2.class_names == list("abcd") and meta2.carclf_version
    save_bundle(net, meta, tmp_path / "b", fp16=True)  # replace in place, half the size
    net3, meta3 = load_bundle(tmp_path / "b")
    assert meta3.dtype == "float16"
    with torch.inference_mode():
        assert np.allclose(net3(x).numpy(), ref.numpy(), atol=0.05)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(ModelError, match="not a carclf bundle"):
        load_bundle(tmp_path)
