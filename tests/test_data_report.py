"""Dataset report on a small copy of real photos with planted duplicates, leakage and a corrupt file;
``data.exclude``; the report a training run writes."""

from __future__ import annotations

import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from carclf.data.exclude import apply_exclude
from carclf.data.layouts import read_dataset
from carclf.errors import DataError
from carclf.inspect.report import main, read_for_report, write_report

CLASSES = ("0", "12", "24")  # Hummer, Bugatti-like sports car, a sedan: any three distinct folders


def _reencode(src: Path, dst: Path, scale: float = 1.0, crop: float = 0.0, quality: int = 70):
    img = Image.open(src).convert("RGB")
    w, h = img.size
    img = img.crop((int(w * crop), int(h * crop), int(w * (1 - crop)), int(h * (1 - crop))))
    img = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    dst.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def planted(stanford, tmp_path_factory) -> dict:
    """train/<class>/ with 4 real photos each, test/ with 3 others, and planted problems."""
    root = tmp_path_factory.mktemp("report") / "cars"
    originals = {}
    for c in CLASSES:
        photos = sorted((stanford / "train" / c).glob("*.jpg"))
        (root / "train" / c).mkdir(parents=True)
        for p in photos[:4]:
            shutil.copy(p, root / "train" / c / p.name)
        originals[c] = photos
    (root / "test").mkdir()
    for c in CLASSES:
        shutil.copy(originals[c][6], root / "test" / f"t_{originals[c][6].name}")
    a, b, c = (originals[k][0] for k in CLASSES)
    # Leakage: a train photo copied byte for byte into test, and a half-size re-encoded one.
    shutil.copy(a, root / "test" / "exact_copy.jpg")
    _reencode(b, root / "test" / "smaller_copy.jpg", scale=0.5, quality=60)
    # Inside train: a copy of a photo cropped by 2% per side, re-encoded, in another class.
    _reencode(c, root / "train" / CLASSES[0] / "cropped_copy.jpg", crop=0.02, quality=85)
    # A truncated JPEG.
    data = originals[CLASSES[1]][5].read_bytes()
    (root / "train" / CLASSES[1] / "broken.jpg").write_bytes(data[: len(data) // 3])
    return {"root": root, "a": a, "b": b, "c": c}


@pytest.fixture(scope="module")
def built(planted, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("report-out")
    index, notes = read_for_report(planted["root"])
    report, check = write_report(index, out, notes=notes, workers=2)
    return {"out": out, "report": report, "check": check, "root": planted["root"], **planted}


def _names(pairs, key):
    return {(Path(p["a"]).name, Path(p["b"]).name) for p in pairs if p["scope"] == key}


def test_counts_and_unreadable(built):
    r = built["report"]
    assert r["counts"]["train"] == 13  # 3 x 4 real + the cropped copy (the broken file left out)
    assert r["counts"]["test_unlabelled"] == 5
    assert r["class_counts"] == {"0": 5, "12": 4, "24": 4}
    assert r["imbalance_ratio"] == 1.25
    [bad] = r["unreadable"]
    assert bad["path"].endswith("broken.jpg") and "decode" in bad["error"]
    hist = r["histograms"]["width"]
    assert sum(hist["counts"]) == 18 and len(hist["edges"]) == len(hist["counts"]) + 1


def test_duplicates_and_leakage_found(built):
    r = built["report"]
    a, b, c = (built[k].name for k in "abc")
    assert _names(r["exact_duplicates"]["pairs"], "train/test") == {(a, "exact_copy.jpg")}
    near = r["near_duplicates"]["pairs"]
    assert _names(near, "train/test") == {(b, "smaller_copy.jpg")}
    # The cropped copy is found inside train; no other pair of different cars is.
    inside = _names(near, "train")
    assert inside in ({(c, "cropped_copy.jpg")}, {("cropped_copy.jpg", c)})
    assert len(near) == 2
    assert r["exact_duplicates"]["by_scope"] == {"train/test": 1, "train": 0, "test": 0}


class _Assets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href") and v and not v.startswith(("data:", "#")):
                self.refs.append(v)


def test_html_is_self_contained(built):
    text = (built["out"] / "report.html").read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    parser = _Assets()
    parser.feed(text)
    assert parser.refs == []
    assert "script" not in parser.tags and "link" not in parser.tags
    assert parser.tags.count("img") >= 3 * 4 + 4  # sample grid + the duplicate pairs
    for section in ("Photos per class", "Image sizes", "Duplicates and leakage", "broken.jpg"):
        assert section in text
    saved = json.loads((built["out"] / "report.json").read_text())
    assert saved["near_duplicates"] == built["report"]["near_duplicates"]
    assert json.loads((built["out"] / "data_check.json").read_text())["num_train"] == 13


def test_cli_and_one_class_and_no_labels(stanford, tmp_path, capsys):
    one = tmp_path / "one" / "Hummer"
    one.mkdir(parents=True)
    for p in sorted((stanford / "train" / "0").glob("*.jpg"))[:3]:
        shutil.copy(p, one / p.name)
    assert main([str(tmp_path / "one"), "--out", str(tmp_path / "r1"), "--doctor"]) == 0
    r = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert "Only one class" in r["notes"][0] and r["doctor"] == {"skipped": "fewer than 2 classes"}
    assert "Only one class" in (tmp_path / "r1" / "report.html").read_text()

    loose = tmp_path / "loose"
    loose.mkdir()
    for p in sorted((stanford / "test_upload").glob("*.jpg"))[:3]:
        shutil.copy(p, loose / p.name)
    assert main([str(loose), "--out", str(tmp_path / "r2")]) == 0
    r = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert r["counts"] == {
        "train": 0,
        "test_unlabelled": 3,
        "unreadable": 0,
        "missing": 0,
        "unlisted": 0,
    }
    assert r["notes"][0].startswith("No labels")
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "r3")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_exclude_removes_exactly_the_listed_photos(built, tmp_path):
    index = read_dataset(built["root"])
    listed = index.train["path"].iloc[[1, 5]].tolist()
    csv = tmp_path / "issues.csv"
    pd.DataFrame({"path": listed, "given_label": ["x", "y"]}).to_csv(csv, index=False)
    kept = apply_exclude(index, csv)
    assert len(kept.train) == len(index.train) - 2
    assert set(index.train["path"]) - set(kept.train["path"]) == set(listed)
    assert len(kept.test) == len(index.test)

    by_id = tmp_path / "ids.csv"
    pd.DataFrame({"id": [index.train["id"].iloc[0]]}).to_csv(by_id, index=False)
    assert len(apply_exclude(index, by_id).train) == len(index.train) - 1

    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.jpg,1\n")
    with pytest.raises(DataError, match=r"bad\.csv.*'path' or an 'id' column"):
        apply_exclude(index, bad)
    other = tmp_path / "other.csv"
    other.write_text("path\n/elsewhere/a.jpg\n")
    with pytest.raises(DataError, match=r"other\.csv: none of its 1 photos"):
        apply_exclude(index, other)
    with pytest.raises(DataError, match="missing.csv: no such file"):
        apply_exclude(index, tmp_path / "missing.csv")


@pytest.mark.slow  # imports the whole training stack (Lightning, timm)
def test_training_run_writes_the_report(built, tmp_path):
    from hydra import compose, initialize_config_dir

    import carclf.config  # noqa: F401  (registers the train_schema)
    from carclf.inspect.report import write_run_report

    root = Path(__file__).resolve().parents[1]
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["data.path=x", "data.exclude=a.csv"])
    assert cfg.data.report == "cheap" and cfg.data.exclude == "a.csv"
    index = read_dataset(built["root"])
    bad = write_run_report(index, tmp_path, "cheap").bad_paths
    assert [Path(p).name for p in bad] == ["broken.jpg"]
    for name in ("report.html", "report.json", "data_check.json"):
        assert (tmp_path / name).is_file()
