"""Batch inference: carclf.batch (Ray Data) vs predict.py, peak memory, and kills.

    .venv/bin/python benchmarks/bench_batch.py [--model BUNDLE] [--pool N] [--no-kills]

Measures, on stanford-cars-dev's 617 ``test_upload`` photos and on a pool of N links to them under
new names (the decode and model work of N distinct photos, without N copies on disk):

* images/s of ``predict.py tta=none`` (one process: DataLoader decode + ONNX Runtime) and of
  ``python -m carclf.batch`` with 1 and 2 local workers, end to end (command start to exit, Ray
  start-up and model loads included) and in the pipeline alone (the batch job's own report);
* raw ONNX Runtime throughput (preprocessed tensors in, logits out, batch 16), the ceiling;
* peak memory: the largest sum of PSS (proportional set size: shared pages such as Ray's object
  store counted once) over the command's process tree, sampled every 0.25 s;
* rows lost or duplicated (617 photos) after one model actor is SIGKILLed mid-run (Ray restarts it and
  retries its tasks), and after the whole job (driver and its local Ray) is SIGKILLed and rerun.

Every figure is only meaningful beside the box's load, which is printed with it. The model is
``--model`` (any bundle with model.onnx is fine: speed does not depend on training), else a
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


def batch_cmd(model: Path, inputs: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "carclf.batch", str(model), str(inputs), str(out),
            "--workers", str(workers), "--no-progress"]  # fmt: skip


def batch_run(model: Path, inputs: Path, out: Path, workers: int, n: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    r = run_measured(batch_cmd(model, inputs, out, workers))
    m = re.search(r"wrote (\d+) in ([\d.]+) s \(([\d.]+) images/s", r["out"])
    if r["rc"] != 0 or not m:
        raise RuntimeError(f"batch run failed:\n{r['out'][-3000:]}")
    return {"what": f"carclf.batch, {workers} worker(s)", "images": n, "load": load(),
            "end_to_end": n / r["wall_s"], "pipeline": float(m.group(3)),
            "wall_s": r["wall_s"], "peak_mb": r["peak_mb"]}  # fmt: skip


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
    import torch

    from carclf.data.images import load_rgb
    from carclf.data.presets import EvalPreset
    from carclf.inference.onnx_backend import OnnxBackend, default_threads
    from carclf.models.bundle import read_meta

    meta = read_meta(model)
    preset = EvalPreset(size=meta.image_size, mean=meta.mean, std=meta.std, resize=meta.resize)
    x = torch.stack([preset(load_rgb(p)) for p in photos[:16]])
    backend = OnnxBackend(model / "model.onnx")
    backend(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        backend(x)
        n += len(x)
    rate = n / (time.perf_counter() - start)
    return {"what": f"raw ONNX Runtime, batch 16, {default_threads()} threads", "load": load(),
            "pipeline": rate}  # fmt: skip


# -- kills -----------------------------------------------------------------------------------------
def count(out: Path, ids) -> dict:
    from carclf.batch.output import read_predictions

    df = read_predictions(out, ["id"])
    return {"rows": len(df), "duplicated": int(df["id"].duplicated().sum()),
            "lost": int(len(set(ids) - set(df["id"])))}  # fmt: skip


def worker_kill(model: Path, inputs: Path, out: Path, ids) -> dict:
    """SIGKILL the model actor once some rows are committed; the job must still finish whole."""
    from carclf.batch.output import done_ids

    shutil.rmtree(out, ignore_errors=True)
    killed: list[int] = []

    def tick(job):
        if not killed and len(done_ids(out)) >= 0.1 * len(ids):
            actors = [p for p in tree(job.pid) if "Predictor" in cmdline(p)]
            for p in actors[:1]:
                os.kill(p, signal.SIGKILL)  # a Ray worker process of the job started above
                killed.append(p)
        return False

    r = run_measured(batch_cmd(model, inputs, out, 1), on_tick=tick)
    return {"what": "one model actor SIGKILLed at 10%", "killed": len(killed), "rc": r["rc"],
            **count(out, ids)}  # fmt: skip


def job_kill(model: Path, inputs: Path, out: Path, ids) -> dict:
    """SIGKILL the whole job (driver + its local Ray) at ~30%, then rerun the same command."""
    from carclf.batch.output import done_ids

    shutil.rmtree(out, ignore_errors=True)
    r1 = run_measured(batch_cmd(model, inputs, out, 1),
                      on_tick=lambda job: len(done_ids(out)) >= 0.3 * len(ids))  # fmt: skip
    before = len(done_ids(out))
    r2 = run_measured(batch_cmd(model, inputs, out, 1))
    m = re.search(r"(\d+) were already done", r2["out"])
    return {"what": "whole job SIGKILLed at ~30%, rerun", "killed_rc": r1["rc"],
            "committed_before_rerun": before, "skipped_by_rerun": int(m.group(1)) if m else None,
            "rc": r2["rc"], **count(out, ids)}  # fmt: skip


def make_pool(photos: list[Path], n: int) -> Path:
    pool = WORK / f"pool-{n}"
    if pool.is_dir() and len(list(pool.iterdir())) == n:
        return pool
    shutil.rmtree(pool, ignore_errors=True)
    pool.mkdir(parents=True)
    for i in range(n):
        src = photos[i % len(photos)]
        (pool / f"{i:06d}{src.suffix}").symlink_to(src.resolve())
    return pool


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, help="bundle with model.onnx (default: a stand-in)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--pool", type=int, default=20000, help="photos in the pool of links (20000)")
    p.add_argument("--no-kills", action="store_true", help="skip the kill runs")
    p.add_argument("--no-pool", action="store_true", help="skip the pool runs")
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    model = args.model or stand_in_bundle(WORK / "stand-in", args.data)
    test = args.data / "test_upload"
    photos = sorted(test.glob("*.jpg"))
    print(f"model {model}; {len(photos)} test photos; load {load()}", flush=True)

    rows = [raw_onnx(model, photos)]
    print(rows[-1], flush=True)
    rows.append(predict_run(model, args.data, len(photos)))
    print(rows[-1], flush=True)
    for w in (1, 2):
        rows.append(batch_run(model, test, WORK / f"out-617-w{w}", w, len(photos)))
        print(rows[-1], flush=True)
    kills = []
    if not args.no_pool:
        pool = make_pool(photos, args.pool)
        rows.append(predict_run(model, pool, args.pool))
        print(rows[-1], flush=True)
        for w in (1, 2):
            rows.append(batch_run(model, pool, WORK / f"out-pool-w{w}", w, args.pool))
            print(rows[-1], flush=True)
    if not args.no_kills:
        from carclf.batch.inputs import list_inputs

        ids = list_inputs([test])["id"].tolist()
        kills.append(worker_kill(model, test, WORK / "out-kill-worker", ids))
        print(kills[-1], flush=True)
        kills.append(job_kill(model, test, WORK / "out-kill-job", ids))
        print(kills[-1], flush=True)
    (WORK / "results.json").write_text(json.dumps({"rows": rows, "kills": kills}, indent=2))

    print(
        "\n| run | images | load (1/5/15 min) | images/s end to end | images/s pipeline | peak MB |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        e2e = f"{r['end_to_end']:.1f}" if "end_to_end" in r else "-"
        peak = f"{r['peak_mb']:.0f}" if "peak_mb" in r else "-"
        print(f"| {r['what']} | {r.get('images', '-')} | {r['load']} | {e2e} | "
              f"{r['pipeline']:.1f} | {peak} |")  # fmt: skip
    for k in kills:
        print(k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
