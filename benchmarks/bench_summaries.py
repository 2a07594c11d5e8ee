"""What the TensorBoard summaries cost: a ``quick`` run with and without them, same seed.

Runs ``train.py experiment=quick`` on the data (stanford-cars-dev for the figure in
BENCHMARKS.md) ``--repeats`` times with the summaries callback (``conf/callbacks/
tensorboard_summaries.yaml``, on by default) and as many times without it
(``~callbacks.tensorboard_summaries``), alternating, each in a fresh process and run dir, the
TensorBoard logger on in both. Prints one row per run and the overhead: the difference of the
median wall times, and the time the callback itself measured (``summaries_seconds`` in
metrics.json: stage grids and cards, epoch scalars, end-of-run figures and HParams), as shares
of the run. Target: under 3%.

    python benchmarks/bench_summaries.py --data ../shared/data/stanford-cars-dev [--repeats 2]
    python benchmarks/bench_summaries.py --smoke   # seconds: a tiny synthetic run, plumbing only

The box is shared: compare within one invocation; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFF = "~callbacks.tensorboard_summaries"
SMOKE = [
    "data.image_size=64",
    "data.batch_size=8",
    "data.num_workers=0",
    "stages.head.epochs=1",
    "stages.top.epochs=1",
    "data.report=off",
    "trainer.enable_progress_bar=false",
]


def run_once(data: str, out: Path, summaries: bool, extra: list[str]) -> dict:
    args = [
        sys.executable,
        str(ROOT / "train.py"),
        "experiment=quick",
        f"data.path={data}",
        "seed=42",
        f"hydra.run.dir={out}",
        *extra,
    ]
    if not summaries:
        args.append(OFF)
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {
        "summaries": "on" if summaries else "off",
        "wall_s": wall,
        "train_s": m.get("train_seconds", float("nan")),
        "summaries_s": m.get("summaries_seconds", 0.0),
        "val_acc": m.get("val_acc", float("nan")),
        "tb_files": len(list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))),
    }


def table(rows: list[dict]) -> str:
    head = "| run | summaries | wall s | train s | summaries s (own) | val acc | event files |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        lines.append(
            f"| {i} | {r['summaries']} | {r['wall_s']:.1f} | {r['train_s']:.1f} | "
            f"{r['summaries_s']:.2f} | {r['val_acc']:.4f} | {r['tb_files']} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    on = [r["wall_s"] for r in rows if r["summaries"] == "on"]
    off = [r["wall_s"] for r in rows if r["summaries"] == "off"]
    own = [r["summaries_s"] / r["wall_s"] for r in rows if r["summaries"] == "on"]
    med_on, med_off = statistics.median(on), statistics.median(off)
    diff = (med_on - med_off) / med_off
    return (
        f"median wall time: {med_on:.1f} s with summaries, {med_off:.1f} s without: "
        f"{diff:+.1%}; the callback's own measured time: {statistics.median(own):.2%} of the "
        f"run (target < 3%)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="dataset (default: a synthetic one with --smoke)")
    p.add_argument("--repeats", type=int, default=2, help="runs per variant (alternating)")
    p.add_argument("--smoke", action="store_true", help="tiny settings: checks the script only")
    p.add_argument("overrides", nargs="*", help="more train.py overrides for every run")
    args = p.parse_args()
    extra = list(args.overrides) + (SMOKE if args.smoke else [])
    print(f"load average before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-summaries-") as tmp:
        data = args.data
        if data is None:
            if not args.smoke:
                raise SystemExit("--data is required (or --smoke)")
            from carclf.data.synthetic import make_dataset

            data = str(make_dataset(Path(tmp) / "cars", train_per_class=8, test_per_class=2))
        rows = []
        for i in range(args.repeats):
            for summaries in (True, False):
                out = Path(tmp) / f"{'on' if summaries else 'off'}-{i}"
                rows.append(run_once(data, out, summaries, extra))
                print(f"  run {len(rows)}: {rows[-1]}", flush=True)
    print(f"load average after: {os.getloadavg()}")
    print(f"\nquick recipe on {args.data or 'synthetic data'} ({' '.join(extra) or 'defaults'})\n")
    print(table(rows))
    print()
    print(summary(rows))


if __name__ == "__main__":
    main()
