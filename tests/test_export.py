"""ONNX export: parity with PyTorch on real photos, metadata, int8, checkpoints, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import onnx
import pytest
import torch
from test_serve_helpers import (
    PHOTOS,
    photo_paths,
    tiny_bundle,
    tiny_export_report,
    tiny_meta,
    tiny_net,
)

from carclf.errors import ModelError
from carclf.export import INT8_FILE, ONNX_FILE, export_model
from carclf.export.__main__ import main
from carclf.inference import Classifier, OnnxBackend
from carclf.inference.onnx_backend import THREADS_ENV
from carclf.models.bundle import is_bundle, read_meta


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


def test_onnx_file_carries_contract_and_dynamic_batch(bundle):
    model = onnx.load(str(bundle / ONNX_FILE))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 96, 96]
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    meta = read_meta(bundle)
    assert props["image_size"] == meta.image_size == 96
    assert props["mean"] == meta.mean and props["std"] == meta.std
    assert props["resize"] == meta.resize
    assert props["class_names"] == meta.class_names
    assert props["class_names_local"][0] == "Приора"


def test_export_matches_pytorch_on_real_photos(tmp_path_factory):
    report = tiny_export_report(tmp_path_factory)
    fp32 = next(p for p in report.parity if p.model == ONNX_FILE)
    int8 = next(p for p in report.parity if p.model == INT8_FILE)
    assert report.ok and fp32.images == 16 and int8.images == 16
    assert fp32.top1_identical and fp32.max_abs_diff < 1e-4
    text = report.format()
    assert "top-1 identical (16/16)" in text and "photos from" in text and INT8_FILE in text


def test_int8_model_is_smaller_and_runs(bundle):
    fp32, int8 = bundle / ONNX_FILE, bundle / INT8_FILE
    assert int8.stat().st_size < 0.45 * fp32.stat().st_size
    props = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert "static" in props["quantization"] and json.loads(props["image_size"]) == 96
    photos = Classifier.load(bundle, backend="torch").preprocess
    batch = torch.stack([photos(p) for p in photo_paths()[:3]])
    logits = OnnxBackend(int8)(batch)
    reference = OnnxBackend(fp32)(batch)
    assert logits.shape == (3, 10) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    # int8 error is far below the spread of the logits themselves
    assert (logits - reference).abs().mean() < 0.5 * reference.std()


def test_dynamic_int8_method(tmp_path, bundle):
    export_model(bundle, images=[PHOTOS], num_images=4, out=tmp_path / "b", int8=True,
                 int8_method="dynamic")  # fmt: skip
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "b" / INT8_FILE)).metadata_props}
    assert json.loads(props["quantization"]) == "int8 dynamic"


def test_classifier_uses_onnx_runtime_with_same_answers(bundle):
    ort_clf = Classifier.load(bundle)
    torch_clf = Classifier.load(bundle, backend="torch")
    assert isinstance(ort_clf.backend, OnnxBackend)
    paths = photo_paths()[:6]
    a, b = ort_clf.predict_proba(paths), torch_clf.predict_proba(paths)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert [p.top[0].name for p in ort_clf.predict(paths)] == [
        p.top[0].name for p in torch_clf.predict(paths)
    ]


def test_run_folder_with_only_a_checkpoint_gets_a_bundle(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    net, meta = tiny_net(), tiny_meta()
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save(
        {"hyper_parameters": {"meta": asdict(meta)}, "state_dict": state},
        run / "checkpoints" / "best.ckpt",
    )
    report = export_model(run, images=[PHOTOS], num_images=4)
    assert report.wrote_bundle and report.bundle == run / "bundle"
    assert is_bundle(run / "bundle") and (run / "bundle" / ONNX_FILE).is_file()
    assert report.ok


def test_failed_parity_removes_the_file(tmp_path, bundle, monkeypatch):
    import carclf.export.pipeline as pipeline

    real = pipeline.onnx_logits
    monkeypatch.setattr(pipeline, "onnx_logits", lambda path, batch: real(path, batch) + 1.0)
    with pytest.raises(ModelError, match="disagrees with PyTorch"):
        export_model(bundle, images=[PHOTOS], num_images=2, out=tmp_path / "b")
    assert not (tmp_path / "b" / ONNX_FILE).exists()


def test_int8_without_photos_says_what_to_pass(tmp_path, bundle):
    with pytest.raises(ModelError, match="--images"):
        export_model(bundle, int8=True, out=tmp_path / "b")


def test_synthetic_parity_without_photos(tmp_path, bundle):
    report = export_model(bundle, out=tmp_path / "b")
    assert report.ok and "synthetic" in report.samples


def test_threads_env(monkeypatch, bundle):
    monkeypatch.setenv(THREADS_ENV, "1")
    assert OnnxBackend(bundle / ONNX_FILE).threads == 1
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ModelError, match=THREADS_ENV):
        OnnxBackend(bundle / ONNX_FILE)


def test_wrong_input_size_is_a_clear_error(bundle):
    with pytest.raises(ModelError, match="exported for 96x96"):
        OnnxBackend(bundle / ONNX_FILE)(torch.zeros(1, 3, 128, 128))


def test_corrupt_onnx_file_is_a_clear_error(tmp_path):
    bad = tmp_path / ONNX_FILE
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        OnnxBackend(bad)


@pytest.mark.slow
def test_cli_module(tmp_path, bundle):
    ok = subprocess.run(
        [sys.executable, "-m", "carclf.export", str(bundle), "--images", str(PHOTOS)]
        + ["--num-images", "4", "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "model.onnx" in ok.stdout and "top-1 identical (4/4)" in ok.stdout


def test_cli_errors_are_one_line(tmp_path, bundle, capsys):
    # bad input exits 2, as in every carclf command (it was 1 before issue 21)
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no such model" in err and "Traceback" not in err
    assert main([str(bundle), "--int8", "--out", str(tmp_path / "c")]) == 2
    assert "--images" in capsys.readouterr().err
