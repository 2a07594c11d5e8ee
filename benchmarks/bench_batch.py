"""Batch inference: carclf.batch (local runner, local Ray, a multi-node Ray cluster) vs predict.py.

    .venv/bin/python benchmarks/bench_batch.py [--model BUNDLE] [--pool 20000] [--batch-size 8]
        [--cluster-pool N]

Prints two tables (results also in outputs/bench/batch/results.json):

1. One box, on a pool of N photos: raw ONNX Runtime (preprocessed tensors, batch 16), the
   *ceiling* (decode + ONNX Runtime in one process, serially, at the job's batch size and
   decode: what the job would do with no pipeline overhead and no overlap), ``predict.py
   tta=none``, ``carclf.batch`` (local runner, no Ray) and ``carclf.batch --ray`` (a local Ray);
   images/s end to end (command start to exit) and in the pipeline (the tool's own report), peak
   memory (largest sum of PSS over the command's process tree, sampled every 0.25 s).
2. A real Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head with no CPUs and
   worker nodes of one CPU each, separate raylet processes, each node's processes pinned to its
   own core): the job submitted with ``--address`` on 1 and 2 worker nodes (images/s, per node,
   scaling efficiency), then on 2 nodes with one node's raylet SIGKILLed once 10% of the parts
   are written (rows, lost, duplicated).

The pool: stanford-cars-dev (test_upload + train) and stanford-cars-scale photos, listed again
and again under distinct names (symlinks) up to N: the decode and model work of N distinct
photos without N copies on disk. The model is ``--model`` (any bundle with model.onnx), else a
stand-in: Lite0 (ImageNet weights) at 224 px with an untrained 49-class head, exported to ONNX.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/stanford-cars-dev"
WORK = ROOT / "outputs/bench/batch"


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def stand_in_bundle(out: Path, data: Path) -> Path:
    """Lite0 + untrained 49-class head at 224 px, with model.onnx checked on 8 train photos."""
    from carclf.data.layouts import read_dataset
    from carclf.export.pipeline import export_model
    from carclf.models.bundle import BundleMeta, save_bundle
    from carclf.models.factory import build_net

    if (out / "model.onnx").is_file():
        return out
    index = read_dataset(data)
    net = build_net("tf_efficientnet_lite0", index.num_classes, weights="offline").eval()
    meta = BundleMeta(
        backbone="tf_efficientnet_lite0",
        class_names=index.class_names,
        label_values=index.label_values,
        image_size=224,
        mean=[0.5] * 3,
        std=[0.5] * 3,
        extra={"note": "untrained head: a speed stand-in made by benchmarks/bench_batch.py"},
    )
    save_bundle(net, meta, out)
    export_model(out, images=[data / "train"], num_images=8)
    return out


# -- process tree measurement ----------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def pss_mb(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total / 1024


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def run_measured(cmd: list[str], on_tick=None, timeout: float = 3600) -> dict:
    """Run ``cmd`` in its own session; wall time, peak PSS of its tree, output."""
    log = WORK / "last.log"
    with open(log, "w") as f:
        start = time.perf_counter()
        job = subprocess.Popen(
            cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        peak = 0.0
        try:
            while job.poll() is None:
                peak = max(peak, pss_mb(tree(job.pid)))
                if on_tick is not None and on_tick(job):
                    break
                if time.perf_counter() - start > timeout:
                    raise TimeoutError(" ".join(cmd))
                time.sleep(0.25)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)  # the session this script started
            job.wait()
    return {
        "rc": job.returncode,
        "wall_s": time.perf_counter() - start,
        "peak_mb": peak,
        "out": log.read_text(),
    }


def batch_cmd(model: Path, inputs: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "carclf.batch", str(model), str(inputs), str(out),
            "--no-progress", *extra]  # fmt: skip


def batch_run(what: str, model: Path, inputs: Path, out: Path, n: int, *extra: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    r = run_measured(batch_cmd(model, inputs, out, *extra))
    m = re.search(r"wrote (\d+) in ([\d.]+) s \(([\d.]+) images/s", r["out"])
    if r["rc"] != 0 or not m:
        raise RuntimeError(f"batch run failed:\n{r['out'][-3000:]}")
    return {"what": what, "images": n, "load": load(), "end_to_end": n / r["wall_s"],
            "pipeline": float(m.group(3)), "wall_s": r["wall_s"], "peak_mb": r["peak_mb"]}  # fmt: skip


def predict_run(model: Path, data: Path, n: int) -> dict:
    out = WORK / "predict" / "submission.csv"
    r = run_measured([sys.executable, "predict.py", f"model={model}", f"input={data}",
                      f"output={out}", "tta=none", "hydra.run.dir=outputs/bench/batch/predict"])  # fmt: skip
    m = re.search(r"\(([\d.]+) images/s\)", r["out"])
    if r["rc"] != 0 or not m:
        raise RuntimeError(f"predict.py failed:\n{r['out'][-3000:]}")
    return {"what": "predict.py tta=none", "images": n, "load": load(),
            "end_to_end": n / r["wall_s"], "pipeline": float(m.group(1)),
            "wall_s": r["wall_s"], "peak_mb": r["peak_mb"]}  # fmt: skip


def raw_onnx(model: Path, photos: list[Path], seconds: float = 8.0) -> dict:
    """Images/s of ONNX Runtime alone on preprocessed tensors, batch 16, default threads."""
    from carclf.batch.engine import Engine, decode
    from carclf.batch.pipeline import model_spec
    from carclf.inference.onnx_backend import default_threads

    spec = model_spec(model, "auto", "cpu", 5, True)
    engine = Engine(spec, default_threads())
    import numpy as np

    x = np.stack([decode(str(p), spec.size, spec.resize)[0] for p in photos[:16]])
    engine.answer(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine.answer(x)
        n += len(x)
    rate = n / (time.perf_counter() - start)
    return {"what": f"raw ONNX Runtime, batch 16, {default_threads()} threads (no decode)",
            "load": load(), "pipeline": rate}  # fmt: skip


def ceiling(model: Path, photos: list[Path], batch: int, n: int = 1500) -> dict:
    """Decode + ONNX Runtime in one process, serially, at the job's batch size and decode."""
    import numpy as np

    from carclf.batch.engine import Engine, decode
    from carclf.batch.pipeline import model_spec
    from carclf.inference.onnx_backend import default_threads

    spec = model_spec(model, "auto", "cpu", 5, True)
    engine = Engine(spec, default_threads())
    engine.answer(np.stack([decode(str(p), spec.size, spec.resize)[0] for p in photos[:batch]]))
    todo = [str(photos[i % len(photos)]) for i in range(n)]
    start = time.perf_counter()
    for i in range(0, n, batch):
        engine.answer(np.stack([decode(p, spec.size, spec.resize)[0] for p in todo[i : i + batch]]))
    rate = n / (time.perf_counter() - start)
    return {"what": f"ceiling: decode + ONNX Runtime, one process, batch {batch}", "images": n,
            "load": load(), "pipeline": rate}  # fmt: skip


def pool_photos(n: int) -> tuple[Path, list[Path]]:
    """N symlinks to the real photos of stanford-cars-dev and -scale under distinct names."""
    shared = ROOT.parent / "shared/data"
    real = sorted((shared / "stanford-cars-dev").rglob("*.jpg"))
    real += sorted((shared / "stanford-cars-scale").rglob("*.jpg"))
    pool = WORK / f"pool-{n}"
    if not (pool.is_dir() and len(os.listdir(pool)) == n):
        shutil.rmtree(pool, ignore_errors=True)
        pool.mkdir(parents=True)
        for i in range(n):
            src = real[i % len(real)]
            (pool / f"{i:06d}{src.suffix}").symlink_to(src.resolve())
    return pool, real


# -- a multi-node cluster on this machine -----------------------------------------------------------
def pin(node, core: int) -> None:
    """Pin a node's raylet and every process under it to one core (children inherit it)."""
    from ray._private import ray_constants

    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    for p in tree(raylet):
        try:
            os.sched_setaffinity(p, {core})
        except OSError:
            pass


def cluster_run(model, pool, n, nodes: int, kill: bool = False) -> dict:
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    head = {"num_cpus": 0, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    cores = sorted(os.sched_getaffinity(0))
    out = WORK / f"out-cluster-{nodes}{'-kill' if kill else ''}"
    shutil.rmtree(out, ignore_errors=True)
    killed = []
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(nodes)]
        cluster.wait_for_nodes()
        for i, node in enumerate(workers):
            pin(node, cores[i % len(cores)])

        def tick(job):
            parts = out / "predictions"
            if kill and not killed and parts.is_dir():
                if len(list(parts.glob("r*.parquet"))) * 512 >= 0.1 * n:
                    pid = workers[1].all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
                    os.kill(pid, signal.SIGKILL)  # a raylet of the cluster this script started
                    killed.append(pid)
            return False

        r = run_measured(batch_cmd(model, pool, out, "--address", cluster.address), on_tick=tick)
    finally:
        cluster.shutdown()
    m = re.search(r"wrote (\d+) in ([\d.]+) s \(([\d.]+) images/s", r["out"])
    row = {"what": f"{nodes} worker node(s) x 1 CPU" + (", one node's raylet SIGKILLed at 10%" if kill else ""),
           "nodes": nodes, "images": n, "load": load(), "rc": r["rc"],
           "pipeline": float(m.group(3)) if m else None, "end_to_end": n / r["wall_s"],
           "killed": len(killed), **count(out, [p.name for p in pool.iterdir()])}  # fmt: skip
    return row


def count(out: Path, ids) -> dict:
    from carclf.batch.output import read_predictions

    df = read_predictions(out, ["id"])
    return {"rows": len(df), "duplicated": int(df["id"].duplicated().sum()),
            "lost": int(len(set(ids) - set(df["id"])))}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, help="bundle with model.onnx (default: a stand-in)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--pool", type=int, default=20000, help="photos in the pool of links (20000)")
    p.add_argument("--batch-size", type=int, default=8, help="the job's --batch-size (8)")
    p.add_argument("--cluster-pool", type=int, default=None,
                   help="photos for the multi-node table (default: --pool)")  # fmt: skip
    p.add_argument("--no-cluster", action="store_true", help="skip the multi-node table")
    p.add_argument("--no-box", action="store_true", help="skip the one-box table")
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    model = args.model or stand_in_bundle(WORK / "stand-in", args.data)
    pool, real = pool_photos(args.pool)
    print(
        f"model {model}; pool of {args.pool} ({len(real)} real photos); load {load()}", flush=True
    )
    box, nodes = [], []
    bs = ["--batch-size", str(args.batch_size)]
    if not args.no_box:
        for f in (lambda: raw_onnx(model, real), lambda: ceiling(model, real, args.batch_size),
                  lambda: predict_run(model, pool, args.pool),
                  lambda: batch_run("carclf.batch (local, no Ray)", model, pool, WORK / "out-local", args.pool, *bs),
                  lambda: batch_run("carclf.batch --ray (local Ray)", model, pool, WORK / "out-ray", args.pool, "--ray", *bs)):  # fmt: skip
            box.append(f())
            print(box[-1], flush=True)
    if not args.no_cluster:
        n = args.cluster_pool or args.pool
        cpool = pool if n == args.pool else pool_photos(n)[0]
        for k, kill in ((1, False), (2, False), (2, True)):
            nodes.append(cluster_run(model, cpool, n, k, kill))
            print(nodes[-1], flush=True)
    (WORK / "results.json").write_text(json.dumps({"box": box, "cluster": nodes}, indent=2))
    print_tables(box, nodes)
    return 0


def print_tables(box: list[dict], nodes: list[dict]) -> None:
    ceil = next((r["pipeline"] for r in box if r["what"].startswith("ceiling")), None)
    pred = next((r["pipeline"] for r in box if r["what"].startswith("predict.py")), None)
    print("\n| run | photos | load (1/5/15 min) | images/s end to end | images/s pipeline "
          "| of ceiling | of predict.py | peak MB |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r in box:
        e2e = f"{r['end_to_end']:.1f}" if "end_to_end" in r else "-"
        peak = f"{r['peak_mb']:.0f}" if "peak_mb" in r else "-"
        of_c = f"{r['pipeline'] / ceil:.0%}" if ceil and "end_to_end" in r else "-"
        of_p = f"{r['pipeline'] / pred:.0%}" if pred and "end_to_end" in r else "-"
        print(f"| {r['what']} | {r.get('images', '-')} | {r['load']} | {e2e} | "
              f"{r['pipeline']:.1f} | {of_c} | {of_p} | {peak} |")  # fmt: skip
    if not nodes:
        return
    one = next((r["pipeline"] for r in nodes if r["nodes"] == 1 and not r["killed"]), None)
    print("\n| cluster | photos | images/s pipeline | per node | efficiency | rows | lost | "
          "duplicated | exit |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r in nodes:
        rate = r["pipeline"] or 0.0
        eff = f"{rate / (r['nodes'] * one):.0%}" if one else "-"
        print(f"| {r['what']} | {r['images']} | {rate:.1f} | {rate / r['nodes']:.1f} | {eff} | "
              f"{r['rows']} | {r['lost']} | {r['duplicated']} | {r['rc']} |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
