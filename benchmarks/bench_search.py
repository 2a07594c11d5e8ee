"""Optuna search on a real dataset: wall time with and without pruning, best trial vs the untuned recipe.

Runs two ``hparams_search=cpu_quick`` searches side by side (same seed, same box load): one with
the preset's median pruner, one with ``hydra.sweeper.pruner=null``. Then scores the untuned
recipe (trial 0, enqueued by the preset) and each search's best trial on the test split,
single-view, once each. The test labels choose nothing.

    .venv/bin/python benchmarks/bench_search.py --data ../shared/data/stanford-cars-dev \
        --out outputs/bench/search --trials 6 --sizes 64,80,96 --budget-min 20 --startup 2 \
        stages.head.epochs=2 stages.top.epochs=5 hydra.sweeper.pruner.n_warmup_steps=2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_training import test_truth  # noqa: E402

from carclf.inference.classifier import Classifier  # noqa: E402

BASELINE = (  # the quick recipe's own values (conf/experiment/quick.yaml, conf/stage/*.yaml)
    "{stages.head.lr:3.0e-3,stages.top.lr:2.0e-3,stages.top.backbone_lr_scale:0.5,"
    "stages.top.trainable_groups:2,stages.top.cache_views:4,model.head.dropout:0.2,"
    "model.head.hidden:'[]',model.label_smoothing:0.1,model.mixup:0.0,data.image_size:IMG}"
)


def search_cmd(args, name: str, pruning: bool) -> list[str]:
    sizes = [int(s) for s in args.sizes.split(",")]
    cmd = [sys.executable, "train.py", "-m", "hparams_search=cpu_quick", f"data.path={args.data}"]
    cmd += [
        "data.check=false",  # the dataset was checked once before; not every trial
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweep.dir={args.out / name}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.sampler.n_startup_trials={args.startup}",
        f"hydra.sweeper.pruner.n_startup_trials={args.startup}",
        f"trainer.time_budget_min={args.budget_min}",
        f"data.image_size=choice({','.join(map(str, sizes))})",
        "stages.top.cache_views=choice(2,4)",
        f"hydra.sweeper.enqueue=[{BASELINE.replace('IMG', str(sizes[len(sizes) // 2]))}]",
    ]
    cmd += args.overrides
    if not pruning:
        cmd.append("hydra.sweeper.pruner=null")
    return cmd


def test_accuracy(run_dir: Path, data: Path) -> float:
    paths, truth = test_truth(data)
    probs = Classifier.load(run_dir, tta="none").predict_proba(paths)
    return float((probs.argmax(1) == truth).mean())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("outputs/bench/search"))
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--startup", type=int, default=3, help="TPE and pruner start-up trials")
    p.add_argument("--budget-min", type=float, default=8.0)
    p.add_argument("--sizes", default="96,112,128")
    p.add_argument("overrides", nargs="*", help="more train.py overrides for every trial")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {"pruned": True, "no_pruning": False}
    procs, started, wall = {}, {}, {}
    for name, pruning in runs.items():
        log = open(args.out / f"{name}.log", "w")  # noqa: SIM115
        started[name] = time.perf_counter()
        procs[name] = subprocess.Popen(
            search_cmd(args, name, pruning), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    while any(p.poll() is None for p in procs.values()):
        for name, proc in procs.items():
            if proc.poll() is not None and name not in wall:
                wall[name] = time.perf_counter() - started[name]
        time.sleep(2)
    for name in procs:
        wall.setdefault(name, time.perf_counter() - started[name])
    rows = []
    for name in runs:
        trials = pd.read_csv(args.out / name / "trials.csv").set_index("trial")
        done = trials[trials["state"] == "complete"]
        best = int(done["value"].idxmax())
        rows.append(
            {
                "search": name,
                "wall_s": round(wall[name], 1),
                "trials": dict(trials["state"].value_counts()),
                "baseline_val": float(trials.loc[0, "value"]),
                "baseline_test": test_accuracy(args.out / name / "0", args.data),
                "best_trial": best,
                "best_val": float(done.loc[best, "value"]),
                "best_test": test_accuracy(args.out / name / str(best), args.data),
                "best_overrides": trials.loc[best, "overrides"],
                "epochs_reported": int(trials["epochs_reported"].sum()),
            }
        )
    (args.out / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    print(json.dumps(rows, indent=1, default=str))
    saved = 1 - wall["pruned"] / wall["no_pruning"]
    print(
        f"wall time saved by pruning: {saved:.0%}; epochs {np.array([r['epochs_reported'] for r in rows])}"
    )


if __name__ == "__main__":
    main()
