"""The end of a training run: best weights -> validation pass -> temperature -> bundle and reports."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from carclf import io, phases
from carclf.errors import CarclfError
from carclf.inference.open_set import (
    OPEN_SET_FILE,
    OpenSetConfig,
    fit_open_set,
    stratified_sample,
)
from carclf.models.bundle import BundleMeta, save_bundle
from carclf.train.final_pass import final_backend
from carclf.train.plots import plot_curves

log = logging.getLogger(__name__)
END_S = 4.0  # what the end of a run takes after its validation pass: bundle, curves, metrics


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
    # (plain-view logits (N, K), labels (N,)) of the final validation pass, set by _validate:
    # what the end-of-run summaries (on_run_finished callbacks) draw, so nothing validates twice
    val_logits: tuple | None = None
    started: float | None = None  # where the run's clock started: metrics.json's run_seconds


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


def _open_set_config(cfg) -> OpenSetConfig:
    """The run's ``open_set`` settings (defaults for a resumed run from before they existed)."""
    node = cfg.get("open_set")
    if node is None:
        return OpenSetConfig()
    known = OpenSetConfig.__annotations__
    return OpenSetConfig(**{k: v for k, v in dict(node).items() if k in known})


def _validate(run: FittedRun, net, metrics: dict):
    """Single-view validation metrics, the temperature and the open set, from one pass over the
    split (plus one plain-view pass over training photos for the open set's knn bank); returns
    the fitted :class:`OpenSet` or None."""
    cfg, meta = run.cfg, run.meta
    t0 = time.perf_counter()
    policy = cfg.calibration_tta if cfg.fit_temperature else "none"
    osc = _open_set_config(cfg)
    backend = final_backend(run.staged.cache, run.staged.stages, run.module)
    views, labels, feats = val_view_logits(
        net, meta, run.dm, policy, features=osc.enabled, backend=backend
    )
    plain = views[:, 0]  # every TTA policy's first view is the plain eval view
    run.val_logits = (plain, labels)
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
    if not osc.enabled or not len(labels):
        return None
    return _fit_open_set(run, net, osc, (plain, labels, feats), metrics)


def _fit_open_set(run: FittedRun, net, osc: OpenSetConfig, val: tuple, metrics: dict):
    """The open set from the validation pass's ``(plain logits, labels, features)`` and a
    plain-view pass over training photos (the knn bank); stored in ``run.meta``."""
    cfg, meta = run.cfg, run.meta
    plain, labels, feats = val
    t0 = time.perf_counter()
    bank = train_features(
        net, meta, run.dm, osc.max_bank, cfg.seed, _progress(cfg), cache=run.staged.cache
    )
    open_set = fit_open_set(
        plain,
        labels,
        keep=osc.keep,
        temperature=meta.temperature,
        features=feats,
        bank=bank,
        k=osc.k,
        score=osc.score,
    )
    meta.open_set = open_set.meta_dict()
    fig = open_set.validation[open_set.score]
    metrics["open_set_score"] = open_set.score
    metrics["open_set_threshold"] = open_set.threshold
    metrics["open_set_val_kept"] = fig["kept"]
    metrics["open_set_seconds"] = round(time.perf_counter() - t0, 1)
    log.info(
        "open set: %s score, threshold %.4g keeps %.1f%% of %d validation photos (accuracy of "
        "the kept %.4f); bank of %d training photos in %.1f s",
        open_set.score,
        open_set.threshold,
        100 * fig["kept"],
        fig["photos"],
        fig["accuracy_kept"],
        0 if bank is None else len(bank),
        metrics["open_set_seconds"],
    )
    return open_set


def _progress(cfg) -> bool:
    try:
        return bool(cfg.trainer.enable_progress_bar)
    except (AttributeError, KeyError):
        return False


def train_features(
    net, meta: BundleMeta, dm, limit: int, seed: int = 0, progress=False, cache=None
):
    """(M, D) penultimate features of up to ``limit`` training photos (a class-stratified
    sample, the plain eval view at the bundle's size): the open set's knn bank. From the run's
    feature cache (:class:`~carclf.train.cache_stage.CacheStage`) when it holds that view of
    these weights (a tail pass, seconds), else a pass over the photos. None when the training
    split has no labelled photo."""
    from carclf.data.dataset import CarDataset
    from carclf.data.tta import tta_preset
    from carclf.inference.classifier import Classifier
    from carclf.inference.files import loader_outputs

    rows = dm.rows("train")
    labelled = np.flatnonzero(rows["label"].to_numpy() >= 0)
    if not len(labelled):
        return None
    pick = labelled[stratified_sample(rows["label"].to_numpy()[labelled], limit, seed)]
    if cache is not None:  # the cached prefix's plain view through the tail: no decode
        feats = cache.tail_features(net, meta.image_size, pick)
        if feats is not None:
            log.info("open-set bank: %d training photos from the feature cache", len(feats))
            return feats.numpy()
    rows = rows.iloc[pick]
    m = meta
    preset = tta_preset("none", size=m.image_size, mean=m.mean, std=m.std, resize=m.resize)
    loader = dm.loader(CarDataset(rows["path"].tolist(), rows["label"].tolist(), preset))
    clf = Classifier(net, meta, device="cpu")
    loader = phases.track(loader, "open-set bank", unit="batch", show=False, stop_before=END_S)
    _, seen, feats = loader_outputs(clf, loader, len(rows), 1, progress, True, "open-set bank")
    return None if feats is None else feats[seen]


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
    }
    planner = run.staged.planner
    if planner is not None and planner.plan is not None:
        metrics["plan"] = planner.plan.to_dict()
    try:
        open_set = _validate(run, net, metrics) if len(run.dm.val_idx) else None
    finally:
        run.staged.cache.close()  # the run is done: a resume will not need them
    metrics["cache_engines"] = sorted(run.staged.cache.engine_names)  # known once closed
    meta.metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    arrays = {OPEN_SET_FILE: open_set.arrays()} if open_set is not None else None
    save_bundle(net, meta, run_dir / "bundle", fp16=cfg.bundle_fp16, arrays=arrays)
    csv = run_dir / "logs" / "csv" / "metrics.csv"
    if csv.is_file():
        plot_curves(csv, stages, run_dir / "curves.png")
    try:
        from hydra.core.hydra_config import HydraConfig

        metrics["overrides"] = list(HydraConfig.get().overrides.task)
    except Exception:
        pass
    _run_finished(run, metrics)
    if run.started is not None:  # the whole run, process start to here (the time budget's)
        metrics["run_seconds"] = round(time.perf_counter() - run.started, 1)
    io.write_json(run_dir / "metrics.json", metrics)
    log.info("run finished: %s", {k: v for k, v in metrics.items() if k != "overrides"})
    print(
        f"bundle: {run_dir / 'bundle'}  val_acc: {metrics.get('val_acc', float('nan')):.4f}"
        f"  train time: {run.train_seconds:.0f} s",
        flush=True,
    )
    return metrics


def _run_finished(run: FittedRun, metrics: dict) -> None:
    """Hand the finished run (its final validation logits: ``run.val_logits``) and its metrics
    to the trainer's callbacks that have an ``on_run_finished(run, metrics)`` hook (the
    TensorBoard summaries, :mod:`carclf.train.summaries`)."""
    try:
        trainer = run.module.trainer
    except RuntimeError:  # a module that was never attached to a Trainer
        trainer = None
    for callback in getattr(trainer, "callbacks", None) or []:
        hook = getattr(callback, "on_run_finished", None)
        if callable(hook):
            hook(run, metrics)


def val_view_logits(net, meta: BundleMeta, dm, policy: str, features: bool = False, backend=None):
    """(N, V, K) validation logits for every view of ``policy``, the labels and (with
    ``features``) the plain view's (N, D) penultimate features, in ONE pass.

    The end of a run needs single-view metrics, the temperature of ``policy``'s merged logits and
    the open set's validation scores; the plain view is the first view of every policy, so one
    pass over the split (one decode per photo) serves all three. Unreadable photos are left out.
    ``backend``: what computes the logits (default: the whole network in PyTorch; the run's
    :class:`carclf.train.final_pass.PrefixTail`).
    """
    from carclf.data.tta import View
    from carclf.inference.classifier import Classifier
    from carclf.inference.files import loader_outputs

    loader = dm.tta_dataloader(policy, "val")
    preset = loader.dataset.transform
    if preset.views[0] != View():
        raise CarclfError(f"calibration_tta={policy!r}: its first view is not the plain eval view")
    # progress (one line in a log) and, under a time budget, an end that leaves the bundle time
    batches = phases.track(
        loader, f"final validation ({len(preset)} views)", unit="batch", stop_before=END_S
    )
    logits, seen, feats = loader_outputs(
        Classifier(net, meta, device="cpu", backend=backend),
        batches,
        len(dm.val_idx),
        len(preset),
        False,
        features,
    )
    labels = dm.rows("val")["label"].to_numpy()
    return logits[seen], labels[seen], None if feats is None else feats[seen]
