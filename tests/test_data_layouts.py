"""Dataset readers on real data: Kaggle layout, folder per class, CSV, zips (nested, as Kaggle ships)."""

from __future__ import annotations

import shutil
import zipfile

import pandas as pd
import pytest

from carclf.data.layouts import read_dataset
from carclf.errors import DataError


def test_stanford_kaggle_layout(stanford):
    d = read_dataset(stanford)
    assert d.layout == "kaggle"
    assert (d.num_classes, len(d.train), len(d.test)) == (49, 1428, 617)
    assert d.class_names[0] == "AM_General_Hummer_SUV_2000"
    csv = pd.read_csv(stanford / "train.csv", dtype=str)
    assert d.train["id"].tolist() == csv["Id"].tolist()
    assert d.train["label"].tolist() == csv["Category"].astype(int).tolist()
    sample = pd.read_csv(stanford / "sample-submission.csv", dtype=str)
    assert d.test["id"].tolist() == sample["Id"].tolist()
    assert all(
        p.endswith(f"test_upload/{i}") for p, i in zip(d.test["path"], d.test["id"], strict=True)
    )
    assert not d.missing and not d.unlisted


def test_sfdl_photos_get_competition_names(sfdl_photos):
    d = read_dataset(sfdl_photos)
    assert d.num_classes == 10 and len(d.train) == 38
    assert d.class_names[0] == "Priora" and d.class_names[8] == "Volkswagen Passat"
    assert d.class_names_local[0] == "Приора"
    assert read_dataset(sfdl_photos, class_map="none").class_names[0] == "0"


def test_real_competition_csvs_read_exactly(sfdl_meta, tmp_path):
    """The competition's own train.csv / sample-submission.csv: ids and order preserved."""
    root = tmp_path / "comp"
    shutil.copy(sfdl_meta / "train.csv", root.mkdir() or root / "train.csv")
    shutil.copy(sfdl_meta / "sample-submission.csv", root / "sample-submission.csv")
    train = pd.read_csv(root / "train.csv", dtype=str)
    sample = pd.read_csv(root / "sample-submission.csv", dtype=str)
    # Empty placeholder files stand in for the photos: reading must not decode anything.
    for cat in train["Category"].unique():
        (root / "train" / cat).mkdir(parents=True)
    for i, c in zip(train["Id"], train["Category"], strict=True):
        (root / "train" / c / i).touch()
    (root / "test_upload").mkdir()
    for i in sample["Id"]:
        (root / "test_upload" / i).touch()
    (root / "train" / train["Category"][0] / train["Id"][0]).unlink()  # one listed file missing
    (root / "train" / "0" / "stray.jpg").touch()  # one file nobody lists

    d = read_dataset(root)
    assert len(train) == 15561 and len(sample) == 6675
    assert d.num_classes == 10 and d.class_names[1] == "Ford Focus"
    assert d.train["id"].tolist() == train["Id"].tolist()[1:]
    assert d.test["id"].tolist() == sample["Id"].tolist()
    assert d.missing == [str(root / "train" / train["Category"][0] / train["Id"][0])]
    assert d.unlisted == [str(root / "train" / "0" / "stray.jpg")]
    assert d.label_values == list(range(10))


def _competition_zip(src, dest):
    """A zip shaped like the Kaggle download: CSVs plus train.zip and test.zip inside."""
    inner_train = dest.parent / "train.zip"
    with zipfile.ZipFile(inner_train, "w") as zf:
        for p in sorted((src / "train").rglob("*.jpg")):
            zf.write(p, p.relative_to(src))
    inner_test = dest.parent / "test.zip"
    ids = []
    with zipfile.ZipFile(inner_test, "w") as zf:
        for p in sorted((src / "train" / "3").glob("*.jpg")):
            zf.write(p, f"test_upload/{p.name}")
            ids.append(p.name)
    with zipfile.ZipFile(dest, "w") as zf:
        zf.write(src / "train.csv", "train.csv")
        zf.writestr(
            "sample-submission.csv", "Id,Category\n" + "".join(f"{i},0\n" for i in reversed(ids))
        )
        zf.write(inner_train, "train.zip")
        zf.write(inner_test, "test.zip")
    return ids


def test_competition_zip_is_read_without_unpacking(sfdl_photos, tmp_path):
    z = tmp_path / "sf-dl-car-classification.zip"
    ids = _competition_zip(sfdl_photos, z)
    d = read_dataset(z)
    ref = read_dataset(sfdl_photos)
    assert d.layout == "kaggle" and d.num_classes == 10
    assert d.train["id"].tolist() == ref.train["id"].tolist()
    assert d.test["id"].tolist() == list(reversed(ids))
    assert all(__import__("os").path.getsize(p) > 0 for p in d.test["path"])
    assert read_dataset(z).root == d.root  # unpacked once, then reused


def test_zip_wrapping_a_folder_per_class(sfdl_photos, tmp_path):
    z = tmp_path / "mycars.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted((sfdl_photos / "train").rglob("*.jpg")):
            zf.write(p, f"mycars/{p.parent.name}/{p.name}")
    d = read_dataset(z)
    assert d.layout == "folders" and d.num_classes == 10 and len(d.train) == 38


def test_folder_per_class_and_csv(sfdl_photos, tmp_path):
    root = tmp_path / "cars"
    for p in sorted((sfdl_photos / "train").rglob("*.jpg"))[:12]:
        name = {"0": "priora", "1": "focus", "2": "samara"}.get(p.parent.name, "other")
        (root / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / name / p.name)
    d = read_dataset(root)
    assert d.layout == "folders"
    assert d.class_names == sorted(
        {"priora", "focus", "samara", "other"} & {x.name for x in root.iterdir()}
    )
    rows = [
        (str((root / n / f.name).relative_to(tmp_path)), n)
        for n in d.class_names
        for f in sorted((root / n).iterdir())
    ]
    csv = tmp_path / "list.csv"
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(csv, index=False)
    c = read_dataset(csv)
    assert c.layout == "csv" and c.class_names == d.class_names and len(c.train) == len(d.train)


def test_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_dataset(tmp_path / "nope")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="bad.csv: no path column"):
        read_dataset(tmp_path / "bad.csv")
    (tmp_path / "notzip.zip").write_text("hello")
    with pytest.raises(DataError, match="not a valid zip"):
        read_dataset(tmp_path / "notzip.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        read_dataset(tmp_path / "empty")
