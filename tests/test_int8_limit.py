"""``--int8 --max-drop``: int8 is kept only within the limit, and consumers respect the verdict."""

from __future__ import annotations

import json

import pytest
from test_serve_helpers import PHOTOS, tiny_meta, tiny_net

from carclf.errors import DataError, ModelError
from carclf.export.__main__ import main
from carclf.export.pipeline import export_model
from carclf.inference import INT8_FILE, Classifier
from carclf.inference.onnx_backend import INT8_CHECK_FILE
from carclf.models.bundle import save_bundle

SIZE = 64


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """An untrained 10-class Lite0 at 64 px: int8 changes some of its near-tied answers."""
    folder = tmp_path_factory.mktemp("int8") / "bundle"
    meta = tiny_meta()
    meta.image_size = SIZE
    save_bundle(tiny_net(), meta, folder)
    return folder


def _export(plain, out, **kw):
    return export_model(plain, int8=True, images=[PHOTOS], num_images=16, out=out, **kw)


def test_measured_on_held_out_labelled_photos(plain, tmp_path):
    report = _export(plain, tmp_path / "b", max_drop=100.0)
    c = report.int8_check
    # sfdl-photos/train is a folder per class 0-9: labels the model knows; 16 went to calibration
    assert c.kept and c.fp32_accuracy is not None and c.int8_accuracy is not None
    assert c.photos == len(list(PHOTOS.glob("*/*.jpg"))) - 16
    assert c.loss == pytest.approx(100 * (c.fp32_accuracy - c.int8_accuracy), abs=1e-3)
    assert (tmp_path / "b" / INT8_FILE).is_file()
    saved = json.loads((tmp_path / "b" / INT8_CHECK_FILE).read_text())
    assert saved["kept"] and saved["photos"] == c.photos
    assert "kept: accuracy loss" in report.format()
    assert Classifier.load(tmp_path / "b", backend="int8").backend.path.name == INT8_FILE


def test_refused_below_the_measured_loss(plain, tmp_path, capsys):
    # One flat folder (links to the photos): no labels, so the loss is the share of changed top-1
    # answers, > 0 for this near-tied net. Links resolve to the calibration photos, which are
    # still left out.
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in PHOTOS.glob("*/*.jpg"):
        (flat / f"{p.parent.name}-{p.name}").symlink_to(p)
    probe = _export(plain, tmp_path / "probe", max_drop=100.0, holdout=[flat])
    assert probe.int8_check.fp32_accuracy is None
    assert probe.int8_check.photos == len(list(flat.iterdir())) - 16
    flips = 100 * (1 - probe.int8_check.agreement)
    assert flips > 0, "int8 changed no answer: the refusal would not be tested"
    limit = round(flips / 2, 2)
    out = tmp_path / "b"
    code = main([str(plain), "--int8", "--images", str(PHOTOS), "--num-images", "16",
                 "--holdout", str(flat), "--max-drop", str(limit), "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    assert "REFUSED" in captured.out and f"over the limit of {limit:g}" in captured.out
    assert "int8 model refused" in captured.err
    assert not (out / INT8_FILE).exists() and (out / "model.onnx").is_file()
    assert json.loads((out / INT8_CHECK_FILE).read_text())["kept"] is False
    # the service and the batch job load models with Classifier.load: int8 is refused, with why
    with pytest.raises(ModelError, match="refused the int8 model .* limit"):
        Classifier.load(out, backend="int8")
    assert Classifier.load(out).backend.name == "onnx"  # fp32 still serves


def test_limit_needs_int8_and_held_out_photos(plain, tmp_path):
    with pytest.raises(ModelError, match="pass --int8"):
        export_model(plain, images=[PHOTOS], out=tmp_path / "a", max_drop=1.0)
    with pytest.raises(DataError, match="no held-out photos"):
        export_model(plain, int8=True, images=[PHOTOS / "0"], num_images=50,
                     out=tmp_path / "b", max_drop=1.0)  # fmt: skip
