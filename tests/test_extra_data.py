"""Extra labelled sets (data.extra): class map, drops counted, leakage removed, training split only,
and the per-row loss (weights, soft targets) that extra rows and distillation train with."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from carclf.data.datamodule import CarDataModule
from carclf.data.extra import REPORT_FILE, read_extra
from carclf.data.layouts import read_dataset
from carclf.errors import DataError


def _copy_class(stanford, category: int, dest, n: int, skip: int = 0) -> list:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sorted((stanford / "train" / str(category)).iterdir())[skip : skip + n]:
        shutil.copy(src, dest / src.name)
        out.append(dest / src.name)
    return out


@pytest.fixture()
def sets(stanford, tmp_path):
    """Main data: 3 classes x 6 real photos (folders A, B, C). Extra: their classes a_ext, b_ext,
    zzz (3 new photos each), plus a byte copy of every main photo of class A and a corrupt file."""
    main = tmp_path / "main"
    for name, cat in (("A", 0), ("B", 1), ("C", 2)):
        _copy_class(stanford, cat, main / name, 6)
    extra = tmp_path / "extra"
    for name, cat in (("a_ext", 0), ("b_ext", 1), ("zzz", 2)):
        _copy_class(stanford, cat, extra / name, 3, skip=6)
    for i, p in enumerate(sorted((main / "A").iterdir())):
        shutil.copy(p, extra / "a_ext" / f"copy{i}.jpg")
    (extra / "b_ext" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cmap = tmp_path / "map.yaml"
    cmap.write_text("a_ext: A\nb_ext: B\nzzz: null\n")
    return main, extra, cmap


def test_class_map_maps_drops_and_counts(sets, tmp_path):
    main, extra_dir, cmap = sets
    index = read_dataset(main)
    extra = read_extra([str(extra_dir)], index, class_map=str(cmap), weight=0.5, run_dir=tmp_path)
    s = extra.sets[0]
    assert s.found == 3 + 3 + 3 + 6 + 1
    assert s.dropped == {"zzz": 3}  # unmapped class dropped and counted
    assert [b["path"].endswith("broken.jpg") for b in s.bad_files] == [True]
    assert sorted(index.class_names[k] for k in set(s.rows["label"])) == ["A", "B"]
    assert (s.rows["weight"] == 0.5).all()


def test_extra_rows_join_training_only_and_leaks_are_removed(sets, tmp_path):
    main, extra_dir, cmap = sets
    index = read_dataset(main)
    extra = read_extra([str(extra_dir)], index, class_map=str(cmap), weight=0.5, run_dir=tmp_path)
    dm = CarDataModule(index=index, val_fraction=0.34, seed=0, num_workers=0, extra=extra)
    train, val = dm.rows("train"), dm.rows("val")
    val_names = {p.rsplit("/", 1)[1] for p in val["path"]}
    extra_paths = set(dm.extra_rows["path"])
    assert not extra_paths & set(val["path"])  # no extra photo ever enters validation
    assert extra_paths <= set(train["path"])
    # Every byte copy of a main class-A photo is gone: copies of val photos as leakage, copies
    # of training photos as double counts. 3 + 3 new photos remain (broken and zzz dropped).
    assert not any(p.rsplit("/", 1)[1].startswith("copy") for p in extra_paths)
    assert len(extra_paths) == 6
    report = json.loads((tmp_path / REPORT_FILE).read_text())[0]
    leaked = report["removed_as_leakage"]
    assert len(leaked) == 6 and {x["split"] for x in leaked} == {"val", "train"}
    assert {x["same_as"].rsplit("/", 1)[1] for x in leaked if x["split"] == "val"} <= val_names
    assert report["dropped_unmapped"] == 3 and report["kept"] == 6
    # weights reach the loss through row_targets, aligned with rows("train")
    targets = dm.row_targets()
    w = targets["weight"]
    assert len(w) == len(train) and (w[train["path"].isin(extra_paths)] == 0.5).all()
    assert (w[~train["path"].isin(extra_paths)] == 1.0).all()
    assert len(dm.dataset("train")) == len(train)


def test_labels_that_map_to_nothing_name_the_set(sets, tmp_path):
    main, extra_dir, _ = sets
    index = read_dataset(main)
    bad = tmp_path / "none.csv"
    bad.write_text("theirs,ours\nq,X\n")
    with pytest.raises(DataError, match=f"data.extra={extra_dir}: none of its labels"):
        read_extra([str(extra_dir)], index, class_map=str(bad))
    with pytest.raises(DataError, match="none of its labels"):  # no map: a_ext etc. match nothing
        read_extra([str(extra_dir)], index)


def test_labels_match_by_value_without_a_map(stanford, sets, tmp_path):
    main, _, _ = sets
    index = read_dataset(main)
    photos = sorted((stanford / "train" / "1").iterdir())[8:10]
    csv = tmp_path / "extra.csv"
    pd.DataFrame({"path": [str(p) for p in photos], "label": ["B", "C"]}).to_csv(csv, index=False)
    extra = read_extra([str(csv)], index)
    assert [index.class_names[k] for k in extra.rows["label"]] == ["B", "C"]


def _module(k: int = 4):
    from carclf.models.bundle import BundleMeta
    from carclf.models.module import CarClassifier

    meta = BundleMeta("tf_efficientnet_lite0", [str(i) for i in range(k)], 32, [0.5] * 3, [0.5] * 3)
    return CarClassifier(meta.__dict__, weights="none", label_smoothing=0.0)


def test_row_loss_weights_labels_and_soft_targets():
    module = _module()
    logits = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, -1, 3])
    idx = torch.tensor([4, 3, 2, 1, 0])
    assert module.row_loss(logits[[0, 1, 2, 4]], y[[0, 1, 2, 4]], idx[:4]) == module.loss(
        logits[[0, 1, 2, 4]], y[[0, 1, 2, 4]]
    )
    soft = torch.softmax(torch.randn(5, 4), 1)
    weight = torch.tensor([1.0, 0.5, 1.0, 2.0, 1.0])
    alpha = torch.tensor([0.3, 0.0, 0.0, 0.0, 0.0])  # row 1 (label -1) uses its soft target only
    t = 2.0
    module.row_targets = {"weight": weight, "soft": soft, "alpha": alpha, "temperature": t}
    got = module.row_loss(logits, y, idx)
    ce = F.cross_entropy(logits, y.clamp(min=0), reduction="none")
    log_p = F.log_softmax(logits / t, 1)
    kl = (soft[idx] * (soft[idx].log() - log_p)).sum(1) * t * t
    a = alpha[idx].clone()
    a[3] = 1.0
    expected = (weight[idx] * ((1 - a) * torch.where(y >= 0, ce, 0) + a * kl)).mean()
    assert torch.allclose(got, expected, atol=1e-6)


def test_pseudo_csv_keeps_test_photos_and_soft_labels(stanford, sets, tmp_path):
    """A pseudo-label CSV (carclf.pseudo's columns) may hold test photos (its labels are the
    model's); the same photos with true labels are leakage. Soft p:<label> columns are read."""
    main, _, _ = sets
    test_photo = sorted((stanford / "train" / "2").iterdir())[10]
    (main / "test").mkdir()
    shutil.copy(test_photo, main / "test" / "t1.jpg")
    index = read_dataset(main)
    assert len(index.test) == 1
    rows = {"path": [str(test_photo)], "label": ["C"]}
    pseudo = tmp_path / "pseudo.csv"
    pd.DataFrame({**rows, "confidence": [0.97], "pseudo_model": ["m"],
                  "p:A": [0.01], "p:B": [0.02], "p:C": [0.97]}).to_csv(pseudo, index=False)  # fmt: skip
    labelled = tmp_path / "labelled.csv"
    pd.DataFrame(rows).to_csv(labelled, index=False)
    extra = read_extra([str(pseudo), str(labelled)], index, run_dir=tmp_path)
    dm = CarDataModule(index=index, val_fraction=0.34, seed=0, num_workers=0, extra=extra)
    kept = dm.extra_rows["path"].tolist()
    assert kept == [str(test_photo)]  # once: from the pseudo CSV, not from the labelled one
    assert extra.sets[1].leaked[0]["split"] == "test"
    targets = dm.row_targets()
    soft, alpha = targets["soft"], targets["alpha"]
    assert np.allclose(soft[-1], [0.01, 0.02, 0.97]) and alpha[-1] == 1.0
    assert np.isnan(soft[:-1]).all() and (alpha[:-1] == 0).all()
