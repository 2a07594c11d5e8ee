"""Crash safety and run modes: resume after kill -9, atomic checkpoints, sweeps, DDP, config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from conftest import ROOT, TINY, run_cli

from carclf.train.checkpoint import atomic_torch_save

RESUMABLE = [
    *TINY,
    "data.val_fraction=0.25",
    "+stage@stages.full=full",
    "stages.head.epochs=1",
    "stages.head.cache=off",
    "stages.top.epochs=1",
    "stages.top.cache=off",
    "stages.full.epochs=4",
    "stages.full.image_size=128",
    "stages.full.batch_size=4",
    "model.ema_decay=0.9",
    "fit_temperature=false",
]


@pytest.mark.slow
def test_resume_after_kill_9(synthetic, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", f"data.path={synthetic}", *RESUMABLE, f"hydra.run.dir={run}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    saved_epoch = -1
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if last.is_file():
                saved_epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
                if saved_epoch >= 2:  # inside the third stage
                    break
            time.sleep(0.2)
        assert proc.poll() is None, "training finished before it could be killed; make it slower"
        time.sleep(0.5)  # mid-epoch
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    saved_epoch = ckpt["epoch"]
    assert ckpt["callbacks"]["StagedFinetuning"]["stage"] == 2
    assert ckpt["callbacks"]["EMA"]["shadow"]
    assert not (run / "metrics.json").exists()
    assert not list(run.rglob(".*.tmp-*")), "a temporary checkpoint file was left behind"

    out = run_cli("train.py", f"resume={run}", f"hydra.run.dir={tmp_path / 'resume-log'}")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 6
    log = pd.read_csv(run / "logs" / "csv" / "metrics.csv")
    epochs = sorted(log["epoch"].dropna().unique().astype(int).tolist())
    assert epochs[-1] == 5
    assert "Restored all states" in out.stdout + out.stderr or "resuming" in out.stdout + out.stderr
    after = torch.load(last, map_location="cpu", weights_only=False)
    assert after["epoch"] == 5 and after["global_step"] > ckpt["global_step"]


def test_nothing_to_resume(tmp_path):
    proc = run_cli(
        "train.py", f"resume={tmp_path}", f"hydra.run.dir={tmp_path / 'log'}", check=False
    )
    assert proc.returncode == 2 and "no config.yaml" in proc.stderr


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"v": 1}, path)

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"v": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize(
    "override,needle",
    [
        ("data.pathh=x", "pathh"),
        ("data.batch_size=abc", "data.batch_size"),
        ("stages.head.scheduler=cosin", "stages.head.scheduler"),
        ("stages.head.colour=1", "colour"),
        ("calibration_tta=multiscal", "calibration_tta"),
    ],
)
def test_config_errors_name_the_key(override, needle, synthetic, tmp_path):
    proc = run_cli(
        "train.py", f"data.path={synthetic}", override, f"hydra.run.dir={tmp_path}", check=False
    )
    assert proc.returncode != 0
    err = proc.stderr
    assert needle in err, err[-2000:]
    assert "Traceback" not in err or "Set the environment variable HYDRA_FULL_ERROR=1" in err


def test_missing_data_path_is_a_clear_error(tmp_path):
    proc = run_cli("train.py", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode != 0 and "data.path" in proc.stderr


@pytest.mark.slow
def test_multirun_sweep_summary(synthetic, tmp_path):
    run_cli(
        "train.py",
        "-m",
        f"data.path={synthetic}",
        *TINY,
        "stages.head.epochs=1",
        "stages.top.epochs=1",
        "fit_temperature=false",
        "seed=1,2",
        f"hydra.sweep.dir={tmp_path}",
    )
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 2 and summary["val_acc"].between(0, 1).all()
    assert (tmp_path / "0" / "bundle" / "meta.json").is_file() and (
        tmp_path / "1" / "bundle" / "meta.json"
    ).is_file()


@pytest.mark.slow
def test_ddp_on_cpu_two_processes(synthetic, tmp_path):
    """DDP (gloo, 2 processes) through the DDP-safe freezing mode: frozen groups at lr 0."""
    run = tmp_path / "ddp"
    out = run_cli(
        "train.py",
        f"data.path={synthetic}",
        *TINY,
        "trainer=ddp_cpu",
        "data.num_workers=0",
        "stages.head.epochs=1",
        "stages.top.epochs=1",
        "fit_temperature=false",
        f"hydra.run.dir={run}",
    )
    text = out.stdout + out.stderr
    assert "distributed_backend=gloo" in text and "Starting with 2 processes" in text, text[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and 0 <= metrics["val_acc"] <= 1
    assert not metrics["cache_seconds"]  # no feature cache under DDP
