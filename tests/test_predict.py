"""predict.py and its library: submissions in sample order, TTA, bundles, bad inputs, evaluation.

The model is an untrained-head Lite0 bundle at 64 px: meaningless answers, but deterministic, which
is all plumbing tests need.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize
from PIL import Image

from carclf.data.classmaps import SFDL_CLASSES
from carclf.evaluate.config import register_configs
from carclf.evaluate.run import evaluate, main, predict
from carclf.evaluate.submission import read_sample_submission, submission_frame, write_csv
from carclf.inference import Classifier
from carclf.inference.files import infer_paths
from carclf.models import build_net
from carclf.models.bundle import BundleMeta, save_bundle

ROOT = Path(__file__).resolve().parents[1]
N_FAKE = 20


def _meta(**kw) -> BundleMeta:
    return BundleMeta(
        backbone="tf_efficientnet_lite0",
        class_names=[n for n, _ in SFDL_CLASSES],
        class_names_local=[loc for _, loc in SFDL_CLASSES],
        image_size=64,
        mean=[0.5] * 3,
        std=[0.5] * 3,
        temperature=1.5,
        **kw,
    )


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_net("tf_efficientnet_lite0", 10, weights="offline").eval()


@pytest.fixture(scope="module")
def run_dir(net, tmp_path_factory) -> Path:
    """A training-run-like folder: the bundle lives in <run>/bundle."""
    run = tmp_path_factory.mktemp("run")
    save_bundle(net, _meta(), run / "bundle")
    return run


@pytest.fixture(scope="module")
def bundle(run_dir) -> Path:
    return run_dir / "bundle"


def _jpeg(path: Path, seed: int, size=(48, 72)) -> None:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    arr[:, : size[1] // 3] //= 3  # asymmetric, so the mirrored view differs
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)


@pytest.fixture(scope="module")
def test_upload(sfdl_meta, tmp_path_factory) -> tuple[Path, list[str], list[str]]:
    """Tiny JPEGs for the first ids of the real sample submission, plus two broken files."""
    folder = tmp_path_factory.mktemp("test_upload")
    ids = pd.read_csv(sfdl_meta / "sample-submission.csv")["Id"].tolist()
    good, bad = ids[:N_FAKE], ids[N_FAKE : N_FAKE + 2]
    for i, name in enumerate(good):
        _jpeg(folder / name, i)
    (folder / bad[0]).write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (folder / bad[1]).write_bytes(b"")
    return folder, good, bad


def _cfg(**overrides):
    register_configs(ROOT / "conf")
    args = [f"{k}={v}" for k, v in {"progress": False, "num_workers": 0, **overrides}.items()]
    with initialize(version_base="1.3", config_path=None):
        return compose("predict", overrides=args)


def test_submission_writer_keeps_every_id_of_the_real_sample_submission(sfdl_meta, tmp_path):
    sample = read_sample_submission(sfdl_meta / "sample-submission.csv")
    ids = sample["Id"].tolist()
    assert len(ids) == 6675
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(ids)
    predictions = {i: int(rng.integers(0, 10)) for i in shuffled[3:]}  # 3 ids unpredicted
    frame, filled = submission_frame(sample, predictions, fallback=7)
    out = pd.read_csv(write_csv(frame, tmp_path / "sub.csv"), dtype=str)
    assert list(out.columns) == ["Id", "Category"]
    assert out["Id"].tolist() == ids
    assert sorted(filled) == sorted(shuffled[:3])
    expected = [str(predictions.get(i, 7)) for i in ids]
    assert out["Category"].tolist() == expected


def test_predict_follows_the_real_sample_submission(bundle, test_upload, sfdl_meta, tmp_path):
    folder, good, bad = test_upload
    out = tmp_path / "sub.csv"
    res = predict(
        _cfg(
            model=bundle,
            input=folder,
            sample_submission=sfdl_meta / "sample-submission.csv",
            output=out,
            tta="none",
        )
    )
    sample = pd.read_csv(sfdl_meta / "sample-submission.csv", dtype=str)
    sub = pd.read_csv(out, dtype=str)
    assert sub["Id"].tolist() == sample["Id"].tolist()  # every id, in order, even without images
    clf = Classifier.load(bundle)
    top1 = [p.top[0].label for p in clf.predict([folder / i for i in good], tta="none")]
    assert sub.set_index("Id").loc[good, "Category"].tolist() == [str(t) for t in top1]
    assert set(bad) <= set(res.filled) and len(res.filled) == 6675 - N_FAKE
    topk = pd.read_csv(res.topk, dtype=str, keep_default_na=False)
    assert len(topk) == N_FAKE + 2
    errors = topk.set_index("Id")["error"]
    assert errors[bad[0]] and "empty" in errors[bad[1]]
    assert (errors[good] == "").all()
    assert {"label_1", "name_1", "prob_1", "label_3", "prob_3"} <= set(topk.columns)


def test_a_reloaded_bundle_gives_identical_outputs(net, bundle, test_upload, tmp_path):
    folder, good, _ = test_upload
    paths = [folder / i for i in good[:6]]
    in_memory = Classifier(net, _meta(), device="cpu").predict_proba(paths)
    loaded = Classifier.load(bundle, device="cpu")
    np.testing.assert_array_equal(loaded.predict_proba(paths), in_memory)
    again = Classifier.load(save_bundle(loaded.net, loaded.meta, tmp_path / "again"))
    np.testing.assert_array_equal(
        again.predict_proba(paths, tta="hflip"), loaded.predict_proba(paths, tta="hflip")
    )


def test_classifier_tta_merges_the_mirrored_view(bundle, test_upload):
    folder, good, _ = test_upload
    clf = Classifier.load(bundle, tta="hflip")
    x = clf.preprocess(folder / good[0])[None]
    logits = (clf.logits(x) + clf.logits(x.flip(-1))) / 2
    expected = torch.softmax(logits / clf.temperature, dim=1).numpy()
    np.testing.assert_allclose(clf.predict_proba([folder / good[0]]), expected, atol=1e-6)
    plain = clf.predict_proba([folder / good[0]], tta="none")
    assert not np.allclose(plain, expected)
    pred = clf.predict(folder / good[0], top_k=3)[0]
    assert len(pred.top) == 3 and pred.top[0].probability == pytest.approx(expected.max(), abs=1e-6)


def test_loader_inference_matches_in_process_predict(bundle, test_upload):
    folder, good, bad = test_upload
    paths = [str(folder / i) for i in [*good[:5], bad[0], *good[5:12]]]
    clf = Classifier.load(bundle)
    res = infer_paths(clf, paths, "multiscale", batch_size=4, num_workers=2)
    assert list(res.errors) == [5] and res.logits.shape == (13, 2, 10)
    probs = clf.probabilities(torch.from_numpy(res.logits)).numpy()
    np.testing.assert_allclose(probs, clf.predict_proba(paths, tta="multiscale"), atol=1e-5)


def _kaggle_dataset(root: Path, classes=(0, 3, 5), per_class=3) -> Path:
    rows = []
    for c in classes:
        for i in range(per_class):
            name = f"{c}_{i}.jpg"
            _jpeg(root / "train" / str(c) / name, 100 * c + i)
            rows.append((name, c))
    (root / "train" / "0" / "broken.jpg").write_bytes(b"garbage")
    rows.append(("broken.jpg", 0))
    pd.DataFrame(rows, columns=["Id", "Category"]).to_csv(root / "train.csv", index=False)
    return root


def test_evaluate_a_kaggle_folder_writes_a_consistent_report(bundle, tmp_path):
    data = _kaggle_dataset(tmp_path / "data")
    metrics = evaluate(
        _cfg(model=bundle, input=data, evaluate=True, output=tmp_path / "ev.csv", tta="hflip")
    )
    topk = pd.read_csv(tmp_path / "ev_topk.csv", keep_default_na=False)
    scored = topk[topk["error"] == ""]
    assert metrics["num_images"] == 10 and metrics["num_scored"] == 9
    assert metrics["num_unreadable"] == 1
    assert metrics["accuracy"] == pytest.approx(scored["correct"].astype(str).eq("True").mean())
    report = Path(metrics["report"])
    assert report == tmp_path / "ev_report" / "report.html"
    assert "Нива" in report.read_text(encoding="utf-8")  # local names of the model's classes


def test_labels_csv_is_matched_by_id_and_checked(bundle, test_upload, tmp_path):
    folder, good, _ = test_upload
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"Id": good, "Category": [i % 10 for i in range(len(good))]}).to_csv(
        labels, index=False
    )
    metrics = evaluate(
        _cfg(model=bundle, input=folder, labels=labels, output=tmp_path / "e.csv", tta="none")
    )
    assert metrics["num_scored"] == N_FAKE and metrics["num_unreadable"] == 2
    pd.DataFrame({"Id": good[:2], "Category": [0, 42]}).to_csv(labels, index=False)
    cfg = _cfg(model=bundle, input=folder, labels=labels, evaluate=True, output=tmp_path / "f.csv")
    assert main(cfg) == 2  # a clear error, not a traceback


def test_bad_settings_are_one_line_errors(bundle, test_upload, tmp_path, capsys):
    folder, _, _ = test_upload
    assert main(_cfg(model=tmp_path / "nope", input=folder, output=tmp_path / "s.csv")) == 2
    assert "no such model" in capsys.readouterr().err
    cfg = _cfg(model=bundle, input=folder, output=tmp_path / "s.csv", **{"tta.merge": "max"})
    assert main(cfg) == 2
    assert "tta: cannot build" in capsys.readouterr().err
    assert main(_cfg(model=bundle, input=tmp_path / "missing", output=tmp_path / "s.csv")) == 2
    assert "no such file or folder" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_on_a_zip_and_a_run_dir(run_dir, test_upload, tmp_path):
    """The exact command `make demo` runs, with a zipped test folder; then a bad one."""
    folder, good, bad = test_upload
    archive = tmp_path / "test.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in [*good, *bad]:
            zf.write(folder / name, f"test_upload/{name}")
    sample = tmp_path / "sample-submission.csv"
    order = [*reversed(good), *bad, "no-such-image.jpg"]
    pd.DataFrame({"Id": order, "Category": 0}).to_csv(sample, index=False)
    out = tmp_path / "out" / "submission.csv"
    cmd = [sys.executable, "predict.py", f"model={run_dir}", f"input={archive}"]
    cmd += [f"sample_submission={sample}", f"output={out}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert pd.read_csv(out)["Id"].tolist() == order
    assert (tmp_path / "out" / "submission_topk.csv").is_file()
    assert "unreadable" in done.stderr + done.stdout
    shutil.rmtree(tmp_path / "out")
    bad_cmd = [*cmd[:2], f"model={tmp_path / 'nope'}", *cmd[3:]]
    failed = subprocess.run(bad_cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2
    assert "error:" in failed.stderr and "Traceback" not in failed.stderr


@pytest.mark.slow
def test_an_onnx_bundle_runs_multiscale_through_torch(net, bundle, test_upload, tmp_path, capsys):
    """model.onnx takes one input size: TTA at other sizes falls back to torch (auto) or says why."""
    onnx_export = pytest.importorskip("carclf.export.onnx")
    from carclf.errors import ModelError

    folder, good, _ = test_upload
    with_onnx = tmp_path / "bundle"
    shutil.copytree(bundle, with_onnx)
    onnx_export.export_onnx(net, _meta(), with_onnx / "model.onnx")
    clf = Classifier.load(with_onnx)
    assert clf.backend.name == "onnx"
    with pytest.raises(ModelError, match="takes 64x64 px only"):
        clf.tta_preset("multiscale")
    assert len(clf.tta_preset("hflip")) == 2
    res = predict(_cfg(model=with_onnx, input=folder, output=tmp_path / "a.csv", tta="multiscale"))
    assert res.classifier.backend.name == "torch"
    reference = Classifier.load(bundle).predict_proba(res.items.paths, tta="multiscale")
    np.testing.assert_allclose(res.probs, reference, atol=1e-5)
    cfg = _cfg(model=with_onnx, input=folder, output=tmp_path / "b.csv", backend="onnx")
    assert main(cfg) == 2 and "torch backend" in capsys.readouterr().err
