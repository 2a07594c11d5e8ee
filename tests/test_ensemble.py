"""k-fold ensembles as one bundle: reload, identical to averaging the members by hand, temperature
refitted out of fold, ONNX export with parity, and clear errors for members that do not match."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from carclf.ensemble import EnsembleError, build_ensemble
from carclf.inference import Classifier
from carclf.inference.calibration import fit_temperature
from carclf.models import build_net
from carclf.models.bundle import BundleMeta, load_bundle, read_meta, save_bundle
from carclf.models.ensemble import ENSEMBLE, EnsembleNet

SIZE = 64


@pytest.fixture(scope="module")
def photos(stanford, tmp_path_factory):
    """A folder-per-class set of 3 classes x 6 real photos."""
    root = tmp_path_factory.mktemp("ens-data") / "cars"
    for name, cat in (("A", 0), ("B", 1), ("C", 2)):
        (root / name).mkdir(parents=True)
        for src in sorted((stanford / "train" / str(cat)).iterdir())[:6]:
            shutil.copy(src, root / name / src.name)
    return root


def fake_run(folder, data, fold: int, seed: int, classes=("A", "B", "C"), size=SIZE):
    """A run folder as training leaves it (config.yaml + bundle/), weights from a seed: enough to
    test the plumbing without training (the math does not care whether the heads learned)."""
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(
        {
            "data": {"path": str(data), "layout": "auto", "class_map": "auto",
                     "val_fraction": 0.15, "fold": fold, "num_folds": 2},
            "seed": 0,
            "calibration_tta": "hflip",
        },
        folder / "config.yaml",
    )  # fmt: skip
    torch.manual_seed(seed)
    net = build_net("tf_efficientnet_lite0", len(classes), weights="offline").eval()
    meta = BundleMeta("tf_efficientnet_lite0", list(classes), size, [0.5] * 3, [0.5] * 3)
    save_bundle(net, meta, folder / "bundle")
    return folder


@pytest.fixture(scope="module")
def runs(photos, tmp_path_factory):
    base = tmp_path_factory.mktemp("ens-runs")
    return [fake_run(base / f"fold{k}", photos, fold=k, seed=k) for k in range(2)]


@pytest.fixture(scope="module")
def ensemble(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens-out") / "ensemble"
    folder, metrics = build_ensemble(runs, out, num_workers=0)
    return folder, metrics


def test_ensemble_bundle_reloads_and_matches_members_by_hand(ensemble, runs, photos):
    folder, metrics = ensemble
    net, meta = load_bundle(folder)
    assert isinstance(net, EnsembleNet) and meta.backbone == ENSEMBLE and len(net.members) == 2
    paths = sorted(photos.glob("*/*.jpg"))[:5]
    clf = Classifier.load(folder, device="cpu")
    members = [Classifier.load(r, device="cpu") for r in runs]
    batch = torch.stack([clf.preprocess(p) for p in paths])
    by_hand = torch.stack([m.logits(batch) for m in members]).mean(0)
    assert torch.allclose(clf.logits(batch), by_hand, atol=1e-5)
    probs = clf.predict_proba(paths)
    expected = torch.softmax(by_hand / meta.temperature, 1).numpy()
    assert np.allclose(probs, expected, atol=1e-5)
    assert [p.top[0].index for p in clf.predict(paths)] == expected.argmax(1).tolist()


def test_temperature_is_refitted_on_out_of_fold_logits(ensemble, runs):
    folder, metrics = ensemble
    held = np.load(folder / "heldout.npz")
    assert str(held["tta"]) == "hflip"  # the runs' calibration policy
    assert len(held["labels"]) == 18 == metrics["oof_photos"]  # every photo once, out of fold
    assert read_meta(folder).temperature == pytest.approx(
        fit_temperature(held["logits"], held["labels"]), rel=1e-6
    )
    # member k answered its own fold: its logits (hflip merged) reproduce the stored ones
    from carclf.data.run_split import validation_rows

    rows, _ = validation_rows(runs[0])
    member = Classifier.load(runs[0], device="cpu", tta="hflip")
    views = torch.stack(
        [torch.stack(member.tta(member.decode(p))) for p in rows["path"]]
    )  # (N, V, 3, H, W)
    own = torch.stack([member.logits(views[:, v]) for v in range(views.shape[1])], 1).mean(1)
    assert np.allclose(held["logits"][: len(rows)], own.numpy(), atol=1e-4)


@pytest.mark.slow
def test_ensemble_exports_to_onnx_with_parity(ensemble, photos, tmp_path):
    from carclf.export import export_model

    folder, _ = ensemble
    copy = tmp_path / "ens"
    shutil.copytree(folder, copy)
    report = export_model(copy, images=[photos], num_images=8)
    fp32 = report.parity[0]
    assert report.ok and fp32.top1_identical and fp32.max_abs_diff < 1e-4
    onnx_clf = Classifier.load(copy, backend="onnx")
    torch_clf = Classifier.load(copy, backend="torch")
    paths = sorted(photos.glob("*/*.jpg"))[:4]
    assert np.allclose(onnx_clf.predict_proba(paths), torch_clf.predict_proba(paths), atol=1e-4)
    props = json.loads((copy / "meta.json").read_text())
    assert props["backbone"] == ENSEMBLE


def test_mismatched_members_name_both(runs, photos, tmp_path):
    other = tmp_path / "other"
    fake_run(other, photos, fold=0, seed=9, classes=("A", "B", "X"))
    with pytest.raises(EnsembleError, match=rf"{runs[0]} and {other}: different class lists"):
        build_ensemble([runs[0], other], tmp_path / "e")
    sized = tmp_path / "sized"
    fake_run(sized, photos, fold=1, seed=9, size=96)
    with pytest.raises(EnsembleError, match=r"different preprocessing \(image_size: 64 vs 96\)"):
        build_ensemble([runs[0], sized], tmp_path / "e")
