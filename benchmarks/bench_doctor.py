"""Label doctor benchmark: does it find labels flipped on purpose, and does leaving them out help?

On stanford-cars-dev's train split, ``--noise`` (5%) of the labels are flipped to another class
at random (seeded; the flips are known). The doctor runs on the noisy labels; its flags are scored
against the flips (precision, recall). Then a classifier is trained three times, on the clean
labels, on the noisy labels, and on the noisy labels without the flagged photos, and scored on
test_upload with test-labels.csv (which nothing else sees):

* ``linear probe`` (always): logistic regression on the frozen Lite0 features the doctor computed;
* ``quick`` (``--quick``): the carclf default recipe, ``train.py experiment=quick`` with
  ``data.exclude=label_issues.csv`` for the third run (minutes each on a CPU).

The report's own run time (no doctor) is measured too.

    python benchmarks/bench_doctor.py [--data ../shared/data/stanford-cars-dev] [--noise 0.05]
        [--seed 0] [--quick] [--out outputs/bench-doctor]

Prints a markdown table and writes it and a JSON under --out.
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


def test_truth(data: Path, index: DatasetIndex) -> tuple[list[str], np.ndarray]:
    truth = pd.read_csv(data / "test-labels.csv", dtype=str)
    to_label = {str(v): i for i, v in enumerate(index.label_values)}
    by_id = dict(zip(truth["Id"], truth["Category"].map(to_label), strict=True))
    return index.test["path"].tolist(), np.array([by_id[i] for i in index.test["id"]])


def probe_accuracy(xtr, ytr, xte, yte) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    return float((clf.fit(xtr, ytr).predict(xte) == yte).mean())


def quick_accuracy(
    name: str, train_csv: Path, exclude: Path | None, out: Path, data: Path, index
) -> float:
    """Train the quick recipe on a path,label CSV and score it on test_upload."""
    run = out / name
    if not (run / "metrics.json").is_file():
        cmd = [
            sys.executable,
            str(ROOT / "train.py"),
            "experiment=quick",
            f"data.path={train_csv}",
            f"hydra.run.dir={run}",
            "trainer.enable_progress_bar=false",
            "data.report=off",
        ] + ([f"data.exclude={exclude}"] if exclude else [])
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    from carclf import Classifier

    clf = Classifier.load(run, device="cpu", backend="torch")
    paths, truth = test_truth(data, index)
    # The CSV layout numbers classes by the label values it saw: map back to ours.
    values = [int(v) for v in clf.meta.label_values]
    ours = {v: i for i, v in enumerate(index.label_values)}
    pred = np.array([ours[values[k]] for k in clf.predict_proba(paths).argmax(1)])
    return float((pred == truth).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data" / "stanford-cars-dev"
    )
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="also train the quick recipe 3 times")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-doctor")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    res: dict = {"load_at_start": round(load, 2)}

    t0 = time.perf_counter()
    index, notes = read_for_report(args.data)
    write_report(index, args.out / "report", notes=notes)
    res["report_seconds"] = round(time.perf_counter() - t0, 1)

    index = read_dataset(args.data)
    noisy, flips = flip_labels(index, args.noise, args.seed)
    t0 = time.perf_counter()
    result = doctor.diagnose(noisy, cache_dir=args.out)
    res["doctor_seconds"] = round(time.perf_counter() - t0, 1)
    res["doctor_feature_seconds"] = round(result.feature_seconds, 1)
    doctor.write_issues(result, args.out / doctor.ISSUES_FILE)
    flagged = set(result.issues["path"])
    flipped = set(noisy.train["path"].iloc[flips])
    hits = len(flagged & flipped)
    res |= {
        "photos": len(noisy.train),
        "flipped": len(flipped),
        "flagged": len(flagged),
        "precision": round(hits / max(len(flagged), 1), 3),
        "recall": round(hits / len(flipped), 3),
        "oof_accuracy": round(result.oof_accuracy, 3),
    }
    print(json.dumps(res), file=sys.stderr, flush=True)

    # Linear probe on the doctor's cached features: clean, noisy, noisy minus flagged.
    paths = noisy.train["path"].tolist()
    feats, valid = doctor.pooled_features(paths, cache_dir=args.out)
    test_paths, truth = test_truth(args.data, index)
    test_feats, _ = doctor.pooled_features(test_paths, cache_dir=args.out)
    keep = np.array([p not in flagged for p in paths])
    clean_y, noisy_y = index.train["label"].to_numpy(), noisy.train["label"].to_numpy()
    res["probe_clean"] = probe_accuracy(feats, clean_y, test_feats, truth)
    res["probe_noisy"] = probe_accuracy(feats, noisy_y, test_feats, truth)
    res["probe_excluded"] = probe_accuracy(feats[keep], noisy_y[keep], test_feats, truth)

    if args.quick:
        csvs = {}
        for name, labels in (("clean", clean_y), ("noisy", noisy_y)):
            csvs[name] = args.out / f"train_{name}.csv"
            pd.DataFrame({"path": paths, "label": [index.label_values[k] for k in labels]}).to_csv(
                csvs[name], index=False
            )
        issues = args.out / doctor.ISSUES_FILE
        res["quick_clean"] = quick_accuracy(
            "quick_clean", csvs["clean"], None, args.out, args.data, index
        )
        res["quick_noisy"] = quick_accuracy(
            "quick_noisy", csvs["noisy"], None, args.out, args.data, index
        )
        res["quick_excluded"] = quick_accuracy(
            "quick_excluded", csvs["noisy"], issues, args.out, args.data, index
        )
    res["load_at_end"] = round(os.getloadavg()[0], 2)
    (args.out / "doctor.json").write_text(json.dumps(res, indent=1))
    lines = [
        "| noise | flipped | flagged | precision | recall | OOF accuracy | doctor s | report s |",
        "|---|---|---|---|---|---|---|---|",
        f"| {args.noise:.0%} | {res['flipped']} | {res['flagged']} | {res['precision']:.3f} | "
        f"{res['recall']:.3f} | {res['oof_accuracy']:.3f} | {res['doctor_seconds']:.0f} | "
        f"{res['report_seconds']:.1f} |",
        "",
        "| classifier | clean labels | noisy labels | noisy, flagged excluded |",
        "|---|---|---|---|",
    ]
    for kind in ("probe", "quick"):
        if f"{kind}_clean" in res:
            lines.append(
                f"| {kind} | {res[f'{kind}_clean']:.3f} | {res[f'{kind}_noisy']:.3f} | "
                f"{res[f'{kind}_excluded']:.3f} |"
            )
    table = "\n".join(lines)
    (args.out / "doctor.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
