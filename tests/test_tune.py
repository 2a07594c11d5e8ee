"""Search (carclf.tune): robust trials, resume of a killed sweep, pruning, DDP and submitit
under -m, logger choice, and the presets' configs."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import ROOT, run_cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

pytest.importorskip("optuna")

# Trials that take seconds: 32 px, one head epoch and two top epochs, no calibration.
TRIAL = [
    "data.image_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.check=false",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "stages.head.epochs=1",
    "stages.top.epochs=2",
    "fit_temperature=false",
]
SEARCH = ["hydra/sweeper=carclf_optuna", "model.head.dropout=interval(0.0,0.5)"]


def sweep(synthetic, sweep_dir, *extra, check=True, **kw):
    return run_cli(
        "train.py",
        "-m",
        f"data.path={synthetic}",
        *TRIAL,
        *SEARCH,
        *extra,
        f"hydra.sweep.dir={sweep_dir}",
        check=check,
        **kw,
    )


def trials(sweep_dir) -> pd.DataFrame:
    return pd.read_csv(sweep_dir / "trials.csv").set_index("trial")


def compose_train(*overrides, hydra=False):
    import carclf.config  # noqa: F401  (the schema)

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=["data.path=x", *overrides], return_hydra_config=hydra)


# -- fast: configs and search spaces ----------------------------------------------------------
def test_space_from_hydra_sweep_syntax():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from carclf.errors import CarclfError
    from carclf.tune.space import as_overrides, parse_space

    space = parse_space(
        {
            "a": "tag(log, interval(1e-4, 1e-2))",
            "b": "range(1, 4)",
            "c": "choice(128, 160)",
            "d": "0.0,0.2",
            "e": "tag(int, interval(2, 8))",
            "f": "choice('[]', '[256]')",
        }
    )
    assert space["a"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["b"] == IntDistribution(1, 3)
    assert space["c"] == CategoricalDistribution([128, 160])
    assert space["d"] == CategoricalDistribution([0.0, 0.2])
    assert space["e"] == IntDistribution(2, 8)
    assert as_overrides({"f": "[256]", "g": 0.1, "h": None}) == ["f=[256]", "g=0.1", "h=null"]
    with pytest.raises(CarclfError, match="x=0.3: not a range"):
        parse_space({"x": "0.3"})
    with pytest.raises(CarclfError, match="y: cannot parse"):
        parse_space({"y": "interval(0,"})


@pytest.mark.parametrize("preset", ["cpu_quick", "gpu"])
def test_presets_compose_and_parse(preset):
    from carclf.tune.space import parse_space

    cfg = compose_train(f"hparams_search={preset}", hydra=True)
    sw = cfg.hydra.sweeper
    assert sw._target_.endswith("CarclfOptunaSweeper") and sw.n_trials >= 24
    space = parse_space(sw.params)
    for key in space:  # every searched key exists in the composed config (a typo would not)
        assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", key
    for params in sw.enqueue:  # the enqueued baseline lies inside the space
        assert set(params) == set(space)
        assert all(space[k]._contains(space[k].to_internal_repr(v)) for k, v in params.items())


@pytest.mark.parametrize(
    "launcher,tasks",
    [("submitit_local", 1), ("submitit_slurm", 1), ("slurm_gpu", 1), ("slurm_ddp", 4)],
)
def test_launcher_configs_compose(launcher, tasks):
    cfg = compose_train(f"hydra/launcher={launcher}", hydra=True)
    assert "submitit" in cfg.hydra.launcher._target_
    assert cfg.hydra.launcher.tasks_per_node == tasks


@pytest.mark.parametrize(
    "choice,want",
    [
        (None, {"tensorboard"}),
        ("logger=csv", {"csv"}),
        ("logger=mlflow", {"mlflow"}),
        ("logger=[tensorboard,mlflow]", {"tensorboard", "mlflow"}),
    ],
)
def test_logger_group(choice, want):
    cfg = compose_train(*([choice] if choice else []))
    assert {k for k, v in cfg.logger.items() if v is not None} == want


# -- slow: real sweeps ------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_survives_nan_and_raising_trials_and_best_reruns(synthetic, tmp_path):
    """4 trials: a diverging one (lr 3e37 -> NaN loss), a raising one (dropout 1.5), 2 good."""
    out = tmp_path / "sweep"
    sweep(
        synthetic,
        out,
        "stages.head.lr=tag(log,interval(1e-3,1e-2))",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.enqueue=[{stages.head.lr:3e37},{model.head.dropout:1.5}]",
    )
    t = trials(out)
    assert list(t["state"]) == ["fail", "fail", "complete", "complete"], t
    assert "loss became nan" in t.loc[0, "reason"] or "loss became inf" in t.loc[0, "reason"]
    assert "dropout probability" in t.loc[1, "reason"]
    assert t.loc[2:, "value"].between(0, 1).all()
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4 and set(summary["state"]) == {"fail", "complete"}
    assert (out / "summary.md").is_file() and (out / "report.png").stat().st_size > 10_000
    assert json.loads((out / "1" / "trial.json").read_text())["state"] == "fail"

    best = int(t["value"].idxmax())
    rerun = next(
        ln for ln in (out / "best.txt").read_text().splitlines() if ln.startswith("rerun:")
    )
    cmd = shlex.split(rerun.removeprefix("rerun:").strip())
    assert cmd[:2] == ["python", "train.py"] and not any(a.startswith("tune.") for a in cmd)
    run_cli(*cmd[1:], f"hydra.run.dir={tmp_path / 'rerun'}")
    again = OmegaConf.load(tmp_path / "rerun" / "config.yaml")
    trial_cfg = OmegaConf.load(out / str(best) / "config.yaml")
    trial_cfg.tune = again.tune  # the link to the study is the only difference
    assert again == trial_cfg
    metrics = json.loads((tmp_path / "rerun" / "metrics.json").read_text())
    # same recipe and seed; threaded CPU kernels may flip one of the 8 validation photos
    # (a trial that ran out of its 10-minute budget on a loaded box trained fewer epochs)
    assert metrics["val_acc"] == pytest.approx(t.loc[best, "value"], abs=0.26)


@pytest.mark.slow
def test_killed_sweep_continues(synthetic, tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", f"data.path={synthetic}", *TRIAL, *SEARCH]
    cmd += ["hydra.sweeper.n_trials=3", f"hydra.sweep.dir={out}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # kill -9 while trial 1 trains
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if (out / "1" / "checkpoints" / "last.ckpt").is_file():  # after its 1st epoch
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    with sqlite3.connect(out / "optuna.db") as db:
        states = [s for (s,) in db.execute("select state from trials order by number")]
    assert states == ["COMPLETE", "RUNNING"], states
    mtime = (out / "0" / "metrics.json").stat().st_mtime

    sweep(synthetic, out, "hydra.sweeper.n_trials=3")  # the same command again
    t = trials(out)
    assert list(t["state"]) == ["complete", "fail", "complete", "complete"], t
    assert t.loc[1, "reason"].startswith("interrupted")
    # the interrupted trial's parameters were tried again, as trial 2
    assert t.loc[2, "param:model.head.dropout"] == t.loc[1, "param:model.head.dropout"]
    assert (out / "0" / "metrics.json").stat().st_mtime == mtime  # trial 0 was not rerun


@pytest.mark.slow
def test_unpromising_trial_is_pruned(synthetic, tmp_path):
    out = tmp_path / "sweep"
    sweep(
        synthetic,
        out,
        "hydra.sweeper.n_trials=1",
        # no trial reaches accuracy 1.01: pruned as soon as the warm-up epoch is over
        "hydra.sweeper.pruner=null",  # replace the default pruner rather than merge into it
        "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:1.01,n_warmup_steps:1}",
    )
    t = trials(out)
    assert t.loc[0, "state"] == "pruned" and t.loc[0, "epochs_reported"] == 2
    assert "pruned after epoch 2" in t.loc[0, "reason"]
    assert not (out / "0" / "metrics.json").exists()  # stopped before the end of training


@pytest.mark.slow
def test_ddp_trial_under_multirun_does_not_hang(synthetic, tmp_path):
    """A 2-process gloo DDP trial inside -m: the ranks rerun the job, not the sweep."""
    out = tmp_path / "sweep"
    proc = sweep(
        synthetic, out, "trainer=ddp_cpu", "hydra.sweeper.n_trials=1", timeout=400, check=False
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "Starting with 2 processes" in text or "world_size=2" in text, text[-3000:]
    t = trials(out)
    assert t.loc[0, "state"] == "complete" and t.loc[0, "epochs_reported"] == 3
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.isdigit()) == ["0"]


@pytest.mark.slow
def test_submitit_local_runs_two_jobs(synthetic, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = tmp_path / "sweep"
    sweep(
        synthetic,
        out,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        timeout=500,
    )
    t = trials(out)
    assert list(t["state"]) == ["complete", "complete"], t
    assert len(list((out / ".submitit").glob("*/*_result.pkl"))) == 2


@pytest.mark.slow
def test_each_logger_writes_its_files(synthetic, tmp_path):
    common = [f"data.path={synthetic}", *TRIAL, "stages.top.epochs=1"]
    run_cli("train.py", *common, "logger=csv", f"hydra.run.dir={tmp_path / 'csv'}")
    assert (tmp_path / "csv" / "logs" / "csv" / "metrics.csv").is_file()
    assert not (tmp_path / "csv" / "logs" / "tensorboard").exists()

    run = tmp_path / "both"
    store = tmp_path / "outputs"
    run_cli(
        "train.py",
        *common,
        "logger=[tensorboard,mlflow]",
        f"logger.mlflow.outputs={store}",
        f"hydra.run.dir={run}",
    )
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "logs" / "csv" / "metrics.csv").is_file()
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("carclf")
    (logged,) = client.search_runs([exp.experiment_id])
    assert logged.info.run_name == "both" and "val/acc" in logged.data.metrics
