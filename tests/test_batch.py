"""carclf.batch: inputs, output folder rules, the engine, the local runner, a local Ray.

The engine tests run decode and the model in this process: they prove the rows a batch job
writes are what :meth:`Classifier.predict` answers. The local runner (no Ray) runs end to end
on a dozen real photos and a corrupt file, is killed and resumed; the Ray runs (slow) finish a
job the local runner started, on the same part files. The multi-node cluster with a node
killed mid-job is tests/test_batch_cluster.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_serve_helpers import PHOTOS, tiny_meta, tiny_net

from carclf.batch.__main__ import main
from carclf.batch.engine import SCHEMA, Engine, decode, fit, predict_rows
from carclf.batch.inputs import list_inputs
from carclf.batch.output import (
    MANIFEST,
    PREDICTIONS,
    Manifest,
    OutputError,
    done_ids,
    model_id,
    prepare,
    read_predictions,
)
from carclf.batch.pipeline import model_spec, run_batch
from carclf.data.images import load_rgb
from carclf.data.presets import EvalPreset
from carclf.errors import DataError
from carclf.inference import Classifier
from carclf.models.bundle import read_meta, save_bundle

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A 10-class Lite0 bundle at 64 px with model.onnx (untrained head: plumbing only)."""
    from carclf.export.pipeline import export_model

    folder = tmp_path_factory.mktemp("batch") / "bundle"
    meta = tiny_meta()
    meta.image_size = SIZE
    save_bundle(tiny_net(), meta, folder)
    export_model(folder, images=[PHOTOS], num_images=8)
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """12 real photos in two subfolders and one file that is not an image."""
    folder = tmp_path_factory.mktemp("batch") / "photos"
    for cls in ("0", "1"):
        (folder / cls).mkdir(parents=True)
        for p in sorted((PHOTOS / cls).glob("*.jpg"))[:6]:
            shutil.copy(p, folder / cls / p.name)
    (folder / "0" / "broken.jpg").write_bytes(b"not a jpeg at all")
    return folder


def _rows(photos: Path) -> pd.DataFrame:
    return list_inputs([photos])


# -- inputs ----------------------------------------------------------------------------------------
def test_inputs_folder_csv_and_parquet_lists(photos, tmp_path):
    rows = _rows(photos)
    assert len(rows) == len(list(photos.rglob("*.jpg"))) and rows["id"].is_unique
    assert rows["id"].iloc[0].startswith("0/")  # ids relative to the folder, as predict.py
    # a CSV of paths
    csv = tmp_path / "list.csv"
    pd.DataFrame({"path": rows["path"]}).to_csv(csv, index=False)
    assert list_inputs([csv])["path"].tolist() == rows["path"].tolist()
    # Parquet lists: a glob, relative paths, a column named filepath, duplicates dropped
    lists = tmp_path / "lists"
    lists.mkdir()
    rel = [os.path.relpath(p, lists) for p in rows["path"]]
    pd.DataFrame({"filepath": rel[:5]}).to_parquet(lists / "a.parquet")
    pd.DataFrame({"filepath": rel[4:]}).to_parquet(lists / "b.parquet")
    got = list_inputs([str(lists / "*.parquet")])
    assert len(got) == len(rows) and got["id"].is_unique
    assert sorted(map(os.path.realpath, got["path"])) == sorted(map(os.path.realpath, rows["path"]))
    assert (
        list_inputs([lists / "a.parquet", lists / "b.parquet"])["id"].tolist() == got["id"].tolist()
    )


def test_inputs_bad(tmp_path, photos):
    with pytest.raises(DataError, match="no such file"):
        list_inputs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        list_inputs([tmp_path / "empty"])
    with pytest.raises(DataError, match="no file matches"):
        list_inputs([str(tmp_path / "nothing-*.parquet")])
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataError, match="bad.parquet: cannot read Parquet"):
        list_inputs([bad])
    nocol = tmp_path / "nocol.parquet"
    pd.DataFrame({"x": ["a"]}).to_parquet(nocol)
    with pytest.raises(DataError, match="no path column"):
        list_inputs([nocol])
    with pytest.raises(DataError, match="several inputs must be Parquet"):
        list_inputs([photos, photos])


# -- output folder ---------------------------------------------------------------------------------
def test_output_folder_rules(bundle, tmp_path):
    meta = read_meta(bundle)
    mine = Manifest(str(bundle), model_id(meta), "auto", 5)
    out = tmp_path / "out"
    prepare(out, mine)
    prepare(out, mine)  # the same job again: fine (a rerun)
    assert json.loads((out / MANIFEST).read_text())["model_id"] == model_id(meta)
    other = Manifest("other", "0123456789abcdef", "auto", 5)
    with pytest.raises(OutputError, match=f"{out}: holds predictions of another job"):
        prepare(out, other)
    with pytest.raises(OutputError, match="top_k 5 there, 3 now"):
        prepare(out, Manifest(str(bundle), model_id(meta), "auto", 3))
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a carclf batch output"):
        prepare(stranger, mine)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        prepare(tmp_path / "file", mine)


# -- the engine, in process ------------------------------------------------------------------------
@pytest.mark.parametrize("resize", ["squash", "crop"])
def test_fit_is_the_eval_preset(photos, resize):
    """The torch-free resize + normalize give the eval preset's input, pixel for pixel."""
    path = sorted(photos.rglob("*.jpg"))[1]
    rgb = load_rgb(path)
    mean, std = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])
    want = EvalPreset(size=SIZE, mean=mean, std=std, resize=resize)(rgb).numpy()
    pixels = fit(rgb, SIZE, resize)
    assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8
    x = (pixels.astype(np.float32) - np.float32(255) * mean) / (np.float32(255) * std)
    np.testing.assert_allclose(x.transpose(2, 0, 1), want, atol=1e-5)


def _answer(bundle, rows, draft: bool, top_k: int = 3):
    spec = model_spec(bundle, "auto", "cpu", top_k, draft)
    with ThreadPoolExecutor(2) as pool:
        return predict_rows(Engine(spec, 1), rows["id"].tolist(), rows["path"].tolist(), pool, 4)


def test_engine_matches_classifier_predict(bundle, photos):
    rows = _rows(photos)
    table = _answer(bundle, rows, draft=False)
    assert table.schema == SCHEMA
    got = table.to_pandas()
    assert got["model_id"].unique().tolist() == [model_id(read_meta(bundle))]
    want = Classifier.load(bundle, device="cpu").predict(rows["path"].tolist(), top_k=3)
    for (_, row), pred in zip(got.iterrows(), want, strict=True):
        if not pred.ok:
            assert row["error"] == pred.error == "not an image (unrecognised format)"
            assert len(row["labels"]) == 0
            continue
        assert pd.isna(row["error"])
        assert list(row["labels"]) == [str(s.label) for s in pred.top]
        assert list(row["names"]) == [s.display for s in pred.top]
        np.testing.assert_allclose(
            row["probabilities"], [s.probability for s in pred.top], atol=1e-5
        )


def test_decode_reasons(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert decode(str(tmp_path / "empty.jpg"), SIZE, "squash") == (None, "empty file (0 bytes)")
    assert decode(str(tmp_path / "gone.jpg"), SIZE, "squash") == (None, "file not found")
    pixels, err = decode(sorted(PHOTOS.glob("*/*.jpg"))[0].as_uri(), SIZE, "crop")  # file://
    assert err == "" and pixels.shape == (SIZE, SIZE, 3)


# -- command line: bad input gives one line and exit 2 ----------------------------------------------
def test_cli_bad_input(bundle, photos, tmp_path, capsys):
    assert main([str(tmp_path / "nope"), str(photos), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope: no such model" in err and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert main([str(bundle), str(tmp_path / "empty"), str(tmp_path / "o")]) == 2
    assert "no images" in capsys.readouterr().err
    assert main([str(bundle), str(photos), str(tmp_path / "o"), "--backend", "int8"]) == 2
    assert "no model.int8.onnx" in capsys.readouterr().err


def test_cli_cluster_that_does_not_answer(bundle, photos, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    code = main([str(bundle), str(photos), str(tmp_path / "o"), "--address", f"127.0.0.1:{port}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and time.monotonic() - start < 30
    assert f"--address 127.0.0.1:{port}: no Ray cluster answers there" in err and "\n" not in err


# -- the local runner (no Ray) ---------------------------------------------------------------------
ARGS = ["--no-progress", "--batch-size", "4", "--rows-per-block", "4"]


def _check_output(out: Path, rows: pd.DataFrame) -> pd.DataFrame:
    df = read_predictions(out)
    assert df["id"].is_unique, "duplicated rows"
    assert sorted(df["id"]) == sorted(rows["id"]), "lost rows"
    assert set(done_ids(out)) == set(rows["id"])
    return df


def test_local_run_rerun_and_uri_list(bundle, photos, tmp_path):
    rows = _rows(photos)
    out = tmp_path / "out"
    kw = dict(batch_size=4, rows_per_block=4, progress=False)
    report = run_batch(bundle, [photos], out, draft=False, **kw)
    assert report.predicted == len(rows) and report.skipped == 0
    assert report.runner.startswith("local")
    df = _check_output(out, rows)
    assert df["error"].notna().sum() == 1 and report.summary.errors == 1
    want = {p.source: p for p in Classifier.load(bundle).predict(rows["path"].tolist())}
    for _, row in df[df["error"].isna()].iterrows():
        assert list(row["labels"]) == [str(s.label) for s in want[row["path"]].top]
    files = sorted((out / PREDICTIONS).glob("*.parquet"))
    again = run_batch(bundle, [photos], out, draft=False, **kw)  # nothing left to do
    assert again.predicted == 0 and again.skipped == len(rows)
    assert sorted((out / PREDICTIONS).glob("*.parquet")) == files
    # a list of file:// URIs, read through pyarrow's file systems (as s3:// or gs:// would be)
    lst = tmp_path / "uris.parquet"
    uris = [Path(p).as_uri() for p in rows["path"]]
    pd.DataFrame({"path": uris}).to_parquet(lst)
    got = run_batch(bundle, [lst], tmp_path / "out-uri", **kw)
    assert got.summary.missing == 0 and got.summary.errors == 1
    assert sorted(read_predictions(tmp_path / "out-uri")["id"]) == sorted(uris)


def _copies(photos: Path, folder: Path, n: int) -> Path:
    for i in range(n):
        shutil.copytree(photos, folder / f"copy{i}")
    return folder


@pytest.mark.slow
def test_killed_local_job_resumes_exactly_once(bundle, photos, tmp_path):
    """SIGKILL the local job once some parts are written, rerun: every input exactly once."""
    many = _copies(photos, tmp_path / "many", 12)
    rows = list_inputs([many])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "carclf.batch", str(bundle), str(many), str(out), *ARGS]
    job = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and job.poll() is None:
            if done_ids(out):
                break
            time.sleep(0.02)
        assert job.poll() is None, "the job finished before it could be killed"
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the session this test started
        job.wait()
    before = len(done_ids(out))
    assert 0 < before < len(rows)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{before} were already done" in proc.stdout
    _check_output(out, rows)


# -- a local Ray, on the local runner's files --------------------------------------------------------
@pytest.mark.slow
def test_ray_finishes_what_the_local_runner_started(bundle, photos, tmp_path):
    pytest.importorskip("ray")
    rows = _rows(photos)
    out = tmp_path / "out"
    kw = dict(batch_size=4, rows_per_block=4, progress=False)
    run_batch(bundle, [photos], out, **kw)
    parts = sorted((out / PREDICTIONS).glob("*.parquet"))
    lost = set(read_predictions(out)["id"]) - set(
        pd.concat(pd.read_parquet(p) for p in parts[1:])["id"]
    )
    parts[0].unlink()  # as if the job had died before its first part was written
    report = run_batch(bundle, [photos], out, ray=True, num_cpus=2, **kw)
    assert report.runner.startswith("ray") and report.predicted == len(lost)
    assert report.skipped == len(rows) - len(lost)
    _check_output(out, rows)
