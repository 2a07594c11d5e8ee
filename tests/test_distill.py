"""Distillation: teacher soft targets for every training and unlabelled photo (computed once,
validation copies dropped), a teacher with other classes refused, and a tiny end-to-end run whose
student is a normal bundle."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import TINY, run_cli
from omegaconf import OmegaConf

from carclf.data.datamodule import CarDataModule
from carclf.errors import CarclfError
from carclf.models import build_net
from carclf.models.bundle import BundleMeta, is_bundle, load_bundle, save_bundle
from carclf.models.network import CarNet
from carclf.train.distill import LOGITS_FILE, attach_teacher


@pytest.fixture(scope="module")
def data(stanford, tmp_path_factory):
    """3 classes x 6 real photos, and 3 unlabelled ones (new photos of the same classes)."""
    root = tmp_path_factory.mktemp("distill") / "cars"
    unlabelled = root.parent / "unlabelled"
    unlabelled.mkdir()
    for name, cat in (("A", 0), ("B", 1), ("C", 2)):
        (root / name).mkdir(parents=True)
        files = sorted((stanford / "train" / str(cat)).iterdir())
        for src in files[:6]:
            shutil.copy(src, root / name / src.name)
        shutil.copy(files[6], unlabelled / files[6].name)
    return root, unlabelled


def teacher_bundle(folder, classes=("A", "B", "C")):
    torch.manual_seed(0)
    net = build_net("tf_efficientnet_lite0", len(classes), weights="none").eval()
    meta = BundleMeta(
        "tf_efficientnet_lite0", list(classes), 64, [0.5] * 3, [0.5] * 3, label_values=list(classes)
    )
    return save_bundle(net, meta, folder)


def settings(**kw):
    return OmegaConf.create(
        {"temperature": 2.0, "alpha": 0.7, "tta": "none", "unlabelled": [], **kw}
    )


def test_soft_targets_for_every_training_and_unlabelled_photo(data, tmp_path):
    root, unlabelled = data
    dm = CarDataModule(root, val_fraction=0.34, seed=0, num_workers=0, image_size=64)
    val_copy = unlabelled / "copy_of_val.jpg"
    shutil.copy(dm.rows("val")["path"].iloc[0], val_copy)
    teacher = teacher_bundle(tmp_path / "teacher")
    n_train = len(dm.rows("train"))
    attach_teacher(dm, str(teacher), settings(unlabelled=[str(unlabelled)]), tmp_path)
    rows = dm.rows("train")
    assert len(rows) == n_train + 3  # the copy of a validation photo was dropped
    assert not set(rows["path"]) & set(dm.rows("val")["path"])
    assert (rows["label"].to_numpy() == -1).sum() == 3
    targets = dm.row_targets()
    assert targets["soft"].shape == (n_train + 3, 3) and targets["temperature"] == 2.0
    assert np.allclose(targets["soft"].sum(1), 1.0, atol=1e-5)
    assert np.allclose(targets["alpha"], 0.7)
    # the soft targets are the teacher's logits / T, row for row
    saved = np.load(tmp_path / LOGITS_FILE)
    assert saved["paths"].tolist() == rows["path"].tolist()
    expected = torch.softmax(torch.from_numpy(saved["logits"]) / 2.0, 1).numpy()
    assert np.allclose(targets["soft"], expected, atol=1e-6)
    # computed once: a second attach (a resumed run) reuses the file
    before = (tmp_path / LOGITS_FILE).stat().st_mtime_ns
    dm2 = CarDataModule(root, val_fraction=0.34, seed=0, num_workers=0, image_size=64)
    attach_teacher(dm2, str(teacher), settings(unlabelled=[str(unlabelled)]), tmp_path)
    assert (tmp_path / LOGITS_FILE).stat().st_mtime_ns == before
    val_copy.unlink()


def test_teacher_with_other_classes_is_refused(data, tmp_path):
    root, _ = data
    dm = CarDataModule(root, val_fraction=0.34, seed=0, num_workers=0)
    teacher = teacher_bundle(tmp_path / "t", classes=("A", "B", "X"))
    with pytest.raises(CarclfError, match=f"teacher={teacher}: its classes"):
        attach_teacher(dm, str(teacher), settings())


@pytest.mark.slow
def test_tiny_distillation_run_gives_a_normal_bundle(data, tmp_path):
    root, unlabelled = data
    teacher = teacher_bundle(tmp_path / "teacher")
    run = tmp_path / "student"
    run_cli(
        "train.py",
        "experiment=distill",
        f"teacher={teacher}",
        f"data.path={root}",
        f"distill.unlabelled=[{unlabelled}]",
        *TINY,
        "data.val_fraction=0.34",
        "stages.head.epochs=1",
        "stages.top.epochs=1",
        "stages.head.cache_views=2",
        "stages.top.cache_views=2",
        f"hydra.run.dir={run}",
    )
    assert is_bundle(run / "bundle") and (run / LOGITS_FILE).is_file()
    net, meta = load_bundle(run / "bundle")
    assert type(net) is CarNet and meta.class_names == ["A", "B", "C"]
    assert np.load(run / LOGITS_FILE)["logits"].shape[0] == 12 + 3
