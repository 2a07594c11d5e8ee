"""Training benchmark on stanford-cars-dev: carclf recipes vs. a linear probe and fastai's fine_tune.

All methods use the offline Lite0 backbone on the CPU, train on train/ only (carclf holds out its
own 15% validation split for model selection) and are scored on test_upload/ with
test-labels.csv, which no method sees before scoring. Each method gets the same wall-time budget.

    python benchmarks/bench_training.py [--data ../shared/data/stanford-cars-dev] [--budget-min 15]
        [--methods linear_probe,fastai,quick,cpu_best] [--out outputs/bench]

Prints a markdown table and writes it (and a JSON) under --out. fastai is a benchmark-only
dependency: pip install fastai.
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
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from carclf.data.dataset import CarDataset, skip_none_collate  # noqa: E402
from carclf.data.layouts import read_dataset  # noqa: E402
from carclf.data.presets import EvalPreset  # noqa: E402
from carclf.models.factory import create_backbone  # noqa: E402

MEAN, STD, SIZE = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224


def test_truth(data: Path) -> tuple[list[str], np.ndarray]:
    index = read_dataset(data)
    labels = pd.read_csv(data / "test-labels.csv", dtype=str)
    value_to_label = {str(v): i for i, v in enumerate(index.label_values)}
    truth = dict(zip(labels["Id"], labels["Category"].map(value_to_label), strict=True))
    return index.test["path"].tolist(), np.array([truth[i] for i in index.test["id"]])


@torch.inference_mode()
def pooled_features(model, paths, batch_size=64) -> np.ndarray:
    ds = CarDataset(paths, None, EvalPreset(size=SIZE, mean=MEAN, std=STD))
    out = []
    for x, _, _ in torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=2, collate_fn=skip_none_collate
    ):
        out.append(model(x).mean((2, 3)).numpy())
    return np.concatenate(out)


def linear_probe(data: Path, budget_s: float) -> dict:
    """Logistic regression on frozen, globally pooled Lite0 features (images resized, no crop)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    index = read_dataset(data)
    model = create_backbone("tf_efficientnet_lite0", weights="offline").eval()
    xtr = pooled_features(model, index.train["path"].tolist())
    scaler = StandardScaler().fit(xtr)
    clf = LogisticRegression(max_iter=3000, C=0.5).fit(
        scaler.transform(xtr), index.train["label"].to_numpy()
    )
    train_s = time.perf_counter() - t0
    paths, truth = test_truth(data)
    acc = float((clf.predict(scaler.transform(pooled_features(model, paths))) == truth).mean())
    return {
        "method": "linear probe (frozen Lite0, logistic regression)",
        "test_acc": acc,
        "train_s": train_s,
        "images_per_s": len(xtr) / train_s,
    }


def fastai_fine_tune(data: Path, budget_s: float) -> dict:
    """fastai's ``fine_tune`` (1 frozen epoch, then all layers) on the same offline Lite0,
    stopped at the budget."""
    from fastai.callback.core import Callback, CancelFitException
    from fastai.vision.all import (
        CategoryBlock,
        DataBlock,
        ImageBlock,
        Learner,
        Resize,
        accuracy,
        aug_transforms,
        create_head,
        params,
    )

    index = read_dataset(data)
    df = index.train.assign(label=index.train["label"].astype(str), is_valid=False)
    rng = np.random.default_rng(0)
    df.loc[rng.permutation(len(df))[: int(0.15 * len(df))], "is_valid"] = True
    dblock = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_x=lambda r: r["path"],
        get_y=lambda r: r["label"],
        splitter=lambda items: (
            list(np.flatnonzero(~items["is_valid"].to_numpy())),
            list(np.flatnonzero(items["is_valid"].to_numpy())),
        ),
        item_tfms=Resize(SIZE, method="squash"),
        batch_tfms=aug_transforms(size=SIZE),
    )
    dls = dblock.dataloaders(df, bs=32, num_workers=2)
    body = create_backbone("tf_efficientnet_lite0", weights="offline")
    model = torch.nn.Sequential(body, create_head(body.num_features, dls.c))
    t0 = time.perf_counter()
    seen = {"n": 0}

    class Budget(Callback):
        def after_batch(self):
            if not self.training:
                return
            seen["n"] += len(self.yb[0])
            if time.perf_counter() - t0 > budget_s:
                raise CancelFitException()

    learn = Learner(
        dls,
        model,
        metrics=accuracy,
        splitter=lambda m: [params(m[0]), params(m[1])],
        cbs=[Budget()],
    )
    learn.fine_tune(20, base_lr=2e-3, freeze_epochs=1)
    train_s = time.perf_counter() - t0
    paths, truth = test_truth(data)
    test_dl = dls.test_dl(pd.DataFrame({"path": paths, "label": "0"}))
    preds, _ = learn.get_preds(dl=test_dl)
    # fastai's vocab holds the labels as sorted strings ("0", "1", "10", ...): map back to ints.
    predicted = np.array([int(dls.vocab[i]) for i in preds.argmax(1).numpy()])
    acc = float((predicted == truth).mean())
    return {
        "method": "fastai fine_tune (Lite0, all layers after 1 frozen epoch)",
        "test_acc": acc,
        "train_s": train_s,
        "images_per_s": seen["n"] / train_s,
    }


def carclf_recipe(recipe: str, data: Path, budget_s: float, out: Path, tag: str = "") -> dict:
    run = out / f"{recipe}{tag}"
    t0 = time.perf_counter()
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        f"experiment={recipe}",
        f"data.path={data}",
        f"hydra.run.dir={run}",
        "trainer.enable_progress_bar=false",
        f"trainer.time_budget_min={budget_s / 60:.2f}",
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    metrics = json.loads((run / "metrics.json").read_text())
    from carclf import Classifier

    clf = Classifier.load(run, device="cpu", backend="torch")
    paths, truth = test_truth(data)
    acc = float((clf.predict_proba(paths).argmax(1) == truth).mean())
    # predict.py's default TTA (conf/predict.yaml)
    tta = float((clf.predict_proba(paths, tta="multiscale").argmax(1) == truth).mean())
    n_train = int(0.85 * len(read_dataset(data).train))
    plan = metrics.get("plan") or {}
    return {
        "method": f"carclf `{recipe}` recipe",
        "test_acc": acc,
        "test_acc_tta": tta,
        "train_s": wall,
        "plan": {"views": plan.get("views"), "epochs": plan.get("epochs")},
        "cache_engines": metrics.get("cache_engines"),
        "images_per_s": n_train * metrics["epochs_completed"] / metrics["train_seconds"],
        "val_acc": metrics.get("val_acc"),
        "cache_s": sum(metrics.get("cache_seconds", {}).values()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data" / "stanford-cars-dev"
    )
    p.add_argument("--budget-min", type=float, default=15.0)
    p.add_argument("--methods", default="linear_probe,fastai,quick,cpu_best")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench")
    p.add_argument("--tag", default="", help="suffix of the carclf run dirs (repeat runs)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_min * 60
    runners = {
        "linear_probe": lambda: linear_probe(args.data, budget),
        "fastai": lambda: fastai_fine_tune(args.data, budget),
        "quick": lambda: carclf_recipe("quick", args.data, budget, args.out, args.tag),
        "cpu_best": lambda: carclf_recipe("cpu_best", args.data, budget, args.out, args.tag),
    }
    rows = []
    for name in args.methods.split(","):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            rows.append(runners[name]())
        except Exception as e:  # one broken method must not lose the others' figures
            print(f"{name} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            continue
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        (args.out / "training.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| method | test accuracy | with predict.py's TTA | training wall time (s) | training images/s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['method']} | {r['test_acc']:.3f} | {r.get('test_acc_tta', float('nan')):.3f} "
        f"| {r['train_s']:.0f} | {r['images_per_s']:.1f} |"
        for r in rows
    ]
    table = "\n".join(lines)
    (args.out / "training.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
