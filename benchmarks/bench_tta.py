"""Which TTA policy helps, by how much, and at what cost; calibration before/after temperature.

    .venv/bin/python benchmarks/bench_tta.py [--model RUN_DIR|BUNDLE] [--data DIR] [--workers N]
        [--cache outputs/bench/tta/logits.npz] [--policies none,hflip,multiscale]

For every policy in conf/tta/ (built from the YAML exactly as ``predict.py tta=<name>`` builds
it), with both merge rules, prints one markdown row: accuracy on the validation split of the
training run (what the default is chosen on: test labels are never used to choose anything),
accuracy / top-3 / ECE on ``test_upload`` scored with ``test-labels.csv``, and images/s.

Each distinct view (e.g. the mirrored view shared by ``hflip`` and ``hflip_multiscale``) is run
once and its logits reused, so the cost column is the sum of the policy's per-view times
(decode + preprocess + network, ``--workers`` loader processes, batch 32, CPU); predict.py decodes
an image once for all its views, so it is a little faster than this column.

The validation split is rebuilt from the run's config.yaml (val_fraction, fold, seed), the same
split training used for checkpoint selection and for fitting the temperature. The bundle's
temperature was fitted on single-view logits; the last column refits it on the validation
split's merged logits of each policy (logits merge only), to show what TTA does to calibration.
Per-view logits are cached in ``--cache`` (keyed by the bundle's creation time) so the table can
be re-derived without running the network again.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from carclf.data.datamodule import CarDataModule
from carclf.data.inputs import LabelMatcher, collect_inputs
from carclf.data.tta import TTAPreset, merge_views
from carclf.evaluate.metrics import accuracy, top_k_accuracy
from carclf.inference import Classifier, find_model
from carclf.inference.calibration import expected_calibration_error, fit_temperature
from carclf.inference.files import infer_paths

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "outputs/bench/quick"
DEFAULT_DATA = ROOT.parent / "shared/data/stanford-cars-dev"


def load_policies(clf: Classifier) -> dict[str, TTAPreset]:
    m = clf.meta
    out = {}
    for path in sorted((ROOT / "conf" / "tta").glob("*.yaml")):
        out[path.stem] = instantiate(
            OmegaConf.load(path),
            size=m.image_size,
            mean=list(m.mean),
            std=list(m.std),
            resize=m.resize,
        )
    return dict(sorted(out.items(), key=lambda kv: (len(kv[1]), kv[0])))


def val_split(run_dir: Path | None, data: Path, clf: Classifier) -> tuple[list[str], np.ndarray]:
    """Paths and model labels of the run's validation split (empty if the run is unknown)."""
    config = run_dir / "config.yaml" if run_dir else None
    if config is None or not config.is_file():
        return [], np.zeros(0, dtype=int)
    cfg = OmegaConf.load(config)
    check = run_dir / "data_check.json"
    bad = []
    if check.is_file():
        bad = [b["path"] for b in json.loads(check.read_text()).get("bad_files", [])]
    d = cfg.data
    dm = CarDataModule(
        str(data),
        layout=d.layout,
        class_map=d.class_map,
        val_fraction=d.val_fraction,
        fold=d.fold,
        num_folds=d.num_folds,
        seed=cfg.seed,
        bad_files=bad,
    )
    rows = dm.rows("val")
    m = clf.meta
    match = LabelMatcher(m.label_values, m.class_names, m.class_names_local)
    raw = [dm.index.label_values[i] for i in rows["label"]]
    return rows["path"].tolist(), match(raw, str(config))


def view_logits(clf, paths, presets, workers) -> tuple[dict, dict]:
    """Logits (N, K) and seconds per distinct view of all policies."""
    m = clf.meta
    logits, seconds = {}, {}
    for preset in presets.values():
        for view in preset.views:
            key = (view, preset.zoom if view.crop != "full" else None)
            if key in logits:
                continue
            single = TTAPreset(
                size=m.image_size,
                mean=m.mean,
                std=m.std,
                resize=m.resize,
                views=[view],
                zoom=preset.zoom,
            )
            res = infer_paths(clf, paths, single, batch_size=32, num_workers=workers)
            logits[key], seconds[key] = res.logits[:, 0], res.seconds
            print(f"  view {view.key}: {len(paths) / res.seconds:.1f} images/s", flush=True)
    return logits, seconds


def _key_name(key) -> str:
    view, zoom = key
    return view.key + ("" if zoom is None else f"-z{zoom:g}")


def save_cache(path, created: str, test: dict, seconds: dict, val: dict) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"test|{_key_name(k)}": v for k, v in test.items()}
    arrays |= {f"val|{_key_name(k)}": v for k, v in val.items()}
    arrays |= {f"sec|{_key_name(k)}": np.array(v) for k, v in seconds.items()}
    np.savez_compressed(path, created=np.array(created), **arrays)


def load_cache(path, created: str, presets: dict):
    """(test logits, seconds, val logits) per view key, or None if missing or stale."""
    if not path or not Path(path).is_file():
        return None
    data = np.load(path)
    if str(data["created"]) != created:
        return None
    keys = {(v, p.zoom if v.crop != "full" else None) for p in presets.values() for v in p.views}
    try:
        test = {k: data[f"test|{_key_name(k)}"] for k in keys}
        secs = {k: float(data[f"sec|{_key_name(k)}"]) for k in keys}
        val = {k: data[f"val|{_key_name(k)}"] for k in keys if f"val|{_key_name(k)}" in data}
    except KeyError:
        return None
    return test, secs, val


def stack(preset: TTAPreset, table: dict) -> np.ndarray:
    keys = [(v, preset.zoom if v.crop != "full" else None) for v in preset.views]
    return np.stack([table[k] for k in keys], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", default=None, help="npz file for per-view logits")
    parser.add_argument(
        "--policies", default=None, help="comma-separated policies of conf/tta (default: all)"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    data = Path(args.data)
    clf = Classifier.load(args.model, device="cpu", backend="torch")
    target = find_model(args.model)
    run_dir = target.parent if target.name == "bundle" else None
    m = clf.meta
    match = LabelMatcher(m.label_values, m.class_names, m.class_names_local)
    test = collect_inputs(data, labels_csv=data / "test-labels.csv", match=match)
    val_paths, val_labels = val_split(run_dir, data, clf)
    presets = load_policies(clf)
    if args.policies:
        wanted = args.policies.split(",")
        unknown = sorted(set(wanted) - set(presets))
        if unknown:
            parser.error(f"--policies: no {', '.join(unknown)} in conf/tta ({', '.join(presets)})")
        presets = {k: v for k, v in presets.items() if k in wanted}
    print(f"model {target} ({m.backbone}, {m.image_size} px, T = {clf.temperature:.3f})")
    print(f"test: {len(test)} images; validation split: {len(val_paths)} images")
    t0 = time.perf_counter()
    cached = load_cache(args.cache, m.created, presets)
    if cached:
        test_logits, seconds, val_logits = cached
        print(f"per-view logits from {args.cache}")
    else:
        test_logits, seconds = view_logits(clf, test.paths, presets, args.workers)
        val_logits = view_logits(clf, val_paths, presets, args.workers)[0] if val_paths else {}
        save_cache(args.cache, m.created, test_logits, seconds, val_logits)
    y = test.labels
    print(
        f"\nall views in {time.perf_counter() - t0:.0f} s; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, {args.workers} loader workers\n"
    )
    head = "| policy | views | merge | val acc | test acc | test top-3 | test ECE, T=1 | "
    head += f"test ECE, T={clf.temperature:.2f} | images/s | T refit on val | test ECE, refit T |"
    print(head)
    print("|" + "---|" * 11)
    rows = []
    for name, preset in presets.items():
        merges = ("logits", "probs") if len(preset) > 1 else ("logits",)
        cost = sum(seconds[(v, preset.zoom if v.crop != "full" else None)] for v in preset.views)
        for merge in merges:
            lt = torch.from_numpy(stack(preset, test_logits))
            p1 = merge_views(lt, 1.0, merge).numpy()
            pt = merge_views(lt, clf.temperature, merge).numpy()
            val_acc, refit = float("nan"), "| — | — "
            if val_paths:
                lv = torch.from_numpy(stack(preset, val_logits))
                val_acc = accuracy(val_labels, merge_views(lv, 1.0, merge).numpy().argmax(1))
                if merge == "logits":
                    t = fit_temperature(lv.mean(dim=1).numpy(), val_labels)
                    ece = expected_calibration_error(merge_views(lt, t, merge).numpy(), y)
                    refit = f"| {t:.3f} | {ece:.4f} "
            row = (
                name,
                len(preset),
                merge,
                val_acc,
                accuracy(y, pt.argmax(1)),
                top_k_accuracy(pt, y, 3),
            )
            rows.append(row)
            print(
                f"| {name} | {len(preset)} | {merge} | {val_acc:.4f} | {row[4]:.4f} | {row[5]:.4f} | "
                f"{expected_calibration_error(p1, y):.4f} | {expected_calibration_error(pt, y):.4f} | "
                f"{len(y) / cost:.1f} {refit}|"
            )
    if val_paths:
        best = max(rows, key=lambda r: (round(r[3], 6), -r[1]))
        print(f"\nbest on the validation split: {best[0]} (merge={best[2]}), val acc {best[3]:.4f}")


if __name__ == "__main__":
    main()
