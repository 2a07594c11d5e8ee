"""Compare candidate CPU recipes by VALIDATION accuracy (the test labels choose nothing).

Each candidate is a set of train.py overrides with explicit views and epochs (no budget planning),
so the comparison is about what the recipe learns, not about the machine it ran on. That makes it
possible to run the search where it is fast (a GPU box, many candidates at once, ``cache=on``)
and then let the budget planner fit the winner into 15 minutes on 2 CPU cores.

    python benchmarks/bench_recipe_search.py --data <stanford-cars-dev> --out outputs/search \
        [--parallel 3] [--only A,B] [--set trainer.accelerator=gpu ...] [--weights lite2=<file>]

Prints a table (candidate, overrides, val accuracy, val loss, epochs, wall time) and writes
``results.csv`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cand(model: str, size: int, views: int, top_epochs: int, groups: int = 2, **extra) -> list:
    o = [
        "experiment=cpu_best",
        f"model={model}",
        f"data.image_size={size}",
        f"stages.head.cache_views={views}",
        f"stages.top.cache_views={views}",
        f"stages.top.epochs={top_epochs}",
        f"stages.top.trainable_groups={groups}",
        "trainer.time_budget_min=null",
        "stages.head.cache=on",
        "stages.top.cache=on",
    ]
    return o + [f"{k.replace('__', '.')}={v}" for k, v in extra.items()]


# Every candidate fits 15 minutes on 2 cores by the rates of benchmarks/bench_cache.py.
CANDIDATES = {
    "A": _cand("lite2", 260, 12, 30),
    "B": _cand("lite2", 288, 10, 30),
    "C": _cand("lite2", 260, 8, 12, groups=3),
    "D": _cand("lite2", 260, 12, 30, model__mixup=0.2, model__mix_prob=0.5),
    "E": _cand("lite2", 260, 16, 40),
    "F": _cand("lite2", 224, 16, 40),
    "G": _cand("lite2", 260, 12, 30, model__head__dropout=0.4, stages__top__lr=3.0e-3),
}


def run(name: str, overrides: list, args) -> dict:
    out = Path(args.out) / name
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        f"data.path={args.data}",
        *overrides,
        *args.set,
        f"hydra.run.dir={out}",
    ]
    for spec in args.weights:
        model, path = spec.split("=", 1)
        if f"model={model}" in overrides:
            cmd.append(f"model.weights={path}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    (Path(args.out) / f"{name}.log").write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
    row = {
        "candidate": name,
        "overrides": " ".join(o for o in overrides[1:]),
        "wall_s": round(wall),
    }
    if proc.returncode != 0:
        return {**row, "val_acc": None, "error": proc.stderr.strip().splitlines()[-1:]}
    m = json.loads((out / "metrics.json").read_text())
    return {
        **row,
        "val_acc": m.get("val_acc"),
        "val_loss": m.get("val_loss"),
        "epochs": m.get("epochs"),
        "cache_s": round(sum(m.get("cache_seconds", {}).values())),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="outputs/recipe-search")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--only", default="")
    p.add_argument("--set", nargs="*", default=[], help="extra overrides for every candidate")
    p.add_argument("--weights", nargs="*", default=[], help="model=<weights file> pairs")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    names = [n for n in CANDIDATES if not args.only or n in args.only.split(",")]
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda n: run(n, CANDIDATES[n], args), names))
    import pandas as pd

    table = pd.DataFrame(rows)
    table.to_csv(Path(args.out) / "results.csv", index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
