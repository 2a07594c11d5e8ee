"""What predict.py reads as input: files, folders, CSV lists, Kaggle folders, labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from carclf.data.inputs import LabelMatcher, collect_inputs
from carclf.errors import DataError

MATCH = LabelMatcher([0, 3, 5], ["Priora", "VAZ-2110", "Niva"], ["Приора", "ВАЗ-2110", "Нива"])


def _img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)
    return path


def test_one_file_and_a_nested_folder(tmp_path):
    one = collect_inputs(_img(tmp_path / "a" / "x.jpg"))
    assert one.ids == ["x.jpg"] and one.labels is None
    _img(tmp_path / "a" / "sub" / "img10.png")
    _img(tmp_path / "a" / "sub" / "img9.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    many = collect_inputs(tmp_path / "a")
    assert many.ids == ["sub/img9.png", "sub/img10.png", "x.jpg"]  # natural path order, no .txt


def test_kaggle_folder_predicts_its_test_images_in_sample_order(sfdl_photos, tmp_path):
    root = tmp_path / "kaggle"
    for i in ("b.jpg", "a.jpg"):
        _img(root / "test_upload" / i)
    _img(root / "train" / "0" / "t.jpg")
    pd.DataFrame({"Id": ["t.jpg"], "Category": [0]}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"Id": ["b.jpg", "a.jpg"], "Category": [0, 0]}).to_csv(
        root / "sample-submission.csv", index=False
    )
    items = collect_inputs(root)
    assert items.ids == ["b.jpg", "a.jpg"]
    assert items.sample_submission == root / "sample-submission.csv"
    # the real photos, labelled through their train.csv, mapped to the model's classes
    match = LabelMatcher(list(range(10)), [str(i) for i in range(10)])
    labelled = collect_inputs(sfdl_photos, labelled=True, match=match)
    assert len(labelled) == 38 and set(labelled.labels) == set(range(10))


def test_labels_by_class_folder_name_or_value(tmp_path):
    for cls in ("Niva", "5", "Приора"):
        _img(tmp_path / "data" / cls / f"{cls}.jpg")
    items = collect_inputs(tmp_path / "data", labelled=True, match=MATCH)
    by_id = dict(zip(items.ids, items.labels, strict=True))
    assert by_id == {"5/5.jpg": 2, "Niva/Niva.jpg": 2, "Приора/Приора.jpg": 0}


def test_csv_list_with_and_without_labels(tmp_path):
    _img(tmp_path / "p" / "1.jpg")
    _img(tmp_path / "p" / "2.jpg")
    csv = tmp_path / "list.csv"
    pd.DataFrame({"path": ["p/1.jpg", "p/2.jpg"], "label": ["Niva", "3"]}).to_csv(csv, index=False)
    plain = collect_inputs(csv)
    assert plain.paths == [str(tmp_path / "p" / "1.jpg"), str(tmp_path / "p" / "2.jpg")]
    assert collect_inputs(csv, labelled=True, match=MATCH).labels.tolist() == [2, 1]


def test_labels_csv_partial_and_unknown(tmp_path, caplog):
    for i in range(3):
        _img(tmp_path / "t" / f"{i}.jpg")
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"Id": ["0.jpg", "2.jpg"], "Category": [5, 0]}).to_csv(labels, index=False)
    items = collect_inputs(tmp_path / "t", labels_csv=labels, match=MATCH)
    np.testing.assert_array_equal(items.labels, [2, -1, 0])
    assert "1 of 3 input images have no label" in caplog.text
    pd.DataFrame({"Id": ["0.jpg"], "Category": [7]}).to_csv(labels, index=False)
    with pytest.raises(DataError, match=r"labels \['7'\] are not classes of this model"):
        collect_inputs(tmp_path / "t", labels_csv=labels, match=MATCH)
    pd.DataFrame({"Id": ["zzz.jpg"], "Category": [0]}).to_csv(labels, index=False)
    with pytest.raises(DataError, match="none of its ids match"):
        collect_inputs(tmp_path / "t", labels_csv=labels, match=MATCH)


def test_missing_or_empty_inputs_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        collect_inputs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        collect_inputs(tmp_path / "empty")
    with pytest.raises(DataError, match="evaluation needs labels"):
        collect_inputs(tmp_path / "empty", labelled=True, match=MATCH)
