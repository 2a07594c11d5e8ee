"""carclf.batch on a real multi-node Ray cluster on this machine, one worker node killed mid-job.

A head node (no CPUs: it only schedules) and two worker nodes of one CPU each run as separate
raylet processes (``ray.cluster_utils.Cluster``, what ``ray start --head`` / ``ray start
--address`` start). The job is submitted with ``--address``; once its first part is written, one
worker node's raylet is SIGKILLed (its worker processes die with it). The job must still exit 0
with every input exactly once: the lost node's tasks are retried on the other node, and a part
is written whole under one name whichever try writes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_serve_helpers import PHOTOS, tiny_meta, tiny_net

from carclf.batch.output import read_predictions
from carclf.models.bundle import save_bundle

pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from carclf.export.pipeline import export_model

    folder = tmp_path_factory.mktemp("cluster") / "bundle"
    meta = tiny_meta()
    meta.image_size = 64
    save_bundle(tiny_net(), meta, folder)
    export_model(folder, images=[PHOTOS], num_images=8)
    return folder


@pytest.mark.slow
def test_worker_node_killed_mid_job_every_photo_once(bundle, tmp_path):
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    photos = sorted(PHOTOS.glob("*/*.jpg"))
    many = tmp_path / "many"
    many.mkdir()
    for i in range(400):  # 400 distinct ids over the real photos: 100 parts of 4
        (many / f"{i:04d}.jpg").symlink_to(photos[i % len(photos)])
    # a dead node is noticed in ~1.5 s instead of Ray's default ~30 s
    fast = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    head = {"num_cpus": 0, "include_dashboard": False, "_system_config": fast}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "carclf.batch", str(bundle), str(many), str(out),
               "--address", cluster.address, "--rows-per-block", "4", "--batch-size", "4",
               "--no-progress"]  # fmt: skip
        job = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 120
        parts = out / "predictions"
        while job.poll() is None and time.monotonic() < deadline:
            if parts.is_dir() and any(parts.glob("r*.parquet")):
                break
            time.sleep(0.02)
        assert job.poll() is None, "the job finished before a node could be killed"
        raylet = nodes[1].all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
        os.kill(raylet.pid, signal.SIGKILL)  # the raylet of a node this test started
        written_at_kill = len(list(parts.glob("r*.parquet")))
        output, _ = job.communicate(timeout=240)
    finally:
        if "job" in locals() and job.poll() is None:
            job.kill()
        cluster.shutdown()
    assert job.returncode == 0, output[-3000:]
    assert written_at_kill < 100, "the kill came after the last part"
    df = read_predictions(out)
    assert df["id"].is_unique, "duplicated rows"
    assert sorted(df["id"]) == sorted(p.name for p in many.iterdir()), "lost rows"
    assert df["error"].isna().all()  # a lost node is retried, not reported as unreadable photos
    assert "400 rows for 400 inputs (0 unreadable, 0 missing, 0 duplicated)" in output
