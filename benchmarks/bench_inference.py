"""Raw inference speed and int8 accuracy: PyTorch eager vs ONNX Runtime fp32 vs int8.

    .venv/bin/python benchmarks/bench_inference.py [--model BUNDLE] [--data DIR] [--seconds S]

Throughput is images per second of the network alone (preprocessed tensors in, logits out) at
batch 1 and 32, each measured for ``--seconds`` after a warm-up. Accuracy is top-1 on the
``test_upload`` photos of a Kaggle-layout dataset with ``test-labels.csv`` (stanford-cars-dev).

The model is ``--model`` (a trained bundle), else ``outputs/bench/quick/bundle`` if a training
benchmark left one, else a cheap stand-in: Lite0 with ImageNet weights and a linear head fitted
on the dataset's train photos (a linear probe, ~1 min on 2 cores). The bundle is copied before
exporting, so the benchmark never adds ONNX files to somebody else's bundle.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from carclf.data.images import load_rgb
from carclf.data.layouts import read_dataset
from carclf.data.presets import EvalPreset
from carclf.export.onnx import export_onnx, onnx_logits, torch_logits
from carclf.export.quantize import quantize_int8
from carclf.inference.onnx_backend import (
    INT8_FILE,
    ONNX_FILE,
    OnnxBackend,
    available_cpus,
    default_threads,
)
from carclf.models.bundle import BundleMeta, load_bundle, read_meta, save_bundle
from carclf.models.factory import build_net

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "outputs/bench/quick/bundle"


def preprocess(paths, meta: BundleMeta) -> torch.Tensor:
    preset = EvalPreset(size=meta.image_size, mean=meta.mean, std=meta.std, resize=meta.resize)
    return torch.stack([preset(load_rgb(p)) for p in paths])


def linear_probe_bundle(data: Path, out: Path, size: int = 224) -> Path:
    """Lite0 (ImageNet weights) + a linear head fitted on the train photos: a cheap real model."""
    index = read_dataset(data)
    net = build_net("tf_efficientnet_lite0", index.num_classes, weights="offline").eval()
    meta = BundleMeta(
        backbone="tf_efficientnet_lite0",
        class_names=index.class_names,
        label_values=index.label_values,
        image_size=size,
        mean=[0.5] * 3,
        std=[0.5] * 3,
        extra={"note": "linear probe made by benchmarks/bench_inference.py"},
    )
    x = preprocess(index.train["path"], meta)
    y = torch.as_tensor(index.train["label"].to_numpy())
    with torch.no_grad():
        feats = torch.cat([net.head(net.features_from(b), pre_logits=True) for b in x.split(64)])
    fc = net.head.fc
    opt = torch.optim.Adam(fc.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(fc(feats), y).backward()
        opt.step()
    return save_bundle(net, meta, out)


def images_per_second(fn, batch: torch.Tensor, seconds: float) -> float:
    fn(batch)  # warm-up (ORT allocates its arenas on the first run)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(batch)
        n += len(batch)
    return n / (time.perf_counter() - start)


def test_set(data: Path):
    index = read_dataset(data)
    labels = pd.read_csv(data / "test-labels.csv")
    to_index = {v: i for i, v in enumerate(index.label_values)}
    truth = dict(zip(labels["Id"], labels["Category"].map(to_index), strict=True))
    test = index.test[index.test["id"].isin(truth)]
    return list(test["path"]), np.array([truth[i] for i in test["id"]])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="trained bundle (default: see the docstring)")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/stanford-cars-dev")
    p.add_argument("--work", type=Path, default=ROOT / "outputs/serve-bench/inference")
    p.add_argument("--seconds", type=float, default=4.0, help="per throughput measurement")
    p.add_argument("--calibration", type=int, default=64, help="train photos for int8")
    args = p.parse_args(argv)

    source = args.model or (TRAINED if (TRAINED / "meta.json").is_file() else None)
    bundle = args.work / "bundle"
    if source is None:
        model_desc = "Lite0 ImageNet + linear probe on stanford-cars-dev train (stand-in)"
        if not (bundle / "meta.json").is_file() or "linear probe" not in str(
            read_meta(bundle).extra
        ):
            print(f"no trained bundle: fitting a linear probe on {args.data} ...", file=sys.stderr)
            linear_probe_bundle(args.data, bundle)
    else:
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.copytree(source, bundle)
        model_desc = f"{source}"
    net, meta = load_bundle(bundle)
    net.eval()

    index = read_dataset(args.data)
    train = index.train.sample(n=min(args.calibration, len(index.train)), random_state=0)
    calib = preprocess(train["path"], meta)
    fp32 = export_onnx(net, meta, bundle / ONNX_FILE)
    int8 = quantize_int8(fp32, bundle / INT8_FILE, "static", calib)

    paths, truth = test_set(args.data)
    x = preprocess(paths, meta)
    torch.set_num_threads(1)  # accuracy does not depend on it; 1 thread is safe on a busy box
    logits = {
        "PyTorch eager fp32": torch_logits(net, x),
        "ONNX Runtime fp32": onnx_logits(fp32, x),
        "ONNX Runtime int8 (static QDQ)": onnx_logits(int8, x),
    }
    ref = logits["PyTorch eager fp32"].argmax(1)

    threads = default_threads()

    def torch_runner(n_threads):
        def run(b):
            torch.set_num_threads(n_threads)
            return torch_logits(net, b, batch_size=len(b))

        return run

    # PyTorch's OpenMP threads spin at barriers: with other work on the cores, 1 thread can beat
    # 2 by 4x, so both are measured. ONNX Runtime runs with spinning off (carclf's default).
    runners = {
        "PyTorch eager fp32, 1 thread": ("PyTorch eager fp32", torch_runner(1)),
        f"PyTorch eager fp32, {threads} threads": ("PyTorch eager fp32", torch_runner(threads)),
        "ONNX Runtime fp32": ("ONNX Runtime fp32", OnnxBackend(fp32)),
        "ONNX Runtime int8 (static QDQ)": ("ONNX Runtime int8 (static QDQ)", OnnxBackend(int8)),
    }
    print(f"\nmodel: {model_desc}, {meta.image_size} px, {meta.num_classes} classes")
    print(f"machine: {platform.processor() or platform.machine()}, {available_cpus()} CPUs")
    print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}\n")
    print("| backend | batch 1 img/s | batch 32 img/s | top-1 acc | top-1 = fp32 |")
    print("|---|---|---|---|---|")
    loads = [os.getloadavg()[0]]
    for label, (name, fn) in runners.items():
        b1 = images_per_second(fn, x[:1], args.seconds)
        b32 = images_per_second(fn, x[:32], args.seconds)
        loads.append(os.getloadavg()[0])
        pred = logits[name].argmax(1)
        print(
            f"| {label} | {b1:.1f} | {b32:.1f} | {(pred == truth).mean():.1%} "
            f"| {(pred == ref).mean():.1%} |"
        )
    print(f"\n{len(truth)} test photos; int8 calibrated on {len(calib)} train photos.")
    print(f"1-min load average during the runs: {min(loads):.1f}-{max(loads):.1f}")
    sizes = {f.name: f.stat().st_size / 2**20 for f in (fp32, int8)}
    print("file sizes: " + ", ".join(f"{k} {v:.1f} MB" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
