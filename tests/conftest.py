"""Shared fixtures: real photos from ../shared/data, a synthetic dataset, run helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CARCLF_SHARED", ROOT.parent / "shared")) / "data"
STANFORD = SHARED / "stanford-cars-dev"
STANFORD_SCALE = SHARED / "stanford-cars-scale"  # twice dev's photos and classes
SFDL_PHOTOS = SHARED / "sfdl-photos"
SFDL_META = SHARED / "sf-dl-car-classification-meta"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path


@pytest.fixture(scope="session")
def stanford() -> Path:
    return _need(STANFORD)


@pytest.fixture(scope="session")
def stanford_scale() -> Path:
    return _need(STANFORD_SCALE)


@pytest.fixture(scope="session")
def sfdl_photos() -> Path:
    return _need(SFDL_PHOTOS)


@pytest.fixture(scope="session")
def sfdl_meta() -> Path:
    return _need(SFDL_META)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Unpacked zips go to a per-session cache, never the user's ~/.cache."""
    os.environ["CARCLF_CACHE"] = str(tmp_path_factory.mktemp("carclf-cache"))


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Path:
    from carclf.data.synthetic import make_dataset

    return make_dataset(
        tmp_path_factory.mktemp("synthetic") / "cars",
        train_per_class=12,
        test_per_class=3,
        size=(96, 72),
    )


def run_cli(
    *args: str, cwd: Path = ROOT, timeout: int = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a project command (e.g. train.py ...) with this interpreter; return the result."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


# Overrides that make a training run take seconds: tiny images, one batch per epoch.
TINY = [
    "data.image_size=64",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]
