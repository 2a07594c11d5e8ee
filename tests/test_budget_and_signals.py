"""A time budget that holds with the end of the run inside it; interrupts that say how to resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.slow

QUIET = ["data.num_workers=0", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from carclf.data.synthetic import make_dataset

    return make_dataset(
        tmp_path_factory.mktemp("budget") / "cars",
        train_per_class=60,
        test_per_class=2,
        size=(96, 72),
    )


def _train(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "carclf", "train", *overrides]


def test_a_budget_covers_the_whole_run_with_its_end(photos, tmp_path):
    """400 epochs cannot fit: the run stops training early enough that the final validation
    pass (two TTA views) and the bundle end inside the budget, measured from process start."""
    budget_s, run = 36.0, tmp_path / "run"
    cmd = _train(f"data.path={photos}", "data.image_size=48", "data.batch_size=16", *QUIET,
                 "stages.top.epochs=400", f"trainer.time_budget_min={budget_s / 60}",
                 f"hydra.run.dir={run}")  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    print(
        f"budget {budget_s:.0f} s: run {metrics['run_seconds']} s (its own clock), wall {wall:.1f} s"
    )
    assert metrics["stopped_by_budget"] and metrics["epochs_completed"] < metrics["epochs"]
    # process start to bundle and metrics.json
    assert metrics["run_seconds"] <= budget_s * 1.1, (r.stdout + r.stderr)[-4000:]
    assert wall <= budget_s * 1.1 + 15  # + the interpreter's exit; a generous margin
    assert (run / "bundle" / "model.safetensors").is_file()


def _watch(stream, lines: list[str]) -> threading.Thread:
    t = threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")), daemon=True)
    t.start()
    return t


def test_a_sigterm_during_a_cache_build_stops_cleanly_and_says_how_to_resume(photos, tmp_path):
    """SIGTERM to the whole process group, DataLoader workers included (a container's stop,
    `kill -- -PGID`): one clean line with the resume command, exit code 130, where it used to
    print a 70-line traceback (a worker killed by the signal). Ctrl-C takes the same path."""
    run = tmp_path / "run"
    cmd = _train(f"data.path={photos}", "data.image_size=96", "data.num_workers=2",
                 "trainer.accelerator=cpu", "cache_engine=torch", "stages.head.cache_views=16",
                 f"hydra.run.dir={run}")  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    err: list[str] = []
    out: list[str] = []
    threads = [_watch(proc.stderr, err), _watch(proc.stdout, out)]
    try:
        deadline = time.time() + 120
        while not any("caching train features" in line for line in err) and time.time() < deadline:
            assert proc.poll() is None, "".join(err[-30:])
            time.sleep(0.1)
        time.sleep(1.0)  # inside the build
        assert proc.poll() is None, "the cache build ended before the signal; make it longer"
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    for t in threads:
        t.join(timeout=10)
    text = "".join(err)
    assert proc.returncode == 130, text[-3000:]
    assert f"continue with: carclf train resume={run}" in text
    assert "Traceback" not in text and "DataLoader worker" not in text, text[-3000:]
    assert len(err) < 15, text
