"""Feature-cache build speed: every prefix engine side by side, in one run (ratios, not absolutes).

Two tables per backbone (offline weights, the frozen prefix ``cpu_best`` caches: every group but
the last two, i.e. stem + blocks[:6]):

1. the network alone, on a batch of preprocessed real photos already in memory: PyTorch eager
   (NCHW), eager channels_last (carclf's ``torch`` engine), TorchScript frozen for inference
   (oneDNN fusion), ``torch.compile`` (compile time reported separately), ONNX Runtime fp32
   (``onnx``), ONNX Runtime static int8 QDQ calibrated on training photos (``int8``), PyTorch bf16
   autocast + channels_last (``bf16``), each low-precision one with its gate's relative error and
   top-1 agreement (:mod:`carclf.train.engine_gate`) and its speed vs ``onnx``; an engine that
   cannot run here is listed with the reason;
2. the real cache build (``FeatureCache.build``: decode once per photo, 8 views, the engine) on
   stanford-cars-dev photos, for every carclf engine and several loader worker counts, with
   the speed of the old build path (one decode per view, PyTorch eager) for reference, and the
   engine ``cache_engine=auto`` picks on this machine (its gate and timing included in its time).

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

import numpy as np
import pandas as pd
import torch

from carclf.data.dataset import CarDataset, MultiViewDataset, skip_none_collate
from carclf.data.presets import EvalPreset, TrainPreset
from carclf.models import build_net
from carclf.models.bundle import BundleMeta
from carclf.train.engine_gate import GateSample, Reference
from carclf.train.feature_cache import CacheKey, FeatureCache
from carclf.train.lowp_engines import LOW_PRECISION, build_low_precision, unavailable
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


def _label(path: str) -> int:
    return int(Path(path).parent.name)  # train/<class>/<file>


def _sample(paths, size: int, n: int = 32) -> GateSample:
    """The gate's sample as a run builds it: training views (plain + crop) and held-out views."""
    ev, aug = EvalPreset(size=size, mean=MEAN, std=STD), TrainPreset(size=size, mean=MEAN, std=STD)
    calib_paths, held_paths = paths[0::2][:n], paths[1::2][:n]  # neighbours: the same classes
    calib = MultiViewDataset(calib_paths, [0] * n, [ev, aug], draft_size=int(size * 1.5))
    held = MultiViewDataset(held_paths, [0] * n, [ev], draft_size=int(size * 1.5))
    x = torch.cat([calib[i][0] for i in range(len(calib))])
    return GateSample(
        x,
        torch.tensor([_label(p) for p in calib_paths]).repeat_interleave(2),
        torch.cat([held[i][0] for i in range(len(held))]),
    )


def network_table(net, meta, cut: int, size: int, batch: int, quick: bool, paths) -> list[dict]:
    sample = _sample(paths, size)
    x = torch.cat([sample.held, sample.calibration])[:batch]
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
                "engine": f"ONNX Runtime fp32 (onnx engine; max |diff| {diff:.1e})",
                "views/s": _rate(ort, x),
            }
        )
        onnx_row = rows[-1]
        rows += _low_precision_rows(net, cut, ort, sample, x)
        ort.close()
    base = rows[0]["views/s"]
    for r in rows:
        if r["views/s"] is None:
            continue
        r["vs eager"] = f"{r['views/s'] / base:.2f}x"
        r["vs onnx"] = f"{r['views/s'] / onnx_row['views/s']:.2f}x"
        r["views/s"] = round(r["views/s"], 1)
    return rows


def _low_precision_rows(net, cut, ort, sample, x) -> list[dict]:
    reference = Reference(ort, net, cut, sample)
    rows = []
    for name in LOW_PRECISION:
        why = unavailable(name)
        if why:
            rows.append({"engine": f"{name}: skipped ({why})", "views/s": None})
            continue
        t0 = time.perf_counter()
        engine = build_low_precision(name, net, cut, ort, sample.calibration)
        built = time.perf_counter() - t0
        gate = reference.check(engine, name)
        label = (
            f"{name} engine (build {built:.0f} s; gate {'pass' if gate.passed else 'FAIL'}: "
            f"rel err {gate.rel_error:.3f}, top-1 agreement {gate.agreement:.2f})"
        )
        rows.append({"engine": label, "views/s": _rate(engine, x)})
        getattr(engine, "close", lambda: None)()
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
        sample = _sample(paths, size)
        for name in LOW_PRECISION:
            if unavailable(name) is None:
                engines[name] = build_low_precision(
                    name, net, cut, engines["onnx"], sample.calibration
                )
        for name, engine in engines.items():
            for w in workers:
                ds = MultiViewDataset(paths, labels, presets, draft_size=int(size * 1.5))
                key = CacheKey("bench", cut, size, views, 1.0, len(paths), f"{name}{w}")
                t0 = time.perf_counter()
                FeatureCache.build(key, engine, ds, batch_images=max(1, 32 // views), num_workers=w)
                rate = views * len(paths) / (time.perf_counter() - t0)
                rows.append({"build": f"decode once, {name} engine, {w} workers", "views/s": rate})
        rows.append(_auto_row(net, meta, cut, size, paths, presets, views, max(workers), Path(d)))
        for engine in engines.values():
            getattr(engine, "close", lambda: None)()
    for r in rows:
        r["vs before"] = f"{r['views/s'] / old:.2f}x"
        r["views/s"] = round(r["views/s"], 1)
    return rows


def tail_table(net, cut: int, size: int, batch: int, paths) -> list[dict]:
    """Training steps (forward, backward, AdamW) of groups ``cut..`` + head on cached features:
    fp32 in the default layout, fp32 channels_last, bf16 autocast channels_last, at each intra-op
    thread count up to the machine's (issue 24, part 3: measure, do not assume)."""
    import copy

    import torch.nn.functional as F

    sample = _sample(paths, size)
    with torch.inference_mode():
        feats = TorchPrefix(net, cut)(sample.calibration[:batch])
    feats = feats.clone()  # a normal tensor: inference tensors cannot take part in autograd
    y = torch.randint(0, net.head.fc.out_features, (len(feats),))
    rows, threads0 = [], torch.get_num_threads()
    for threads in sorted({1, max(1, threads0 // 2), threads0}):
        torch.set_num_threads(threads)
        for layout, bf16 in (("default", False), ("channels_last", False), ("channels_last", True)):
            tail = copy.deepcopy(net).train()
            tail.set_trainable_groups(tail.num_groups - cut)
            x = feats
            if layout == "channels_last":
                tail = tail.to(memory_format=torch.channels_last)
                x = feats.contiguous(memory_format=torch.channels_last)
            opt = torch.optim.AdamW([p for p in tail.parameters() if p.requires_grad], lr=1e-6)

            def step(b, tail=tail, opt=opt, bf16=bf16):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = tail(b, start=cut)
                F.cross_entropy(logits.float(), y[: len(b)]).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            name = f"{layout}{' + bf16 autocast' if bf16 else ''}, {threads} threads"
            rows.append({"tail training": name, "img/s": _rate(step, x, repeats=3)})
    torch.set_num_threads(threads0)
    base = rows[0]["img/s"]
    for r in rows:
        r["vs default"] = f"{r['img/s'] / base:.2f}x"
        r["img/s"] = round(r["img/s"], 1)
    return rows


def _auto_row(net, meta, cut, size, paths, presets, views, workers, workdir) -> dict:
    """The whole build as ``cache_engine=auto`` runs it: gate sample, choice, then the build."""
    from types import SimpleNamespace

    from carclf.train.cache_stage import CacheStage

    class DM:
        image_size, num_workers = size, workers

        def rows(self, split):
            return (
                pd.DataFrame({"path": paths, "label": list(range(len(paths)))})
                if split == "train"
                else pd.DataFrame({"path": [], "label": []})
            )

        def eval_preset(self, hflip=False):
            return EvalPreset(size=size, mean=MEAN, std=STD, hflip=hflip)

        def train_preset(self):
            return TrainPreset(size=size, mean=MEAN, std=STD)

    module = SimpleNamespace(net=net, device=torch.device("cpu"), meta=meta)
    stage = CacheStage("auto", cache_dir=workdir / "auto")
    t0 = time.perf_counter()
    engine = stage.engine(cut, size, module, DM())
    chose = time.perf_counter() - t0
    ds = MultiViewDataset(paths, list(range(len(paths))), presets, draft_size=int(size * 1.5))
    key = CacheKey("bench", cut, size, views, 1.0, len(paths), "auto")
    FeatureCache.build(key, engine, ds, batch_images=max(1, 32 // views), num_workers=workers)
    rate = views * len(paths) / (time.perf_counter() - t0)
    stage.close()
    label = f"cache_engine=auto -> {engine.name} (choice {chose:.0f} s incl.), {workers} workers"
    return {"build": label, "views/s": rate}


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
    table = pd.read_csv(root / "train.csv")  # sorted by class: take photos spread over it
    table = table.iloc[np.linspace(0, len(table) - 1, min(args.images, len(table))).astype(int)]
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
                network_table(net, meta, cut, int(size), args.batch, args.quick, paths)
            ).to_string(index=False)
        )
        print(f"\ntrained tail (groups {cut}- + head) on cached features, batch {args.batch}:\n")
        tail = tail_table(net, cut, int(size), args.batch, paths)
        print(pd.DataFrame(tail).to_string(index=False))
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
