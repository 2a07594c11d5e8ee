"""Robust decoding and the data check, on corrupt and unusual files made here."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from carclf.data.check import check, main
from carclf.data.images import load_rgb
from carclf.errors import ImageDecodeError


def _jpeg(arr, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.fixture()
def photo(sfdl_photos) -> bytes:
    return sorted((sfdl_photos / "train" / "0").glob("*.jpg"))[0].read_bytes()


def test_real_photo_decodes(photo):
    arr = load_rgb(photo)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3


def test_truncated_zero_and_text_are_errors(photo, tmp_path):
    for name, data, reason in [
        ("trunc.jpg", photo[: len(photo) // 2], "cannot decode"),
        ("zero.jpg", b"", "empty file"),
        ("text.jpg", b"this is not an image\n" * 10, "not an image"),
    ]:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ImageDecodeError, match=reason) as e:
            load_rgb(p)
        assert str(p) in str(e.value)


def test_modes_convert_to_rgb():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent -> composited on white
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    assert load_rgb(buf.getvalue())[0, 0].tolist() == [255, 255, 255]

    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG")
    r, g, b = load_rgb(buf.getvalue())[4, 4].tolist()
    assert r > 200 and g < 60 and b < 60

    sixteen = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    buf = io.BytesIO()
    sixteen.save(buf, "PNG")
    assert load_rgb(buf.getvalue())[0, 0].tolist() == [255, 255, 255]

    pal = Image.new("P", (8, 8))
    pal.putpalette([0, 0, 255] * 256)
    buf = io.BytesIO()
    pal.save(buf, "GIF")
    assert load_rgb(buf.getvalue())[0, 0].tolist() == [0, 0, 255]

    gray = Image.new("L", (8, 8), 77)
    buf = io.BytesIO()
    gray.save(buf, "PNG")
    assert load_rgb(buf.getvalue())[0, 0].tolist() == [77, 77, 77]


def test_exif_orientation_applied():
    arr = np.zeros((20, 40, 3), np.uint8)  # landscape 40x20
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    assert load_rgb(buf.getvalue()).shape[:2] == (40, 20)


def test_decompression_bomb_refused():
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")
    with pytest.raises(ImageDecodeError, match="over the limit|decompression bomb"):
        load_rgb(buf.getvalue())
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, "PNG")  # 81 MP: under PIL's own limit, over ours
    with pytest.raises(ImageDecodeError, match="over the limit"):
        load_rgb(buf.getvalue())


def test_data_check_reports_and_json(sfdl_photos, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(sfdl_photos, root)
    victim = sorted((root / "train" / "1").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:300])  # truncated
    zero = sorted((root / "train" / "2").glob("*.jpg"))[0]
    zero.write_bytes(b"")
    dup_src = sorted((root / "train" / "3").glob("*.jpg"))[0]
    shutil.copy(dup_src, root / "train" / "4" / "copy.jpg")
    with open(root / "train.csv", "a") as f:
        f.write("copy.jpg,4\nghost.jpg,5\n")
    (root / "train" / "5" / "unlisted.jpg").write_bytes(dup_src.read_bytes())

    report = check(root)
    assert report.num_classes == 10
    assert report.num_train == 38 + 1 - 2  # +copy, -truncated, -zero-byte; ghost is missing
    assert sorted(report.bad_paths) == sorted([str(victim), str(zero)])
    assert any("empty file" in b["error"] for b in report.bad_files)
    assert report.missing_files == [str(root / "train" / "5" / "ghost.jpg")]
    assert report.unlisted_files == [str(root / "train" / "5" / "unlisted.jpg")]
    assert [sorted(g) for g in report.conflicting_duplicates] == [
        sorted([str(dup_src), str(root / "train" / "4" / "copy.jpg")])
    ]

    assert main([str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"num_classes", "num_train", "num_test", "bad_files"} <= set(out)
    assert main([str(root)]) == 0
    assert "unreadable files (skipped): 2" in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_stanford_check_numbers(stanford, capsys):
    assert main([str(stanford), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["num_classes"], out["num_train"], out["num_test"], out["bad_files"]) == (
        49,
        1428,
        617,
        [],
    )
