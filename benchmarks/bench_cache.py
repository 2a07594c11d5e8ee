"""Feature-cache build speed: every prefix engine side by side, in one run (ratios, not absolutes).

Two tables per backbone (offline weights, the frozen prefix ``cpu_best`` caches: every group but
the last two, i.e. stem + blocks[:6]):

1. the network alone, on a preprocessed batch already in memory: PyTorch eager (NCHW), eager
   channels_last (carclf's ``torch`` engine), TorchScript frozen for inference (oneDNN fusion),
   ``torch.compile`` (compile time reported separately), ONNX Runtime (carclf's ``onnx`` engine);
2. the real cache build (``FeatureCache.build``: decode once per photo, 8 views, the engine) on
   stanford-cars-dev photos, for the two carclf engines and several loader worker counts, with
   the speed of the old build path (one decode per view, PyTorch eager) for reference.

    python benchmarks/bench_cache.py --data <stanford-cars-dev> [--images 160] [--quick]

Prints the box's load average before and after: the machine is shared, compare within a run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from carclf.data.dataset import CarDataset, MultiViewDataset, skip_none_collate
from carclf.data.presets import EvalPreset, TrainPreset
from carclf.models import build_net
from carclf.models.bundle import BundleMeta
from carclf.train.feature_cache import CacheKey, FeatureCache
from carclf.train.prefix_engine import OnnxPrefix, TorchPrefix, _Prefix

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _rate(fn, x, repeats: int = 5) -> float:
    fn(x)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return len(x) / statistics.median(times)


def network_table(net, meta, cut: int, size: int, batch: int, quick: bool) -> list[dict]:
    x = torch.randn(batch, 3, size, size)
    rows = []
    with torch.inference_mode():
        eager = lambda b: net.features_from(b, 0, cut)  # noqa: E731
        rows.append({"engine": "PyTorch eager (NCHW)", "views/s": _rate(eager, x)})
        cl = TorchPrefix(net, cut)
        rows.append({"engine": "PyTorch channels_last (torch engine)", "views/s": _rate(cl, x)})
        frozen = torch.jit.optimize_for_inference(
            torch.jit.freeze(torch.jit.trace(_Prefix(net, cut).eval(), x[:1]))
        )
        rows.append({"engine": "TorchScript freeze + oneDNN fusion", "views/s": _rate(frozen, x)})
        if not quick:
            t0 = time.perf_counter()
            compiled = torch.compile(_Prefix(net, cut).eval())
            compiled(x)
            compile_s = time.perf_counter() - t0
            rows.append(
                {
                    "engine": f"torch.compile (compile {compile_s:.0f} s)",
                    "views/s": _rate(compiled, x),
                }
            )
    with tempfile.TemporaryDirectory() as d:
        ort = OnnxPrefix.export(net, meta, cut, size, Path(d))
        ref = cl(x)
        diff = float((ort(x) - ref).abs().max())
        rows.append(
            {
                "engine": f"ONNX Runtime (onnx engine; max |diff| {diff:.1e})",
                "views/s": _rate(ort, x),
            }
        )
        ort.close()
    base = rows[0]["views/s"]
    for r in rows:
        r["vs eager"] = f"{r['views/s'] / base:.2f}x"
        r["views/s"] = round(r["views/s"], 1)
    return rows


def build_table(
    net, meta, cut: int, size: int, paths, views: int, workers: list[int]
) -> list[dict]:
    presets = [
        EvalPreset(size=size, mean=MEAN, std=STD),
        EvalPreset(size=size, mean=MEAN, std=STD, hflip=True),
    ]
    presets += [TrainPreset(size=size, mean=MEAN, std=STD) for _ in range(views - 2)]
    labels = list(range(len(paths)))
    rows = []
    # The old path: one dataset (one decode) per view, PyTorch eager NCHW.
    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in presets:
            loader = torch.utils.data.DataLoader(
                CarDataset(paths, labels, p),
                batch_size=32,
                num_workers=2,
                collate_fn=skip_none_collate,
            )
            for x, _, _ in loader:
                net.features_from(x, 0, cut)
    old = views * len(paths) / (time.perf_counter() - t0)
    rows.append({"build": "before: a decode per view, PyTorch eager, 2 workers", "views/s": old})
    engines = {"torch": TorchPrefix(net, cut)}
    with tempfile.TemporaryDirectory() as d:
        engines["onnx"] = OnnxPrefix.export(net, meta, cut, size, Path(d))
        for name, engine in engines.items():
            for w in workers:
                ds = MultiViewDataset(paths, labels, presets, draft_size=int(size * 1.5))
                key = CacheKey("bench", cut, size, views, 1.0, len(paths), f"{name}{w}")
                t0 = time.perf_counter()
                FeatureCache.build(key, engine, ds, batch_images=max(1, 32 // views), num_workers=w)
                rate = views * len(paths) / (time.perf_counter() - t0)
                rows.append({"build": f"decode once, {name} engine, {w} workers", "views/s": rate})
        engines["onnx"].close()
    for r in rows:
        r["vs before"] = f"{r['views/s'] / old:.2f}x"
        r["views/s"] = round(r["views/s"], 1)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a Kaggle-layout folder (train.csv + train/)")
    p.add_argument("--images", type=int, default=160)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--models", default="lite0:224,lite2:260")
    p.add_argument("--quick", action="store_true", help="skip torch.compile (minutes to compile)")
    args = p.parse_args()
    root = Path(args.data)
    table = pd.read_csv(root / "train.csv").head(args.images)
    paths = [
        str(root / "train" / str(c) / i) for i, c in zip(table.Id, table.Category, strict=True)
    ]
    print(f"load average before: {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    for spec in args.models.split(","):
        name, size = spec.split(":")
        backbone = f"tf_efficientnet_{name}"
        net = build_net(backbone, 49, weights="offline").eval()
        cut = net.num_groups - 2
        meta = BundleMeta(
            backbone=backbone,
            class_names=[str(i) for i in range(49)],
            image_size=int(size),
            mean=list(MEAN),
            std=list(STD),
        )
        print(f"\n### {backbone} @ {size} px, frozen groups 0-{cut - 1}, batch {args.batch}\n")
        print(
            pd.DataFrame(
                network_table(net, meta, cut, int(size), args.batch, args.quick)
            ).to_string(index=False)
        )
        print(f"\ncache build, {args.images} photos x {args.views} views:\n")
        workers = [int(w) for w in args.workers.split(",")]
        print(
            pd.DataFrame(
                build_table(net, meta, cut, int(size), paths, args.views, workers)
            ).to_string(index=False)
        )
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
