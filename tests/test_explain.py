"""Grad-CAM heat maps (carclf.inference.explain): they point at the evidence, predict.py writes
one per photo with explain=true, the evaluation report shows them, ONNX-only models say why not."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize
from PIL import Image

from carclf.data.classmaps import SFDL_CLASSES
from carclf.errors import ModelError
from carclf.evaluate import heatmaps
from carclf.evaluate.config import register_configs
from carclf.evaluate.heatmaps import overlay_name
from carclf.evaluate.run import evaluate, predict
from carclf.inference import Classifier
from carclf.inference.explain import Explainer, Explanation, can_explain
from carclf.models import build_net
from carclf.models.bundle import WEIGHTS, BundleMeta, save_bundle
from carclf.models.ensemble import EnsembleNet

ROOT = Path(__file__).resolve().parents[1]
SIZE = 192  # Lite0's last stage is 1/32 of the input: a 6 x 6 map
PATCH = 56


def _photo(rng, corner: tuple[int, int] | None, marked: bool) -> np.ndarray:
    """Grey noise with one square patch at ``corner`` (top, left): a red-white checkerboard
    (class 1, "marked") or a plain grey square of the same size (class 0)."""
    img = rng.normal(120, 25, (SIZE, SIZE, 3)).clip(0, 255).astype(np.uint8)
    if corner is None:
        corner = tuple(rng.integers(0, SIZE - PATCH, 2))
    t, left = corner
    if marked:
        yy, xx = np.mgrid[0:PATCH, 0:PATCH] // 8
        board = ((yy + xx) % 2).astype(bool)
        patch = np.where(board[..., None], [230, 30, 30], [250, 250, 250])
    else:
        patch = np.full((PATCH, PATCH, 3), 128)
    img[t : t + PATCH, left : left + PATCH] = patch
    return img


@pytest.fixture(scope="module")
def region_model():
    """Lite0 (offline ImageNet weights) with a linear head trained on frozen pooled features to
    tell a checkerboard patch (anywhere in the photo) from a plain one: the class is decided
    by one region of the photo."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = build_net("tf_efficientnet_lite0", 2, weights="offline").eval()
    meta = BundleMeta(
        backbone="tf_efficientnet_lite0",
        class_names=["plain", "marked"],
        image_size=SIZE,
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
    )
    clf = Classifier(net, meta, device="cpu")
    labels = np.arange(48) % 2
    photos = [_photo(rng, None, bool(y)) for y in labels]
    with torch.no_grad():
        x = torch.stack([clf.preprocess(p) for p in photos])
        feats = net.head(net.features_from(x), pre_logits=True)
    fc = net.head.fc
    opt = torch.optim.Adam(fc.parameters(), lr=0.01)
    y = torch.from_numpy(labels)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(fc(feats), y).backward()
        opt.step()
    return net, meta


@pytest.mark.parametrize("corner", [(8, SIZE - PATCH - 8), (SIZE - PATCH - 8, 8)])
def test_heat_map_mass_lies_in_the_deciding_region(region_model, corner):
    net, meta = region_model
    photo = _photo(np.random.default_rng(1), corner, marked=True)
    e = Explainer(net, meta).explain(photo)
    assert e.index == 1 and e.probability > 0.8  # the head learnt the patch
    heat = e.heatmap
    assert heat.shape == (SIZE, SIZE) and 0.0 <= heat.min() and heat.max() <= 1.0
    t, left = corner
    half = SIZE // 2  # the quadrant holding the patch: a quarter of the photo
    qt, ql = (0 if t < half else half), (0 if left < half else half)
    share = heat[qt : qt + half, ql : ql + half].sum() / heat.sum()
    assert share > 0.6, f"only {share:.0%} of the map in the patch's quadrant"
    # the overlay is the photo (whole: resize=squash) with colours over it
    assert e.overlay.shape == (SIZE, SIZE, 3) and e.overlay.dtype == np.uint8
    assert Image.open(io.BytesIO(e.png())).size == (SIZE, SIZE)


def test_explainer_checks_and_ensembles(region_model):
    net, meta = region_model
    ex = Explainer(EnsembleNet([net, net]), meta)
    photo = _photo(np.random.default_rng(2), (8, 8), marked=True)
    one, both = Explainer(net, meta).explain(photo), ex.explain(photo)
    np.testing.assert_allclose(both.heatmap, one.heatmap, atol=1e-4)  # mean of equal maps
    assert ex.explain(photo, target=0).index == 0 and ex.explain(photo, target=0).rank == 2
    with pytest.raises(ValueError, match="out of range"):
        ex.explain(photo, target=5)


def _meta(size: int = 64) -> BundleMeta:
    return BundleMeta(
        backbone="tf_efficientnet_lite0",
        class_names=[n for n, _ in SFDL_CLASSES],
        class_names_local=[loc for _, loc in SFDL_CLASSES],
        image_size=size,
        mean=[0.5] * 3,
        std=[0.5] * 3,
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = build_net("tf_efficientnet_lite0", 10, weights="offline").eval()
    return save_bundle(net, _meta(), tmp_path_factory.mktemp("explain") / "bundle")


def test_onnx_only_model_cannot_be_explained(bundle, tmp_path):
    class FakeOnnx:
        name = "onnx"

        def __init__(self, path):
            self.path = path

    with_weights = Classifier(None, _meta(), "cpu", backend=FakeOnnx(bundle / "model.onnx"))
    assert can_explain(with_weights)  # its bundle has the PyTorch weights beside the ONNX file
    e = Explainer.for_classifier(with_weights).explain(np.zeros((40, 60, 3), np.uint8))
    assert e.overlay.shape == (40, 60, 3) and 0 <= e.index < 10
    only = tmp_path / "onnx-only"
    shutil.copytree(bundle, only)
    (only / WEIGHTS).unlink()
    clf = Classifier(None, _meta(), "cpu", backend=FakeOnnx(only / "model.onnx"))
    assert not can_explain(clf)
    with pytest.raises(ModelError, match="PyTorch weights"):
        Explainer.for_classifier(clf)
    with pytest.raises(ModelError, match="^explain=true: .*PyTorch weights"):
        heatmaps.explainer(clf, 448, "explain=true")  # what predict.py reports (exit 2)


def test_overlay_names_are_unique_and_safe():
    taken: set[str] = set()
    names = [overlay_name(i, taken) for i in ("a/b.jpg", "a/b.png", "../x.jpg", "c.d.jpeg", "")]
    assert names == ["a__b.png", "a__b-2.png", "x.png", "c.d.png", "image.png"]


def _cfg(**overrides):
    register_configs(ROOT / "conf")
    args = [f"{k}={v}" for k, v in {"progress": False, "num_workers": 0, **overrides}.items()]
    with initialize(version_base="1.3", config_path=None):
        return compose("predict", overrides=args)


def test_predict_explain_writes_an_overlay_per_photo(bundle, sfdl_photos, tmp_path):
    photos = sorted((sfdl_photos / "train").glob("*/*.jpg"))[:5]
    folder = tmp_path / "in"
    folder.mkdir()
    for p in photos:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(photos[0].read_bytes()[:300])
    res = predict(_cfg(model=bundle, input=folder, output=tmp_path / "sub.csv", explain=True))
    out = tmp_path / "sub_explain"
    table = pd.read_csv(out / "overlays.csv")
    assert sorted(table["id"]) == sorted(p.name for p in photos)  # the broken one has none
    topk = pd.read_csv(tmp_path / "sub_topk.csv", keep_default_na=False).set_index("Id")
    for row in table.itertuples():
        img = Image.open(out / row.file)
        assert img.format == "PNG" and max(img.size) <= 448
        assert row.name == topk.loc[row.id, "name_1"]  # the map explains the answer given
    assert res.explainer is not None


def test_report_maps_pick_mistakes_then_confident_correct_answers(tmp_path):
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (30, 20), (40 * i, 90, 160)).save(paths[-1])

    class Stub:
        def explain_arrays(self, images, targets):
            return [
                Explanation(np.zeros((4, 4)), rgb, t, 0.5)
                for rgb, t in zip(images, targets, strict=True)
            ]

    probs = np.array(
        [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05], [0.1, 0.9]], np.float32
    )
    labels = np.array([0, 1, 1, 0, 0, 1])  # rows 2 and 3 are mistakes
    ok = np.array([True, True, True, True, True, False])  # row 5 was unreadable
    maps = heatmaps.report_maps(Stub(), paths, probs, labels, ok, ["a", "b"], [paths[3]], 2)
    captions = [m.caption for m in maps]
    assert captions == ["3.png: true a; said b (70%)", "4.png: said a (95%)", "1.png: said b (80%)"]
    assert [m.correct for m in maps] == [False, True, True]


def test_report_shows_heat_maps_of_mistakes_and_correct_answers(bundle, sfdl_photos, tmp_path):
    metrics = evaluate(
        _cfg(model=bundle, input=sfdl_photos, output=tmp_path / "ev.csv", tta="none", gallery=6)
    )
    page = Path(metrics["report"]).read_text(encoding="utf-8")
    assert "Where the model looked (Grad-CAM" in page
    section = page[page.index('id="heatmaps"') :]
    wrong = min(6, metrics["num_scored"] - round(metrics["accuracy"] * metrics["num_scored"]))
    assert section.count("✗ ") == wrong
    assert section.count("data:image/png;base64,") >= wrong > 0
