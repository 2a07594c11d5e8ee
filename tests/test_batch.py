"""carclf.batch: inputs, output folder rules, the two pipeline stages, and end-to-end Ray runs.

The stage tests run ``decode`` and ``Predictor`` in this process (no Ray): they prove the rows a
batch job writes are what :meth:`Classifier.predict` answers. The Ray runs (marked slow) use a
small local Ray (2 CPUs, 80 MB object store) on a dozen real photos and a corrupt file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_serve_helpers import PHOTOS, tiny_meta, tiny_net

from carclf.batch.__main__ import main
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
from carclf.batch.stages import SCHEMA, Predictor, decode
from carclf.errors import DataError
from carclf.inference import Classifier
from carclf.models.bundle import read_meta, save_bundle

pytest.importorskip("ray.data")

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


# -- the two stages, in process --------------------------------------------------------------------
def test_stages_match_classifier_predict(bundle, photos):
    rows = _rows(photos)
    meta = read_meta(bundle)
    batch = decode(
        {"id": rows["id"].to_numpy(), "path": rows["path"].to_numpy()},
        size=SIZE,
        mean=meta.mean,
        std=meta.std,
        resize=meta.resize,
    )
    assert batch["image"].shape == (len(rows), 3, SIZE, SIZE)
    broken = rows["id"].tolist().index("0/broken.jpg")
    assert "not an image" in batch["error"][broken]
    table = Predictor(str(bundle), "auto", "cpu", threads=1, top_k=3)(batch)
    assert table.schema == SCHEMA
    got = table.to_pandas()
    want = Classifier.load(bundle, device="cpu").predict(rows["path"].tolist(), top_k=3)
    for (_, row), pred in zip(got.iterrows(), want, strict=True):
        if not pred.ok:
            assert row["error"] == pred.error and len(row["labels"]) == 0
            continue
        assert pd.isna(row["error"])
        assert list(row["labels"]) == [str(s.label) for s in pred.top]
        assert list(row["names"]) == [s.display for s in pred.top]
        np.testing.assert_allclose(
            row["probabilities"], [s.probability for s in pred.top], atol=1e-5
        )


# -- command line: bad input gives one line and exit 2, before Ray starts ---------------------------
def test_cli_bad_input(bundle, photos, tmp_path, capsys):
    assert main([str(tmp_path / "nope"), str(photos), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope: no such model" in err and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert main([str(bundle), str(tmp_path / "empty"), str(tmp_path / "o")]) == 2
    assert "no images" in capsys.readouterr().err
    assert main([str(bundle), str(photos), str(tmp_path / "o"), "--backend", "int8"]) == 2
    assert "no model.int8.onnx" in capsys.readouterr().err


# -- end to end on a local Ray ---------------------------------------------------------------------
RAY_ARGS = ["--num-cpus", "2", "--object-store-mb", "80", "--no-progress", "--batch-size", "4"]


def _check_output(out: Path, rows: pd.DataFrame) -> pd.DataFrame:
    df = read_predictions(out)
    assert df["id"].is_unique, "duplicated rows"
    assert sorted(df["id"]) == sorted(rows["id"]), "lost rows"
    assert set(done_ids(out)) == set(rows["id"])
    return df


@pytest.mark.slow
def test_batch_run_and_rerun_on_local_ray(bundle, photos, tmp_path):
    import ray

    from carclf.batch.pipeline import run_batch

    rows = _rows(photos)
    out = tmp_path / "out"
    ray.init(num_cpus=3, object_store_memory=80 * 2**20, include_dashboard=False)
    try:
        kw = dict(workers=1, batch_size=4, rows_per_block=4, progress=False)
        report = run_batch(bundle, [photos], out, **kw)
        assert report.predicted == len(rows) and report.skipped == 0
        df = _check_output(out, rows)
        assert (df["error"].notna()).sum() == 1
        want = {p.source: p for p in Classifier.load(bundle).predict(rows["path"].tolist())}
        for _, row in df[df["error"].isna()].iterrows():
            assert list(row["labels"]) == [str(s.label) for s in want[row["path"]].top]
        files = sorted((out / PREDICTIONS).glob("*.parquet"))
        again = run_batch(bundle, [photos], out, **kw)  # nothing left to do
        assert again.predicted == 0 and again.skipped == len(rows)
        assert sorted((out / PREDICTIONS).glob("*.parquet")) == files
        _check_output(out, rows)
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_killed_job_resumes_exactly_once(bundle, photos, tmp_path):
    """SIGKILL the whole job (driver and its local Ray) once some rows are written, rerun."""
    many = tmp_path / "many"
    for i in range(12):  # 12 copies: 24 blocks of 4, written one by one as the actor gets to them
        shutil.copytree(photos, many / f"copy{i}")
    rows = list_inputs([many])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "carclf.batch", str(bundle), str(many), str(out)]
    cmd += [*RAY_ARGS, "--rows-per-block", "4"]
    job = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and job.poll() is None:
            if done_ids(out):
                break
            time.sleep(0.2)
        assert job.poll() is None, "the job finished before it could be killed"
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the session this test started: driver + its Ray
        job.wait()
    before = len(done_ids(out))
    assert 0 < before < len(rows)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{before} were already done" in proc.stdout
    _check_output(out, rows)
