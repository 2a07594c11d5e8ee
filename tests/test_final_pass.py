"""The end of a run's passes: the frozen prefix through the cache's fp32 engine + the tail."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from carclf.data.dataset import MultiViewDataset
from carclf.data.presets import EvalPreset
from carclf.inference.classifier import Classifier
from carclf.models import build_net
from carclf.models.bundle import BundleMeta
from carclf.train.cache_stage import CacheStage
from carclf.train.feature_cache import prefix_fingerprint
from carclf.train.final_pass import PrefixTail, final_backend
from carclf.train.stages import resolve_stages

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def module():
    net = build_net("tf_efficientnet_lite0", 5, weights="offline").eval()
    meta = BundleMeta(
        backbone="tf_efficientnet_lite0",
        class_names=[str(i) for i in range(5)],
        image_size=64,
        mean=list(MEAN),
        std=list(STD),
    )
    return SimpleNamespace(net=net, device=torch.device("cpu"), meta=meta)


def _views(stanford, sizes, n=6):
    rows = pd.read_csv(stanford / "train.csv").head(n)
    paths = [
        str(stanford / "train" / str(c) / i) for i, c in zip(rows.Id, rows.Category, strict=True)
    ]
    out = []
    for size in sizes:
        ds = MultiViewDataset(paths, list(range(n)), [EvalPreset(size=size, mean=MEAN, std=STD)])
        out.append(torch.cat([ds[i][0] for i in range(n)]))
    return out


def _stages(top_groups: int):
    cfg = {
        "head": {"epochs": 1, "unfreeze": 0.0},
        "top": {"epochs": 1, "trainable_groups": top_groups},
    }
    return resolve_stages(cfg, 9, 64, 8, 1.0)


def test_prefix_engine_plus_tail_computes_what_the_bundle_computes(stanford, module, tmp_path):
    """Every view size (64 px and the 1.15x view, 74 px) gets its own fp32 ONNX export of the
    frozen prefix; logits and features match the whole network in PyTorch on real photos, even
    when the cache itself was computed by a low-precision engine (the final validation scores
    the fp32 model)."""
    cache = CacheStage("auto", cache_dir=tmp_path)
    stages = _stages(2)
    backend = final_backend(cache, stages, module)
    assert isinstance(backend, PrefixTail) and backend.cut == 7
    # the cache's own engine for this prefix is a low-precision one (a stand-in that must not
    # be called: the end of the run exports fp32 engines of its own)
    fake = SimpleNamespace(name="int8", checked=True, engine=None, close=lambda: None)
    cache._engines[(7, 64, prefix_fingerprint(module.net, 7))] = fake
    views = _views(stanford, (64, 74))
    torch_clf = Classifier(module.net, module.meta, device="cpu")
    want, want_f = torch_clf.view_outputs(views, True)
    got, got_f = Classifier(module.net, module.meta, device="cpu", backend=backend).view_outputs(
        views, True
    )
    assert got.shape == want.shape == (6, 2, 5)
    assert torch.allclose(got, want, atol=2e-3, rtol=1e-3), float((got - want).abs().max())
    assert torch.allclose(got_f, want_f, atol=2e-3, rtol=1e-3)
    engines = cache._final
    assert sorted(k[1] for k in engines) == [64, 74]  # one export per view size, not the int8
    assert all(e.name == "onnx" and e.parity is not None for e in engines.values())
    assert len(list(tmp_path.glob("*.onnx"))) == 2
    cache.close()
    assert not list(tmp_path.glob("*.onnx"))  # removed with the run's caches


def test_no_cached_prefix_means_the_whole_network(module):
    """A last stage that trains every group (nothing frozen to cache), or a run on a GPU, ends
    with the whole network in PyTorch, as before."""
    cache = CacheStage("auto")
    assert final_backend(cache, _stages(9), module) is None
    gpu = SimpleNamespace(net=module.net, device=torch.device("cuda"), meta=module.meta)
    assert final_backend(cache, _stages(2), gpu) is None
    assert final_backend(CacheStage("auto"), [], module) is None
