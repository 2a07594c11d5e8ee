"""Open-set rejection: how well each score tells known cars from other cars and from non-cars.

    .venv/bin/python benchmarks/bench_open_set.py RUN_DIR [--dev DIR] [--scale DIR] [--sfdl DIR]
        [--backend auto|torch|onnx] [--limit N] [--json out.json]

RUN_DIR: a ``cpu_best`` run trained on stanford-cars-dev (its bundle holds the open-set data the
end of training fitted: thresholds that keep ``open_set.keep`` of the known validation photos).

* known: the dev set's test photos (``test_upload`` with ``test-labels.csv``; 617);
* unknown near: stanford-cars-scale's test photos (98 car models the model never saw; 1,219);
* unknown far: the photos scikit-image ships in ``skimage/data`` (an astronaut, a cat, coffee,
  a rocket, a motorbike, text, textures, ...; ``pip install -e ".[bench]"``), its 200 LFW face
  crops, and any sfdl-photos interiors (``provenance.csv`` rows that say "interior").

Per score (msp = today's calibrated top-1 probability, energy, knn): AUROC near and far; at the
bundle's threshold the share of known photos kept, the share of near and far unknowns wrongly
accepted (FPR) and the accuracy of the kept known photos; FPR at 95% of *these* known photos kept;
and the inference cost: images/s of the model alone on preprocessed batches of 32 (best of 3)
with no open set, then with that score (features + scoring). Scores use the plain eval view, as
the service, the batch job and predict.py do. Targets (issue 20): near AUROC >= 0.90, far >=
0.98, cost < 5%. ``--limit N`` takes N photos per set (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from carclf.data.inputs import LabelMatcher
from carclf.evaluate.open_set_report import separation
from carclf.inference import available_cpus
from carclf.inference.files import infer_paths
from carclf.inference.loading import load_classifier

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
# skimage/data photos of real scenes and objects (not the synthetic test patterns)
SKIMAGE_PHOTOS = (
    "astronaut.png brick.png camera.png cell.png chelsea.png coffee.png coins.png color.png "
    "grass.png gravel.png horse.png hubble_deep_field.jpg ihc.png logo.png moon.png "
    "motorcycle_left.png motorcycle_right.png page.png retina.jpg rocket.jpg text.png"
).split()


def known_photos(dev: Path) -> tuple[list[str], pd.Series]:
    labels = pd.read_csv(dev / "test-labels.csv")
    return [str(dev / "test_upload" / i) for i in labels["Id"]], labels["Category"]


def scale_photos(scale: Path) -> list[str]:
    return [str(scale / "test_upload" / i) for i in pd.read_csv(scale / "test-labels.csv")["Id"]]


def far_photos(sfdl: Path, work: Path) -> tuple[list[str], str]:
    """skimage's bundled photos, its LFW faces written as PNGs, and sfdl interiors if any."""
    from PIL import Image

    try:
        import skimage
    except ImportError:
        sys.exit('far photos need scikit-image: pip install -e ".[bench]"')
    data = Path(skimage.__file__).parent / "data"
    paths = [str(data / n) for n in SKIMAGE_PHOTOS if (data / n).is_file()]
    faces = np.load(data / "lfw_subset.npy")  # (200, 25, 25) floats in [0, 1]
    for i, face in enumerate(faces):
        p = work / f"lfw_{i:03d}.png"
        Image.fromarray((face * 255).round().astype(np.uint8)).convert("RGB").save(p)
        paths.append(str(p))
    interiors = []
    prov = sfdl / "provenance.csv"
    if prov.is_file():
        rows = pd.read_csv(prov)
        hit = rows[rows.astype(str).apply(lambda r: "interior" in " ".join(r).lower(), axis=1)]
        interiors = [str(next((sfdl / "train").glob(f"*/{i}"))) for i in hit["Id"]]
    what = f"{len(paths) - len(faces)} skimage photos, {len(faces)} LFW faces, "
    what += f"{len(interiors)} sfdl interiors"
    return paths + interiors, what


def set_scores(clf, paths: list[str], workers: int):
    """(scores per name, plain-view logits, ok mask) of ``paths``."""
    res = infer_paths(clf, paths, "none", num_workers=workers, features=clf.has_features)
    ok = res.ok
    feats = None if res.features is None else res.features[ok]
    return clf.open_set.scores(res.logits[ok, 0], feats), res.logits[ok, 0], ok


def model_rates(clf, batch: torch.Tensor, names: list[str], rounds: int = 5) -> dict:
    """Images/s of the model alone (key None) and with each open-set score, on preprocessed
    batches of 32: the variants take turns in every round (a busy machine slows them alike) and
    each keeps its best round."""
    full = clf.open_set
    best = dict.fromkeys([None, *names], float("inf"))
    try:
        for _ in range(rounds):
            for name in best:
                clf.open_set = None if name is None else full.with_score(name)
                t0 = time.perf_counter()
                for i in range(0, len(batch), 32):
                    clf.answer(batch[i : i + 32])
                best[name] = min(best[name], time.perf_counter() - t0)
    finally:
        clf.open_set = full
    return {name: len(batch) / s for name, s in best.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a cpu_best run dir trained on stanford-cars-dev (or its bundle)")
    p.add_argument("--dev", type=Path, default=SHARED / "stanford-cars-dev")
    p.add_argument("--scale", type=Path, default=SHARED / "stanford-cars-scale")
    p.add_argument("--sfdl", type=Path, default=SHARED / "sfdl-photos")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="photos per set (smoke runs)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)

    clf = load_classifier(args.run, args.backend, device="cpu")
    if clf.open_set is None:
        sys.exit(f"{args.run}: no open-set data in its bundle (trained before carclf fitted it)")
    os_ = clf.open_set
    known, truth = known_photos(args.dev)
    near = scale_photos(args.scale)
    with tempfile.TemporaryDirectory(prefix="carclf-far-") as work:
        far, far_what = far_photos(args.sfdl, Path(work))
        if args.limit:
            known, truth, near, far = (
                known[: args.limit],
                truth[: args.limit],
                near[: args.limit],
                far[: args.limit],
            )
        t0 = time.perf_counter()
        k_scores, k_logits, k_ok = set_scores(clf, known, args.workers)
        n_scores, _, _ = set_scores(clf, near, args.workers)
        f_scores, _, _ = set_scores(clf, far, args.workers)
        seconds = time.perf_counter() - t0
    m = clf.meta
    labels = LabelMatcher(m.label_values, m.class_names, m.class_names_local)(
        list(truth), str(args.dev / "test-labels.csv")
    )[k_ok]
    correct = k_logits.argmax(1) == labels
    batch = torch.stack([clf.preprocess(x) for x in known[:256]])
    rates = model_rates(clf, batch, [n for n in os_.names if n in k_scores])
    base_rate = rates[None]

    rows = []
    for name in os_.names:
        if name not in k_scores:
            continue
        t = os_.thresholds[name]
        sn = separation(name, k_scores[name], n_scores[name], t)
        sf = separation(name, k_scores[name], f_scores[name], t)
        kept = k_scores[name] >= t
        rate = rates[name]
        rows.append(
            {
                "score": name + (" (default)" if name == os_.score else ""),
                "auroc_near": sn.auroc,
                "auroc_far": sf.auroc,
                "known_kept": sn.known_kept,
                "fpr_near": sn.fpr,
                "fpr_far": sf.fpr,
                "fpr95_near": sn.fpr_at_95,
                "fpr95_far": sf.fpr_at_95,
                "acc_kept": float(correct[kept].mean()) if kept.any() else float("nan"),
                "img_s": rate,
                "cost_pct": 100 * (base_rate / rate - 1),
            }
        )

    print(f"\nmodel: {args.run} ({m.backbone}, {m.image_size} px, {m.num_classes} classes, "
          f"backend {clf.backend.name}); threshold keep {os_.keep:.0%} of validation photos")  # fmt: skip
    print(f"known {len(k_scores['msp'])} (accuracy {correct.mean():.3f}), near {len(n_scores['msp'])}, "
          f"far {len(f_scores['msp'])} ({far_what}); scored in {seconds:.0f} s")  # fmt: skip
    print(f"machine: {platform.processor() or platform.machine()}, {available_cpus()} CPUs; "
          f"model alone {base_rate:.1f} img/s without open set\n")  # fmt: skip
    print("| score | AUROC near | AUROC far | known kept | FPR near | FPR far | FPR@95 near "
          "| FPR@95 far | acc. of kept | img/s | cost |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['score']} | {r['auroc_near']:.3f} | {r['auroc_far']:.3f} | "
            f"{r['known_kept']:.1%} | {r['fpr_near']:.1%} | {r['fpr_far']:.1%} | "
            f"{r['fpr95_near']:.1%} | {r['fpr95_far']:.1%} | {r['acc_kept']:.3f} | "
            f"{r['img_s']:.1f} | {r['cost_pct']:+.1f}% |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"base_img_s": base_rate, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
