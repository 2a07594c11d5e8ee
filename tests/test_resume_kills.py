"""Kill -9 where a user would, resume, and lose nothing but the epoch in progress.

One run is killed three times: mid-epoch (more training steps per epoch than
``log_every_n_steps``, the case that used to wipe ``metrics.csv``), while the next stage's feature
cache is being built, and right after that stage's first epoch. Each time ``resume=`` continues it;
at the end ``metrics.csv`` holds every epoch exactly once, ``curves.png`` is drawn from it, the
cache build was resumed rather than redone, and the result matches a run that was never killed.
"""

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
from conftest import ROOT, run_cli

CONFIG = [
    "data.image_size=64",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.val_fraction=0.25",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=2",
    "stages.head.epochs=3",
    "stages.head.cache=off",  # slow epochs: something to kill in the middle of
    "stages.top.epochs=3",
    "stages.top.cache=on",
    "stages.top.cache_views=8",
    "stages.top.image_size=96",
    "cache_engine=torch",
    "fit_temperature=false",
]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "CARCLF_CACHE_PROGRESS_S": "0"}


def _start(args, log):
    return subprocess.Popen(
        [sys.executable, "train.py", *args], cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT
    )


def _kill_when(proc, ready, what: str, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.02)
        raise AssertionError(f"the run ended before it could be killed {what}")
    finally:
        if proc.poll() is None:
            proc.kill()


def _ckpt(run):
    try:
        return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    except Exception:  # not there yet, or being replaced
        return None


def _building(run) -> bool:
    for rec in (run / "cache").glob("train-*96px*.json"):
        try:
            r = json.loads(rec.read_text())
        except ValueError:
            continue
        if not r["complete"] and r["done"] > 0:
            return True
    return False


@pytest.mark.slow
def test_three_kills_lose_nothing(synthetic, tmp_path):
    run = tmp_path / "run"
    base = [f"data.path={synthetic}", *CONFIG]
    logs = [open(tmp_path / f"log{i}.txt", "w") for i in range(3)]

    # 1. mid-epoch: the checkpoint holds epoch 1, epoch 2 is under way
    proc = _start([*base, f"hydra.run.dir={run}"], logs[0])
    seen = {}

    def mid_epoch():
        c = _ckpt(run)
        if c is not None and c["epoch"] >= 1:
            seen.setdefault("t", time.time())
            return time.time() - seen["t"] > 1.0
        return False

    _kill_when(proc, mid_epoch, "mid-epoch")
    history = pd.read_csv(run / "logs" / "csv" / "metrics.csv")
    assert {0, 1} <= set(history.dropna(subset=["val/acc"])["epoch"].astype(int))

    # 2. while the next stage's cache is being built (right after the stage boundary)
    proc = _start([f"resume={run}", f"hydra.run.dir={tmp_path / 'r1'}"], logs[1])
    _kill_when(proc, lambda: _building(run), "during the cache build")

    # 3. right after the first epoch of the second stage
    proc = _start([f"resume={run}", f"hydra.run.dir={tmp_path / 'r2'}"], logs[2])
    _kill_when(
        proc,
        lambda: (c := _ckpt(run)) is not None and c["callbacks"]["StagedFinetuning"]["stage"] == 1,
        "after the stage boundary",
    )
    for f in logs:
        f.close()
    out2 = (tmp_path / "log2.txt").read_text()
    assert "resuming the train feature cache build at image" in out2

    last = run_cli("train.py", f"resume={run}", f"hydra.run.dir={tmp_path / 'r3'}")
    assert "reusing the train feature cache" in last.stdout + last.stderr

    metrics = json.loads((run / "metrics.json").read_text())
    csv = pd.read_csv(run / "logs" / "csv" / "metrics.csv")
    val = csv.dropna(subset=["val/acc"])
    assert sorted(val["epoch"].astype(int)) == list(range(6))  # every epoch exactly once
    train_epochs = csv.dropna(subset=["train/loss_epoch"])["epoch"].astype(int)
    assert sorted(train_epochs) == list(range(6))
    assert csv["train/loss_step"].notna().sum() >= 6  # step rows kept across the resumes
    assert (run / "curves.png").stat().st_size > 1000
    assert not list((run / "cache").glob("*.npy"))  # caches removed once the run finished

    ref = tmp_path / "ref"
    run_cli("train.py", *base, f"hydra.run.dir={ref}")
    ref_metrics = json.loads((ref / "metrics.json").read_text())
    assert metrics["epochs"] == ref_metrics["epochs"] == 6
    # up to noise (12 validation photos): the last stage learns as well, both beat chance (0.25)
    ref_val = pd.read_csv(ref / "logs" / "csv" / "metrics.csv").dropna(subset=["val/acc"])
    last_stage = [(v["epoch"] >= 3).to_numpy() for v in (val, ref_val)]
    killed_mean = val["val/acc"][last_stage[0]].mean()
    ref_mean = ref_val["val/acc"][last_stage[1]].mean()
    assert abs(killed_mean - ref_mean) <= 0.25, (killed_mean, ref_mean)
    assert metrics["val_acc"] >= 0.5 and ref_metrics["val_acc"] >= 0.5
