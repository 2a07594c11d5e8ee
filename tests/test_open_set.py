"""Open-set rejection ("I don't know this car"): score and threshold maths on synthetic cases with
known answers, the bundle round trip, an old bundle, ONNX and int8, the service, the batch
stage, and a tiny real training run whose bundle predict.py uses."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY
from fastapi.testclient import TestClient
from test_serve_helpers import photo_paths, tiny_bundle

from carclf.errors import ConfigError
from carclf.evaluate.metrics import auroc, roc_curve
from carclf.inference import Classifier
from carclf.inference.open_set import (
    OPEN_SET_FILE,
    OpenSet,
    OpenSetConfig,
    check_config,
    energy_score,
    fit_open_set,
    fit_threshold,
    knn_score,
    l2_normalize,
    load_open_set,
    msp_score,
    stratified_sample,
)
from carclf.models.bundle import load_bundle, read_meta, save_bundle


# -- maths on synthetic cases with known answers ----------------------------------------------------
def test_threshold_keeps_exactly_the_share_asked_for():
    scores = np.random.default_rng(0).permutation(100).astype(float)  # 0..99 shuffled
    t = fit_threshold(scores, 0.95)
    assert t == 5.0 and (scores >= t).sum() == 95  # the 5 lowest are rejected
    assert fit_threshold(scores, 0.9) == 10.0
    # 1 - 0.9 is 0.0999...: 10 scores at keep 0.9 still reject exactly one
    assert fit_threshold(np.arange(10.0), 0.9) == 1.0
    # 7 scores at 0.95: floor(0.35) = 0 rejected, all kept (never fewer than asked)
    assert fit_threshold(np.arange(7.0), 0.95) == 0.0
    # ties at the threshold are accepted: at least `keep` is kept
    assert (
        np.array([1, 2, 2, 2, 3.0]) >= fit_threshold(np.array([1, 2, 2, 2, 3.0]), 0.5)
    ).sum() == 4
    with pytest.raises(ValueError):
        fit_threshold(scores, 1.0)


def test_scores_have_their_closed_forms():
    logits = np.array([[0.0, np.log(3.0)], [5.0, 5.0]])
    np.testing.assert_allclose(msp_score(logits), [0.75, 0.5])
    np.testing.assert_allclose(energy_score(logits), [np.log(4.0), 5.0 + np.log(2.0)])
    np.testing.assert_allclose(msp_score(logits * 2, temperature=2.0), [0.75, 0.5])
    bank = l2_normalize(np.eye(3, 8))
    q = np.stack([bank[0] * 7.0, np.eye(8)[5]])  # a bank row (scaled), an orthogonal vector
    np.testing.assert_allclose(knn_score(q, bank, k=1), [0.0, -np.sqrt(2.0)], atol=1e-6)
    # k=2: the second nearest of bank row 0 is orthogonal to it
    np.testing.assert_allclose(knn_score(q[:1], bank, k=2), [-np.sqrt(2.0)], atol=1e-6)


def test_hybrid_ranks_by_msp_behind_a_knn_gate():
    """Known answers: against validation msp 0.1..1.0 and knn -10..-1 with gate 0.2, a photo at
    msp 0.55 (5 of 10 lower) and knn -2.5 (8 of 10 lower) passes the gate and scores
    0.2 + 0.8 * 0.5; one at knn -9.5 (1 of 10 lower) is stopped at 0.1 whatever its msp."""
    from carclf.inference.open_set import hybrid_score

    val_msp, val_knn = np.linspace(0.1, 1.0, 10), np.arange(-10.0, 0.0)
    msp, knn = np.array([0.55, 2.0, 1.0, 0.0]), np.array([-2.5, 0.0, -9.5, 0.0])
    got = hybrid_score(msp, knn, val_msp, val_knn, gate=0.2)
    np.testing.assert_allclose(got, [0.6, 1.0, 0.1, 0.2])
    assert np.all(np.diff(hybrid_score(np.sort(msp), knn * 0, val_msp, val_knn)) >= 0)


def test_auroc_and_roc_match_known_answers_and_sklearn():
    assert auroc([2, 3, 4], [0, 1]) == 1.0
    assert auroc([0, 1], [2, 3, 4]) == 0.0
    assert auroc([1, 1], [1, 1, 1]) == 0.5
    assert auroc([1, 3], [2, 0]) == 0.75
    fpr, tpr = roc_curve([2, 3], [0, 1])
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert np.trapezoid(tpr, fpr) == pytest.approx(1.0)
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    known, unknown = rng.normal(1, 1, 300).round(1), rng.normal(0, 1, 200).round(1)  # ties
    y = np.r_[np.ones(300), np.zeros(200)]
    want = sklearn.roc_auc_score(y, np.r_[known, unknown])
    assert auroc(known, unknown) == pytest.approx(want, abs=1e-12)
    fpr, tpr = roc_curve(known, unknown)
    assert np.trapezoid(tpr, fpr) == pytest.approx(want, abs=1e-12)


def _clusters(rng, n_per: int, centres: np.ndarray, spread: float = 0.3):
    feats = np.concatenate(
        [c + spread * rng.normal(size=(n_per, centres.shape[1])) for c in centres]
    )
    labels = np.repeat(np.arange(len(centres)), n_per)
    return feats, labels


def test_fit_open_set_on_separable_clusters():
    """Four known classes as feature clusters, logits a linear read-out; unknown photos sit in
    a fifth cluster the model never saw. knn rejects them; the known keep rate is as asked."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16)) * 3
    w = centres[:4].T / 20  # logits = features . known centres (unsaturated softmax)
    train, _ = _clusters(rng, 50, centres[:4])
    val, val_y = _clusters(rng, 25, centres[:4])  # 100 validation photos
    test, test_y = _clusters(rng, 500, centres[:4])
    unknown, _ = _clusters(rng, 500, centres[4:])
    os_ = fit_open_set(val @ w, val_y, keep=0.9, features=val, bank=train, k=3)
    assert os_.score == "hybrid" and set(os_.thresholds) == {"msp", "energy", "knn", "hybrid"}
    for name, fig in os_.validation.items():
        assert fig["photos"] == 100 and fig["kept"] == pytest.approx(0.9), name
    kept = os_.score_of(test @ w, test) >= os_.threshold
    assert 0.85 < kept.mean() < 0.95  # new known photos: about the share asked for
    assert os_.unknown(os_.score_of(unknown @ w, unknown)).mean() > 0.99
    known_s, unknown_s = os_.scores(test @ w, test), os_.scores(unknown @ w, unknown)
    assert auroc(known_s["knn"], unknown_s["knn"]) > 0.99
    assert auroc(known_s["hybrid"], unknown_s["hybrid"]) > 0.98  # ties at percentile 0
    # without features: the logit scores only, msp by default
    logit_only = fit_open_set(val @ w, val_y, keep=0.9)
    assert logit_only.score == "msp" and set(logit_only.thresholds) == {"msp", "energy"}
    with pytest.raises(ConfigError, match="knn"):
        fit_open_set(val @ w, val_y, score="knn")


def test_stratified_bank_sample_keeps_every_class():
    labels = np.repeat([0, 1, 2], [600, 300, 100])
    pick = stratified_sample(labels, 100, seed=3)
    assert len(pick) == 100 and len(set(pick)) == 100
    assert np.bincount(labels[pick]).tolist() == [60, 30, 10]
    assert stratified_sample(labels[:50], 100).tolist() == list(range(50))


def test_keep_outside_0_1_is_a_config_error_naming_the_key():
    for keep in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"open_set\.keep"):
            check_config(OpenSetConfig(keep=keep))
    with pytest.raises(ConfigError, match=r"open_set\.score"):
        check_config(OpenSetConfig(score="magic"))
    check_config(OpenSetConfig())
    from test_staged_training import compose_train

    from carclf.train.run import check_settings

    cfg = compose_train(["data.path=x", "open_set.keep=1.2"])
    with pytest.raises(ConfigError, match=r"open_set\.keep=1\.2"):
        check_settings(cfg)


# -- bundles, backends and apps ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos():
    return photo_paths()


def _plain_outputs(clf: Classifier, paths) -> tuple[np.ndarray, np.ndarray]:
    batch = torch.stack([clf.preprocess(p) for p in paths])
    logits, feats = clf.view_outputs([batch], features=True)
    return logits[:, 0].numpy(), feats.numpy()


@pytest.fixture(scope="module")
def open_bundle(tmp_path_factory, photos):
    """The tiny serving bundle (ONNX with features) plus open-set data fitted on real photos:
    a bank from 20 photos, thresholds from 10 others (the head is untrained: plumbing only)."""
    src = tiny_bundle(tmp_path_factory)
    folder = tmp_path_factory.mktemp("open") / "bundle"
    net, meta = load_bundle(src)
    torch_clf = Classifier(net, meta, device="cpu")
    bank_logits, bank = _plain_outputs(torch_clf, photos[:20])
    val_logits, val_feats = _plain_outputs(torch_clf, photos[20:30])
    os_ = fit_open_set(val_logits, val_logits.argmax(1), keep=0.9, features=val_feats, bank=bank)
    meta.open_set = os_.meta_dict()
    save_bundle(net, meta, folder, arrays={OPEN_SET_FILE: os_.arrays()})
    from carclf.export.onnx import export_onnx

    export_onnx(net, meta, folder / "model.onnx")
    return folder


def test_bundle_round_trip_keeps_the_open_set(open_bundle):
    meta = read_meta(open_bundle)
    assert meta.open_set["score"] == "hybrid" and meta.open_set["bank_size"] == 20
    os_ = load_open_set(open_bundle, meta)
    assert os_.bank.shape == (20, 1280) and os_.keep == 0.9
    np.testing.assert_allclose(np.linalg.norm(os_.bank, axis=1), 1.0, atol=1e-2)
    assert sorted(os_.val_scores) == ["energy", "hybrid", "knn", "msp"]
    clf = Classifier.load(open_bundle, backend="torch")
    assert clf.open_set is not None and clf.needs_features


def test_onnx_gives_the_same_open_set_scores_as_pytorch(open_bundle, photos):
    torch_clf = Classifier.load(open_bundle, backend="torch")
    onnx_clf = Classifier.load(open_bundle)
    assert onnx_clf.backend.name == "onnx" and onnx_clf.backend.has_features
    paths = photos[30:]
    a, b = torch_clf.predict(paths), onnx_clf.predict(paths)
    np.testing.assert_allclose(
        [p.open_set_score for p in a], [p.open_set_score for p in b], atol=1e-4
    )
    assert [p.unknown for p in a] == [p.unknown for p in b]
    assert all(isinstance(p.unknown, bool) for p in a)


def test_an_old_onnx_file_without_features_falls_back_to_msp(open_bundle, tmp_path, caplog):
    """A model.onnx exported before open-set support has one output: msp, one log line."""
    import onnx

    folder = tmp_path / "b"
    shutil.copytree(open_bundle, folder)
    model = onnx.load(str(folder / "model.onnx"))
    del model.graph.output[1]
    onnx.save(model, str(folder / "model.onnx"))
    with caplog.at_level(logging.INFO, logger="carclf.inference.classifier"):
        clf = Classifier.load(folder)
    assert clf.open_set.score == "msp"
    assert sum("no penultimate features" in r.getMessage() for r in caplog.records) == 1
    assert clf.predict(photo_paths()[0]).pop().unknown is not None


def test_an_old_bundle_predicts_as_before(tmp_path_factory, photos, caplog, tmp_path):
    """No open-set data: loads, same answers, no unknown key, one log line."""
    src = tiny_bundle(tmp_path_factory)
    assert read_meta(src).open_set == {}
    old = tmp_path / "old"
    shutil.copytree(src, old)
    meta = json.loads((old / "meta.json").read_text())
    meta.pop("open_set")  # as written before the field existed
    (old / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.INFO, logger="carclf.inference.open_set"):
        clf = Classifier.load(old)
    assert clf.open_set is None
    assert sum("no open-set data" in r.getMessage() for r in caplog.records) == 1
    preds = clf.predict(photos[:3], top_k=3)
    assert all(p.unknown is None and "unknown" not in p.to_dict() for p in preds)
    again = Classifier.load(src).predict(photos[:3], top_k=3)
    assert [[s.index for s in p.top] for p in preds] == [[s.index for s in p.top] for p in again]


def _with_open_set(clf: Classifier, threshold: float) -> Classifier:
    clf.open_set = OpenSet("msp", 0.95, {"msp": threshold, "energy": 0.0})
    return clf


def test_the_service_says_unknown_with_the_closest_guesses(tmp_path_factory, photos):
    from carclf.serve import create_app

    data = photos[0].read_bytes()
    files = {"file": ("car.jpg", data, "image/jpeg")}
    clf = _with_open_set(Classifier.load(tiny_bundle(tmp_path_factory)), threshold=1.01)
    with TestClient(create_app(clf)) as c:
        body = c.post("/predict", files=files).json()
        assert body["label"] is None and body["unknown"] is True
        assert "not one of the 10 known models" in body["reason"]
        assert [t["rank"] for t in body["top"]] == [1, 2, 3, 4, 5]  # the closest guesses
        assert body["open_set_score"] < 1.01
        batch = c.post("/predict/batch", files=[("files", ("a.jpg", data, "image/jpeg"))])
        assert batch.json()["results"][0]["unknown"] is True
        ready = c.get("/ready").json()
        assert ready["open_set"] == {"score": "msp", "keep": 0.95, "threshold": 1.01}
        assert 'id="unknown"' in c.get("/").text  # the page's "not one of the N" box
    clf = _with_open_set(Classifier.load(tiny_bundle(tmp_path_factory)), threshold=0.0)
    with TestClient(create_app(clf)) as c:
        body = c.post("/predict", files=files).json()
        assert body["unknown"] is False and body["label"] == body["top"][0]["label"]
        assert "reason" not in body
    with TestClient(create_app(Classifier.load(tiny_bundle(tmp_path_factory)))) as c:
        body = c.post("/predict", files=files).json()  # no open-set data: as before
        assert not {"label", "unknown", "reason", "open_set_score"} & set(body)
        assert c.get("/ready").json()["open_set"] is None


def test_batch_engine_writes_the_flag(open_bundle, photos):
    from concurrent.futures import ThreadPoolExecutor

    from carclf.batch.engine import SCHEMA, Engine, predict_rows
    from carclf.batch.pipeline import model_spec

    spec = model_spec(open_bundle, "auto", "cpu", 3, draft=False)
    ids, paths = [p.name for p in photos[:4]], list(map(str, photos[:4]))
    with ThreadPoolExecutor(1) as pool:
        table = predict_rows(Engine(spec, 1), ids, paths, pool, batch_size=4)
    assert table.schema == SCHEMA
    want = Classifier.load(open_bundle).predict(photos[:4])
    df = table.to_pandas()
    assert df["unknown"].tolist() == [p.unknown for p in want]
    np.testing.assert_allclose(df["open_set_score"], [p.open_set_score for p in want], atol=1e-5)


def test_int8_keeps_the_threshold_only_when_its_check_passes(open_bundle, tmp_path, photos):
    from carclf.export.int8_check import Holdout, check_int8
    from carclf.export.quantize import quantize_int8
    from carclf.export.samples import photo_batch

    folder = tmp_path / "b"
    shutil.copytree(open_bundle, folder)
    meta = read_meta(folder)
    calib, _ = photo_batch(photos[:16], meta)
    q = quantize_int8(folder / "model.onnx", folder / "model.int8.onnx", "static", calib)
    assert Classifier.load(folder, backend="int8").open_set is None  # not checked yet
    holdout = Holdout([str(p) for p in photos[16:]], None, "sfdl")
    check = check_int8(folder / "model.onnx", q, meta, holdout, max_drop=100.0)
    assert check.open_set_changes is not None and check.open_set_kept
    assert "open-set threshold kept for int8" in check.format()
    assert Classifier.load(folder, backend="int8").open_set is not None
    data = json.loads((folder / "int8_check.json").read_text())
    data["open_set_kept"], data["open_set_changes"] = False, 12.5  # as a failed check writes it
    (folder / "int8_check.json").write_text(json.dumps(data))
    assert Classifier.load(folder, backend="int8").open_set is None


# -- a real training run ----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_tiny_training_run_fits_it_and_predict_writes_the_columns(synthetic, tmp_path):
    from test_staged_training import compose_train

    from carclf.evaluate.config import register_configs
    from carclf.evaluate.run import evaluate
    from carclf.train.run import train

    cfg = compose_train(
        [f"data.path={synthetic}", *TINY, "stages.head.epochs=1", "stages.top.epochs=1",
         "open_set.k=2", "data.val_fraction=0.25"]
    )  # fmt: skip
    metrics = train(cfg, tmp_path / "run")
    bundle = tmp_path / "run" / "bundle"
    meta = read_meta(bundle)
    assert meta.open_set["score"] == "hybrid" and meta.open_set["keep"] == 0.95
    assert (bundle / OPEN_SET_FILE).is_file() and meta.open_set["bank_size"] > 0
    assert set(meta.open_set["thresholds"]) == {"msp", "energy", "knn", "hybrid"}
    assert metrics["open_set_val_kept"] >= 0.95
    os_ = load_open_set(bundle, meta)
    assert len(os_.val_scores["hybrid"]) == meta.open_set["validation"]["hybrid"]["photos"]

    from conftest import ROOT
    from hydra import compose, initialize

    register_configs(ROOT / "conf")
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    for p in photo_paths()[:6]:  # real car photos of classes the synthetic model never saw
        shutil.copy(p, unknown / p.name)
    out = tmp_path / "eval" / "sub.csv"
    overrides = [f"model={tmp_path / 'run'}", f"input={synthetic}", f"output={out}",
                 f"unknown={unknown}", "progress=false", "num_workers=0", "tta=none"]  # fmt: skip
    with initialize(version_base="1.3", config_path=None):
        res = evaluate(compose("predict", overrides=overrides))
    topk = pd.read_csv(out.with_name("sub_topk.csv"))
    assert {"unknown", "open_set_score"} <= set(topk.columns)
    assert topk["unknown"].isin([True, False]).all() and topk["open_set_score"].notna().all()
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["Id", "Category"]  # Kaggle's format, unchanged
    assert {s["score"] for s in res["open_set"]["scores"]} == {"msp", "energy", "knn", "hybrid"}
    report = (tmp_path / "eval" / "sub_report" / "report.html").read_text()
    assert "Unknown photos (open set)" in report and "AUROC" in report
    assert (tmp_path / "eval" / "sub_report" / "roc.png").is_file()
