"""Label doctor benchmark: does it find labels flipped on purpose, and does acting on its flags help?

On stanford-cars-dev's train split, a share of the labels (``--noise``: 2%, 5% and 10%) is moved
to another class at random (``--seeds`` 0 1 2; the flips are known). The doctor runs on the noisy
labels with its defaults; its flags are scored against the flips (precision, recall, mean and
range over the seeds). Its features are computed once (the first run, timed cold in a fresh
``--out``) and cached; every other run pays the folds only.

Then, at ``--train-noise`` (5%) and the first seed, a classifier is trained on the clean labels,
on the noisy labels, and on the noisy labels with the flagged photos excluded (and relabelled to
the doctor's suggestion), and scored on test_upload with test-labels.csv (which nothing else
sees):

* ``linear probe`` (always): logistic regression on the doctor's own frozen features;
* ``quick`` (``--quick``): the carclf default recipe, ``train.py experiment=quick`` with
  ``data.exclude=label_issues.csv`` (``data.relabel=`` for the relabelled row) (minutes each).

    python benchmarks/bench_doctor.py [--data ../shared/data/stanford-cars-dev]
        [--noise 0.02 0.05 0.10] [--seeds 0 1 2] [--quick] [--relabel] [--out outputs/bench-doctor]

``--classes 8 --quick-override stages.head.epochs=1 ...`` make a small smoke run of the same
code. Prints markdown tables and writes them and a JSON under --out.
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

from carclf.data.layouts import DatasetIndex, read_dataset  # noqa: E402
from carclf.inspect import doctor  # noqa: E402
from carclf.inspect.features import pooled_features  # noqa: E402
from carclf.inspect.report import read_for_report, write_report  # noqa: E402


def flip_labels(index: DatasetIndex, share: float, seed: int) -> tuple[DatasetIndex, np.ndarray]:
    """A copy of ``index`` with ``share`` of its train labels moved to another random class."""
    rng = np.random.default_rng(seed)
    labels = index.train["label"].to_numpy().copy()
    flips = np.sort(rng.choice(len(labels), size=round(share * len(labels)), replace=False))
    shift = rng.integers(1, index.num_classes, size=len(flips))
    labels[flips] = (labels[flips] + shift) % index.num_classes
    noisy = DatasetIndex(**{**index.__dict__, "train": index.train.assign(label=labels)})
    return noisy, flips


def subset(index: DatasetIndex, classes: int) -> DatasetIndex:
    """The first ``classes`` classes of ``index`` (train and test), for a smoke run."""
    if not classes:
        return index
    train = index.train[index.train["label"] < classes].reset_index(drop=True)
    ids = set(_truth_frame(index)[lambda t: t["label"] < classes]["Id"])
    test = index.test[index.test["id"].isin(ids)].reset_index(drop=True)
    return DatasetIndex(**{**index.__dict__, "train": train, "test": test,
                           "class_names": index.class_names[:classes],
                           "label_values": index.label_values[:classes]})  # fmt: skip


def _truth_frame(index: DatasetIndex) -> pd.DataFrame:
    truth = pd.read_csv(Path(index.root) / "test-labels.csv", dtype=str)
    to_label = {str(v): i for i, v in enumerate(index.label_values)}
    return truth.assign(label=truth["Category"].map(to_label).fillna(-1).astype(int))


def test_truth(index: DatasetIndex) -> tuple[list[str], np.ndarray]:
    t = _truth_frame(index)
    by_id = dict(zip(t["Id"], t["label"], strict=True))
    return index.test["path"].tolist(), np.array([by_id[i] for i in index.test["id"]])


def probe_accuracy(xtr, ytr, xte, yte) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    return float((clf.fit(xtr, ytr).predict(xte) == yte).mean())


def quick_accuracy(name: str, train_csv: Path, extra: list[str], args, index) -> float:
    """Train the quick recipe on a path,label CSV and score it on test_upload."""
    run = args.out / name
    if not (run / "metrics.json").is_file():
        cmd = [sys.executable, str(ROOT / "train.py"), "experiment=quick",
               f"data.path={train_csv}", f"hydra.run.dir={run}",
               "trainer.enable_progress_bar=false", "data.report=off",
               *extra, *args.quick_override]  # fmt: skip
        print(f"training {name} ...", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    from carclf import Classifier

    clf = Classifier.load(run, device="cpu", backend="torch")
    paths, truth = test_truth(index)
    # The CSV layout numbers classes by the label values it saw: map back to ours.
    values = [str(v) for v in clf.meta.label_values]
    ours = {str(v): i for i, v in enumerate(index.label_values)}
    pred = np.array([ours[values[k]] for k in clf.predict_proba(paths).argmax(1)])
    return float((pred == truth).mean())


def score_flags(index: DatasetIndex, args) -> tuple[list[dict], dict]:
    """Precision and recall of the doctor's flags at each noise rate and seed."""
    runs, kept = [], {}
    for noise in args.noise:
        for seed in args.seeds:
            noisy, flips = flip_labels(index, noise, seed)
            t0 = time.perf_counter()
            result = doctor.diagnose(noisy, cache_dir=args.out / "cache")
            seconds = time.perf_counter() - t0
            flagged = set(result.issues["path"])
            flipped = set(noisy.train["path"].iloc[flips])
            hits = len(flagged & flipped)
            runs.append({
                "noise": noise, "seed": seed, "flipped": len(flipped), "flagged": len(flagged),
                "precision": hits / max(len(flagged), 1), "recall": hits / max(len(flipped), 1),
                "oof_accuracy": result.oof_accuracy, "C": result.C, "seconds": round(seconds, 1),
                "feature_seconds": round(result.feature_seconds, 1),
                "fit_seconds": round(result.fit_seconds, 1),
            })  # fmt: skip
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
            if noise == args.train_noise and seed == args.seeds[0]:
                kept = {"noisy": noisy, "result": result}
    return runs, kept


def training_effect(index: DatasetIndex, kept: dict, args) -> dict:
    """Test accuracy of the probe (and the quick recipe) on clean, noisy, and acted-on labels."""
    noisy, result = kept["noisy"], kept["result"]
    issues = args.out / doctor.ISSUES_FILE
    doctor.write_issues(result, issues)
    flagged = set(result.issues["path"])
    paths = noisy.train["path"].tolist()
    opts = dict(doctor.DEFAULTS, cache_dir=args.out / "cache")
    feats, _ = pooled_features(paths, opts["backbone"], opts["weights"], opts["image_size"],
                               views=opts["views"], cache_dir=opts["cache_dir"])  # fmt: skip
    test_paths, truth = test_truth(index)
    test_feats, _ = pooled_features(test_paths, opts["backbone"], opts["weights"],
                                    opts["image_size"], views=opts["views"],
                                    cache_dir=opts["cache_dir"])  # fmt: skip
    keep = np.array([p not in flagged for p in paths])
    clean_y, noisy_y = index.train["label"].to_numpy(), noisy.train["label"].to_numpy()
    number = {str(v): k for k, v in enumerate(index.label_values)}
    fixed_y = noisy_y.copy()
    where = {p: i for i, p in enumerate(paths)}
    for p, s in zip(result.issues["path"], result.issues["suggested_label"], strict=True):
        fixed_y[where[p]] = number[str(s)]
    res = {
        "probe_clean": probe_accuracy(feats, clean_y, test_feats, truth),
        "probe_noisy": probe_accuracy(feats, noisy_y, test_feats, truth),
        "probe_excluded": probe_accuracy(feats[keep], noisy_y[keep], test_feats, truth),
        "probe_relabelled": probe_accuracy(feats, fixed_y, test_feats, truth),
    }
    if args.quick:
        csvs = {}
        for name, labels in (("clean", clean_y), ("noisy", noisy_y)):
            csvs[name] = args.out / f"train_{name}.csv"
            pd.DataFrame({"path": paths, "label": [index.label_values[k] for k in labels]}).to_csv(
                csvs[name], index=False
            )
        res["quick_clean"] = quick_accuracy("quick_clean", csvs["clean"], [], args, index)
        res["quick_noisy"] = quick_accuracy("quick_noisy", csvs["noisy"], [], args, index)
        res["quick_excluded"] = quick_accuracy(
            "quick_excluded", csvs["noisy"], [f"data.exclude={issues}"], args, index
        )
        if args.relabel:
            res["quick_relabelled"] = quick_accuracy(
                "quick_relabelled", csvs["noisy"], [f"data.relabel={issues}"], args, index
            )
    return res


def _recovered(res: dict, kind: str, acted: str) -> str:
    lost = res[f"{kind}_clean"] - res[f"{kind}_noisy"]
    if f"{kind}_{acted}" not in res or lost <= 0:
        return "-"
    return f"{(res[f'{kind}_{acted}'] - res[f'{kind}_noisy']) / lost:.2f}"


def tables(runs: list[dict], res: dict, args) -> str:
    lines = [
        "| noise | flipped | flagged | precision | recall | OOF accuracy | C | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    df = pd.DataFrame(runs)
    for noise, g in df.groupby("noise"):

        def cell(col, g=g):
            return f"{g[col].mean():.3f} ({g[col].min():.2f}-{g[col].max():.2f})"

        lines.append(
            f"| {noise:.0%} | {g['flipped'].iloc[0]} | {g['flagged'].mean():.0f} | "
            f"{cell('precision')} | {cell('recall')} | {g['oof_accuracy'].mean():.3f} | "
            f"{'/'.join(str(c) for c in g['C'])} | {len(g)} |"
        )
    first = runs[0]
    lines += [
        "",
        f"Doctor wall time, first run (features cold): {first['seconds']:.0f} s (features "
        f"{first['feature_seconds']:.0f} s, folds {first['fit_seconds']:.0f} s) for "
        f"{len(args.index.train)} photos; later runs (features cached): "
        f"median {np.median([r['seconds'] for r in runs[1:]] or [0]):.0f} s. "
        f"Report (no doctor): {res['report_seconds']:.1f} s. Load {res['load_at_start']} -> "
        f"{res['load_at_end']}.",
        "",
        f"| classifier (test accuracy, {args.train_noise:.0%} flipped, seed {args.seeds[0]}) | "
        "clean labels | noisy labels | flagged excluded | flagged relabelled | recovered "
        "(excluded / relabelled) |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("probe", "quick"):
        if f"{kind}_clean" in res:
            cells = [f"{res[k]:.3f}" if k in res else "-"
                     for k in (f"{kind}_{s}" for s in ("clean", "noisy", "excluded", "relabelled"))]  # fmt: skip
            lines.append(
                f"| {kind} | {' | '.join(cells)} | {_recovered(res, kind, 'excluded')} / "
                f"{_recovered(res, kind, 'relabelled')} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data" / "stanford-cars-dev"
    )
    p.add_argument("--noise", type=float, nargs="+", default=[0.02, 0.05, 0.10])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-noise", type=float, default=0.05)
    p.add_argument("--quick", action="store_true", help="also train the quick recipe 3 times")
    p.add_argument("--relabel", action="store_true", help="and a 4th time, flags relabelled")
    p.add_argument("--quick-override", action="append", default=[], help="extra train override")
    p.add_argument("--classes", type=int, default=0, help="only the first N classes (smoke)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-doctor")
    args = p.parse_args()
    if args.train_noise not in args.noise:
        args.noise.append(args.train_noise)
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"load_at_start": round(os.getloadavg()[0], 2)}

    t0 = time.perf_counter()
    index, notes = read_for_report(args.data)
    write_report(index, args.out / "report", notes=notes)
    res["report_seconds"] = round(time.perf_counter() - t0, 1)

    args.index = index = subset(read_dataset(args.data), args.classes)
    runs, kept = score_flags(index, args)
    res |= training_effect(index, kept, args)
    res["load_at_end"] = round(os.getloadavg()[0], 2)
    (args.out / "doctor.json").write_text(json.dumps({"runs": runs, **res}, indent=1))
    table = tables(runs, res, args)
    (args.out / "doctor.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
