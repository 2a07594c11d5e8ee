"""More data and more models on stanford-cars-dev: single model, + pseudo-labels, k-fold ensemble,
the ensemble distilled into one Lite0.

Every model trains on train/ only (its own validation split chooses checkpoints, temperatures and
the pseudo-label threshold) and is scored on test_upload/ with test-labels.csv, which nothing sees
before scoring. The pseudo-labels' precision against test-labels.csv is measured for the table only.

    python benchmarks/bench_more_models.py                        # the issue's table: cpu_best, 5 folds
    python benchmarks/bench_more_models.py --recipe quick --image-size 160 --folds 3 \
        --out outputs/bench-more                                  # a reduced setting
    [--steps single,folds,ensemble,pseudo,pseudo_run,distill,score] [--min-precision 0.9]

Steps are resumable: a run whose metrics.json exists is not trained again. Prints a markdown
table and writes table.md and results.json under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from carclf.data.layouts import read_dataset  # noqa: E402
from carclf.inference import Classifier  # noqa: E402
from carclf.inference.files import infer_paths  # noqa: E402

STEPS = ("single", "folds", "ensemble", "pseudo", "pseudo_run", "distill", "score")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def sh(*args: str, log: Path) -> float:
    """Run a project command, its output into ``log``; returns wall seconds."""
    print(f"$ {' '.join(args)}   (load {load()})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}); see {log}")
    return time.perf_counter() - t0


def train(out: Path, name: str, overrides: list[str]) -> None:
    run = out / name
    if (run / "metrics.json").is_file():
        return
    sh("train.py", *overrides, f"hydra.run.dir={run}", log=out / f"{name}.log")


def test_truth(data: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Test ids, paths and labels (model class index = dataset label index)."""
    index = read_dataset(data)
    labels = pd.read_csv(data / "test-labels.csv", dtype=str)
    value_to_label = {str(v): i for i, v in enumerate(index.label_values)}
    truth = dict(zip(labels["Id"], labels["Category"].map(value_to_label), strict=True))
    ids = index.test["id"].tolist()
    return ids, index.test["path"].tolist(), np.array([truth[i] for i in ids])


def score(model: Path, paths: list[str], labels: np.ndarray, workers: int) -> dict:
    """Test accuracy with the default TTA (multiscale) and single view, and single-view images/s."""
    clf = Classifier.load(model, backend="torch", device="cpu")
    out = {}
    for tta in ("none", "multiscale"):
        res = infer_paths(clf, paths, tta, num_workers=workers)
        pred = np.nanmean(res.logits, 1).argmax(1)
        out[f"acc_{tta}"] = float((pred == labels).mean())
        if tta == "none":
            out["images_per_s"] = len(paths) / res.seconds
    return out


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def pseudo_precision(csv: Path, data: Path) -> dict:
    """Precision of the kept pseudo-labels against test-labels.csv (reported, never used)."""
    kept = pd.read_csv(csv, dtype=str)
    truth = pd.read_csv(data / "test-labels.csv", dtype=str)
    truth = dict(zip(truth["Id"], truth["Category"], strict=True))
    right = [truth[Path(p).name] == lab for p, lab in zip(kept["path"], kept["label"], strict=True)]
    return {"kept": len(kept), "precision": float(np.mean(right)) if right else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/stanford-cars-dev")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs/bench-more")
    ap.add_argument("--recipe", default="cpu_best")
    ap.add_argument("--image-size", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--use-folds", type=int, default=None, help="ensemble only the first N folds")
    ap.add_argument("--min-precision", type=float, default=0.95)
    ap.add_argument("--extra-weight", type=float, default=0.5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", default=",".join(STEPS))
    args = ap.parse_args()
    out, data = args.out.resolve(), args.data.resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = args.steps.split(",")
    common = [
        f"experiment={args.recipe}",
        f"data.path={data}",
        "trainer.enable_progress_bar=false",
    ] + ([f"data.image_size={args.image_size}"] if args.image_size else [])
    folds = [f"fold{k}" for k in range(args.use_folds or args.folds)]
    pseudo_csv = out / "pseudo.csv"
    if "single" in steps:
        train(out, "single", common)
    if "folds" in steps:
        for k, name in enumerate(folds):
            train(out, name, [*common, f"data.fold={k}", f"data.num_folds={args.folds}"])
    if "ensemble" in steps and not (out / "ensemble" / "meta.json").is_file():
        runs = [str(out / f) for f in folds]
        sh("-m", "carclf.ensemble", *runs, "--out", str(out / "ensemble"), log=out / "ensemble.log")
    if "pseudo" in steps and not pseudo_csv.is_file():
        sh("-m", "carclf.pseudo", str(out / "single"), str(data / "test_upload"), "--out",
           str(pseudo_csv), "--min-precision", str(args.min_precision), log=out / "pseudo.log")  # fmt: skip
    if "pseudo_run" in steps:
        train(out, "single_pseudo",
              [*common, f"data.extra=[{pseudo_csv}]", f"data.extra_weight={args.extra_weight}"])  # fmt: skip
    if "distill" in steps:
        student = [c for c in common if not c.startswith("experiment=")]
        train(out, "distilled", ["experiment=distill", *student, f"teacher={out / 'ensemble'}",
                                 f"distill.unlabelled=[{data / 'test_upload'}]"])  # fmt: skip
    if "score" not in steps:
        return
    _, paths, labels = test_truth(data)
    rows = []

    def add(name: str, model: Path, seconds: float, note: str = "") -> None:
        cached = out / f"score_{model.name}.json"  # scores are kept: a rerun only scores new models
        meta = (
            model / "meta.json" if (model / "meta.json").is_file() else model / "bundle/meta.json"
        )
        if cached.is_file() and cached.stat().st_mtime > meta.stat().st_mtime:
            s = json.loads(cached.read_text())
        else:
            s = {**score(model, paths, labels, args.workers), "load": load()}
            cached.write_text(json.dumps(s))
        rows.append({"model": name, **s, "train_s": seconds, "note": note})
        print(f"{name}: {s}  (load {load()})", flush=True)

    add("single", out / "single", metrics(out / "single")["train_seconds"])
    if (out / "single_pseudo" / "metrics.json").is_file():
        p = pseudo_precision(pseudo_csv, data)
        add("+ pseudo-labels", out / "single_pseudo",
            metrics(out / "single")["train_seconds"] + metrics(out / "single_pseudo")["train_seconds"],
            f"{p['kept']} test photos pseudo-labelled, precision {p['precision']:.3f} vs test-labels.csv")  # fmt: skip
    if not all((out / f / "metrics.json").is_file() for f in folds):
        folds = []  # members still training: no ensemble or student rows yet
    fold_s = sum(metrics(out / f)["train_seconds"] for f in folds)
    if folds and (out / "ensemble" / "meta.json").is_file():
        add(f"{len(folds)}-model fold ensemble", out / "ensemble", fold_s)
    if folds and (out / "distilled" / "metrics.json").is_file():
        add("ensemble distilled into one Lite0", out / "distilled",
            fold_s + metrics(out / "distilled")["train_seconds"])  # fmt: skip
    lines = [
        "| model | test acc, multiscale TTA | test acc, single view | training wall time (s) | inference images/s (single view) | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['acc_multiscale']:.4f} | {r['acc_none']:.4f} | {r['train_s']:.0f} "
            f"| {r['images_per_s']:.1f} | {r['note']} |"
        )
    table = "\n".join(lines)
    print(table)
    (out / "table.md").write_text(
        table + f"\n\nbox load at the end: {load()}, cpus: {os.cpu_count()}\n"
    )
    (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
