"""The end of a training run: best weights -> validation pass -> temperature -> bundle and reports."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from carclf import io
from carclf.errors import CarclfError
from carclf.models.bundle import BundleMeta, save_bundle
from carclf.train.plots import plot_curves

log = logging.getLogger(__name__)


@dataclass
class FittedRun:
    """What ``Trainer.fit`` leaves for the end of the run."""

    cfg: object
    run_dir: Path
    module: object  # CarClassifier
    dm: object  # CarDataModule
    staged: object  # StagedFinetuning (stages as planned, caches, plan)
    best_path: str | None
    ema: object | None
    meta: BundleMeta
    train_seconds: float
    metrics: dict = field(default_factory=dict)


def _load_best(run: FittedRun) -> int:
    """Put the best checkpoint's (or the EMA's) weights in the module; the image size of the
    stage they come from (with progressive resizing the best epoch may be from a smaller stage)."""
    stages, module = run.staged.stages, run.module
    size = stages[-1].image_size
    best = run.best_path
    if best and Path(best).is_file():
        state = torch.load(best, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"])
        best_stage = state.get("callbacks", {}).get("StagedFinetuning", {}).get("stage")
        if best_stage is not None:
            size = stages[best_stage].image_size
        shadow = state.get("callbacks", {}).get("EMA", {}).get("shadow")
        if shadow:
            module.net.load_state_dict({k: v.cpu() for k, v in shadow.items()}, strict=False)
    elif run.ema is not None and run.ema.shadow is not None:
        module.net.load_state_dict(run.ema.shadow, strict=False)
    return size


def _validate(run: FittedRun, net, metrics: dict) -> None:
    """Single-view validation metrics and the temperature, from one pass over the split."""
    cfg, meta = run.cfg, run.meta
    t0 = time.perf_counter()
    policy = cfg.calibration_tta if cfg.fit_temperature else "none"
    views, labels = val_view_logits(net, meta, run.dm, policy)
    plain = views[:, 0]  # every TTA policy's first view is the plain eval view
    metrics["val_acc"] = float((plain.argmax(1) == labels).mean())
    metrics["val_loss"] = float(
        torch.nn.functional.cross_entropy(torch.from_numpy(plain), torch.from_numpy(labels))
    )
    # With no validation mistakes the NLL-optimal temperature runs off to ~0 (certainty);
    # that is an artefact of a small or easy split, not calibration, so keep T=1 then.
    if cfg.fit_temperature and metrics["val_acc"] < 1.0:
        from carclf.inference.calibration import fit_temperature

        # logit averaging, predict.py's default merge
        meta.temperature = float(fit_temperature(views.mean(1), labels))
        metrics["temperature"] = meta.temperature
    metrics["final_val_seconds"] = round(time.perf_counter() - t0, 1)


def finish(run: FittedRun) -> dict:
    """Best weights -> temperature -> bundle, curves and metrics.json; returns the metrics."""
    cfg, run_dir, meta, stages = run.cfg, run.run_dir, run.meta, run.staged.stages
    size = _load_best(run)
    net = run.module.net.cpu().eval()
    run.module.input_start = 0
    meta.image_size = run.dm.image_size = size
    metrics = {
        "recipe": cfg.recipe,
        "train_seconds": round(run.train_seconds, 1),
        "epochs": stages[-1].end_epoch,
        **run.metrics,
        "cache_seconds": {k: round(v, 1) for k, v in run.staged.cache.seconds.items()},
        "cache_engines": sorted(run.staged.cache.engine_names),
    }
    planner = run.staged.planner
    if planner is not None and planner.plan is not None:
        metrics["plan"] = planner.plan.to_dict()
    if len(run.dm.val_idx):
        _validate(run, net, metrics)
    meta.metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    save_bundle(net, meta, run_dir / "bundle", fp16=cfg.bundle_fp16)
    csv = run_dir / "logs" / "csv" / "metrics.csv"
    if csv.is_file():
        plot_curves(csv, stages, run_dir / "curves.png")
    try:
        from hydra.core.hydra_config import HydraConfig

        metrics["overrides"] = list(HydraConfig.get().overrides.task)
    except Exception:
        pass
    io.write_json(run_dir / "metrics.json", metrics)
    log.info("run finished: %s", {k: v for k, v in metrics.items() if k != "overrides"})
    print(
        f"bundle: {run_dir / 'bundle'}  val_acc: {metrics.get('val_acc', float('nan')):.4f}"
        f"  train time: {run.train_seconds:.0f} s",
        flush=True,
    )
    return metrics


def val_view_logits(net, meta: BundleMeta, dm, policy: str):
    """(N, V, K) validation logits for every view of ``policy`` and the labels, in ONE pass.

    The end of a run needs single-view metrics and the temperature of ``policy``'s merged
    logits; the plain view is the first view of every policy, so one pass over the split (one
    decode per photo) serves both. Unreadable photos are left out.
    """
    from carclf.data.tta import View
    from carclf.inference.classifier import Classifier
    from carclf.inference.files import loader_logits

    loader = dm.tta_dataloader(policy, "val")
    preset = loader.dataset.transform
    if preset.views[0] != View():
        raise CarclfError(f"calibration_tta={policy!r}: its first view is not the plain eval view")
    logits, seen = loader_logits(
        Classifier(net, meta, device="cpu"), loader, len(dm.val_idx), len(preset)
    )
    labels = dm.rows("val")["label"].to_numpy()
    return logits[seen], labels[seen]
