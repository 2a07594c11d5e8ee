"""`pip install` carclf, then use it as a user would, from a folder outside the checkout.

The wheel is built from a copy of the sources and installed into a fresh virtualenv whose only
link to this checkout's environment is a .pth line naming .venv's site-packages (the installed
dependencies; carclf's editable finder there is not run, so the wheel's carclf is the one
imported). Nothing is downloaded. Then: `carclf synthetic`, `carclf train` (tiny), `carclf
export`, `carclf predict` and `carclf serve --help`, under a umask of 002; and what they leave.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

UMASK = 0o002  # group-writable: tempfile's 0600/0700 and a hard-coded 0644 both differ from it
NOISE = ("litlogger", "v_num", "Total Flops", "Total FLOPs", "_pytree", "image-views (")


def _sh(cmd, cwd, timeout=180, check=True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: os.umask(UMASK),
    )
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtualenv with the carclf wheel installed; its bin/."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src-copy"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", src / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip"]
    _sh(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp, src],
        tmp,
    )
    (wheel,) = tmp.glob("carclf-*.whl")
    env = tmp / "venv"
    _sh([sys.executable, "-m", "venv", "--without-pip", env], tmp)
    py = env / "bin" / "python"
    site = _sh([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp)
    deps = sysconfig.get_paths()["purelib"]  # this interpreter's (.venv's) site-packages
    (Path(site.stdout.strip()) / "_carclf_deps.pth").write_text(deps + "\n")
    _sh([*pip, "--python", py, "install", "-q", "--no-deps", "--no-index", wheel], tmp)
    return env / "bin"


@pytest.fixture(scope="module")
def user(venv, tmp_path_factory) -> dict:
    """A user's folder outside the checkout: synthetic photos, a tiny run, an export."""
    home = tmp_path_factory.mktemp("user")
    carclf = venv / "carclf"
    _sh([carclf, "synthetic", "cars", "--train-per-class", "10", "--test-per-class", "2"], home)
    tiny = ["data.image_size=32", "data.batch_size=8", "data.num_workers=0"]
    tiny += ["stages.head.epochs=1", "stages.top.epochs=1", "trainer.accelerator=cpu"]
    tiny += ["cache_engine=torch"]  # no prefix export: seconds saved
    train = _sh([carclf, "train", "data.path=cars", *tiny, "hydra.run.dir=run"], home)
    export = _sh([carclf, "export", "run", "--images", "cars/train", "--num-images", "4"], home)
    return {"home": home, "carclf": carclf, "train": train, "export": export}


def test_the_wheel_carries_its_configs_and_trains_outside_the_checkout(venv, user):
    where = _sh([venv / "python", "-c", "import carclf; print(carclf.__file__)"], user["home"])
    assert str(venv.parent) in where.stdout, where.stdout  # the wheel's carclf, not src/
    run = user["home"] / "run"
    assert (run / "bundle" / "model.safetensors").is_file() and (run / "metrics.json").is_file()
    assert "bundle:" in user["train"].stdout
    help_text = _sh([user["carclf"], "serve", "--help"], user["home"]).stdout
    assert "--max-pending" in help_text and "default 64" in help_text


def test_files_are_written_with_the_users_umask(user):
    run = user["home"] / "run"
    wrong = []
    for p in [run, *run.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        want = 0o777 & ~UMASK if p.is_dir() else 0o666 & ~UMASK
        if mode != want:
            wrong.append(f"{p.relative_to(run)}: {mode:o}, not {want:o}")
    assert not wrong, "\n".join(wrong)
    assert (run / "bundle" / "model.onnx").is_file()  # the export's files were checked too


def test_a_finished_run_leaves_no_cache_and_prints_no_known_noise(user):
    run = user["home"] / "run"
    assert not (run / "cache").exists()
    out = user["train"].stdout + user["train"].stderr
    assert not [n for n in NOISE if n in out], out[-3000:]
    assert sum("warn" in line.lower() for line in out.splitlines()) <= 1, out[-3000:]


def test_onnx_runs_the_default_tta_and_predict_writes_only_what_was_asked(user, tmp_path):
    """Default predict (multiscale TTA) on an exported bundle stays on ONNX Runtime, and writes
    the submission and its top-k table where output= says, nothing in the working dir."""
    home, carclf = user["home"], user["carclf"]
    assert "model.37px.onnx" in user["export"].stdout  # the 1.15x view of a 32 px model
    empty = tmp_path / "cwd"
    empty.mkdir()
    out = tmp_path / "elsewhere" / "sub.csv"
    r = _sh([carclf, "predict", f"model={home / 'run'}", f"input={home / 'cars'}", f"output={out}"],
            empty)  # fmt: skip
    log = r.stdout + r.stderr
    assert "(onnx backend)" in log and "PyTorch backend" not in log, log[-2000:]
    assert out.is_file() and (out.parent / "sub_topk.csv").is_file()
    assert not list(empty.iterdir()), list(empty.rglob("*"))
