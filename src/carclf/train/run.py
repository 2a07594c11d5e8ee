"""``train(cfg)``: one training run, from a composed config to a bundle. ``train.py`` is a shell.

The run dir (Hydra's output dir) receives: ``config.yaml`` (resolved), ``data_check.json``,
``checkpoints/{best,last}.ckpt``, TensorBoard and CSV logs under ``logs/``, ``curves.png``,
``metrics.json`` and ``bundle/`` (the shareable model).
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import pytorch_lightning as pl
import timm
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from carclf.data.check import check_index
from carclf.data.datamodule import CarDataModule
from carclf.data.exclude import apply_exclude
from carclf.data.extra import read_extra
from carclf.data.layouts import read_dataset
from carclf.data.report import write_run_report
from carclf.data.tta import TTA_PRESETS
from carclf.distill import attach_teacher
from carclf.errors import CarclfError
from carclf.models.bundle import BundleMeta, save_bundle
from carclf.models.module import CarClassifier
from carclf.train.budget import Budget
from carclf.train.callbacks import StagedFinetuning, TimeBudget
from carclf.train.checkpoint import AtomicCheckpointIO
from carclf.train.csv_log import ResumableCSVLogger
from carclf.train.ema import EMA
from carclf.train.loggers import chosen_loggers
from carclf.train.plots import plot_curves
from carclf.train.prefix_engine import check_engine
from carclf.train.stages import resolve_stages, total_epochs

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"


def resume_config(run_dir: str | Path) -> tuple[DictConfig, Path | None]:
    """The saved config and last checkpoint of a run to continue.

    A run killed before its first epoch ended has no checkpoint: it starts again in the same run
    dir with the same config, and what it had already cached (see FeatureCache) is reused.
    """
    run_dir = Path(run_dir).expanduser()
    cfg_path, ckpt = run_dir / CONFIG_FILE, run_dir / "checkpoints" / "last.ckpt"
    if not cfg_path.is_file():
        raise CarclfError(f"resume={run_dir}: no {CONFIG_FILE} there; is it a carclf run dir?")
    cfg = OmegaConf.load(cfg_path)
    cfg.resume = str(run_dir)
    if not ckpt.is_file():
        log.warning(
            "resume=%s: no checkpoint yet (killed before its first epoch ended): starting the run "
            "again there, reusing its feature caches",
            run_dir,
        )
        return cfg, None
    return cfg, ckpt


def normalization(backbone: str) -> tuple[list[float], list[float]]:
    """Mean and std the backbone's pretrained weights expect (timm's pretrained config)."""
    try:
        pc = timm.models.get_pretrained_cfg(backbone)
    except Exception:
        pc = None
    mean = getattr(pc, "mean", None) or timm.data.IMAGENET_DEFAULT_MEAN
    std = getattr(pc, "std", None) or timm.data.IMAGENET_DEFAULT_STD
    return list(mean), list(std)


def _on_gpu(cfg) -> bool:
    """Whether this run trains on a GPU (decides which cache engines can run)."""
    acc = str(cfg.trainer.accelerator)
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


def _finish_views(cfg) -> float:
    """Network passes per validation image at the end of the run, in units of one plain view
    (a 1.15x view costs 1.15^2): what the budget planner keeps free for it."""
    if not cfg.fit_temperature:
        return 1.0
    views = TTA_PRESETS[cfg.calibration_tta](size=224, mean=(0, 0, 0), std=(1, 1, 1)).views
    return float(sum(v.scale**2 for v in views))


def run_data_check(index, run_dir: Path, enabled: bool, mode: str = "off") -> list[str]:
    if not enabled:
        return []
    if mode != "off":  # data_check.json + report.html/json, each image decoded once for both
        report = write_run_report(index, run_dir, mode)
    else:
        report = check_index(index)
        (run_dir / "data_check.json").write_text(
            json.dumps(report.to_dict(), indent=1, ensure_ascii=False)
        )
    print(report.summary(), flush=True)
    return report.bad_paths


def build_trainer(
    cfg: DictConfig,
    run_dir: Path,
    callbacks: list,
    max_epochs: int,
    resume_epoch: int | None = None,
) -> pl.Trainer:
    t = cfg.trainer
    limits = {k: t[k] for k in ("limit_train_batches", "limit_val_batches") if t[k] is not None}
    return pl.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches,
        deterministic=t.deterministic,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar,
        reload_dataloaders_every_n_epochs=1,
        num_sanity_val_steps=0,
        logger=chosen_loggers(  # conf/logger (carclf.train.loggers)
            cfg,
            run_dir,
            TensorBoardLogger(str(run_dir), name="logs", version="tensorboard"),
            ResumableCSVLogger(run_dir, keep_through_epoch=resume_epoch),
        ),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        **limits,
    )


# Frozen BatchNorm layers are in eval mode on purpose (see CarNet.train).
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


_runs_in_process = 0


def clock_start() -> float:
    """Where a command-line run's time budget starts (a ``time.perf_counter`` value).

    For the first run of a ``train.py`` process, when the process started: a user times the
    command, and the interpreter's start and the imports (seconds for torch) are part of it.
    Later runs in the same process (the jobs of a sweep) start their clock when they are called.
    """
    global _runs_in_process
    now = time.perf_counter()
    _runs_in_process += 1
    if _runs_in_process > 1:
        return now
    try:  # Linux: process start in clock ticks after boot, and the time since boot
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return now
    return now - age if 0 <= age < 600 else now


def train(
    cfg: DictConfig,
    run_dir: str | Path,
    callbacks: list | tuple = (),
    started: float | None = None,
) -> dict:
    """Train ``cfg`` into ``run_dir`` (or continue the run ``cfg.resume``); returns the metrics.

    ``callbacks`` are extra Lightning callbacks (e.g. for monitoring), added after carclf's own.
    ``started`` (a ``time.perf_counter`` value, default now) is where the time budget starts;
    ``train.py`` passes :func:`clock_start`.
    """
    started = time.perf_counter() if started is None else started
    ckpt_path = None
    resume_epoch = None  # the last epoch the checkpoint covers (metrics.csv keeps rows up to it)
    if cfg.get("resume"):
        cfg, ckpt_path = resume_config(cfg.resume)
        run_dir = Path(cfg.resume)
        resume_epoch = -1
        if ckpt_path is not None:
            log.info("resuming %s from %s", run_dir, ckpt_path)
            resume_epoch = int(
                torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)["epoch"]
            )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume_epoch is None:
        (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (run_dir / "plan.json").unlink(missing_ok=True)  # an earlier run's plan is not this one's
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")

    d, m = cfg.data, cfg.model
    # A bad calibration policy would only surface after training: check it first.
    if cfg.fit_temperature and cfg.calibration_tta not in TTA_PRESETS:
        raise CarclfError(
            f"calibration_tta={cfg.calibration_tta!r}: choose one of {sorted(TTA_PRESETS)}"
        )
    index = read_dataset(d.path, layout=d.layout, class_map=d.class_map)
    index = apply_exclude(index, d.get("exclude"))
    bad = run_data_check(index, run_dir, d.check, d.get("report", "off"))
    mean, std = normalization(m.backbone)
    extra = read_extra(
        d.extra, index, class_map=d.extra_class_map, weight=d.extra_weight, run_dir=run_dir
    )
    dm = CarDataModule(
        index=index,
        image_size=d.image_size,
        batch_size=d.batch_size,
        eval_batch_size=d.eval_batch_size,
        num_workers=d.num_workers,
        val_fraction=d.val_fraction,
        fold=d.fold,
        num_folds=d.num_folds,
        seed=cfg.seed,
        mean=mean,
        std=std,
        resize=d.resize,
        augment=OmegaConf.to_container(d.augment),
        bad_files=bad,
        extra=extra,
    )
    if cfg.get("teacher"):
        attach_teacher(dm, cfg.teacher, cfg.distill, run_dir)
    meta = BundleMeta(
        backbone=m.backbone,
        class_names=index.class_names,
        class_names_local=index.class_names_local,
        label_values=index.label_values,
        image_size=d.image_size,
        mean=mean,
        std=std,
        resize=d.resize,
        head=OmegaConf.to_container(m.head),
        extra={"recipe": cfg.recipe, "dataset": str(index.root)},
    )
    module = CarClassifier(
        asdict(meta),
        weights=m.weights,
        drop_path_rate=m.drop_path_rate,
        label_smoothing=m.label_smoothing,
        class_weights=dm.class_weights().tolist() if m.class_weights else None,
        mixup=m.mixup,
        cutmix=m.cutmix,
        mix_prob=m.mix_prob,
        channels_last=m.channels_last,
    )
    stages = resolve_stages(
        cfg.stages, module.net.num_groups, d.image_size, d.batch_size, d.augment.strength
    )
    check_engine(cfg.cache_engine, "cuda" if _on_gpu(cfg) else "cpu")
    budget = (
        Budget(cfg.trainer.time_budget_min * 60.0, start=started)
        if cfg.trainer.time_budget_min
        else None
    )
    staged = StagedFinetuning(
        stages,
        layer_decay=m.layer_decay,
        max_cache_mb=cfg.max_cache_mb,
        cache_dir=run_dir / "cache",
        plan_file=run_dir / "plan.json",
        cache_engine=cfg.cache_engine,
        budget=budget,
        plan=OmegaConf.to_container(cfg.plan),
        finish_views=_finish_views(cfg),
    )
    has_val = len(dm.val_idx) > 0
    ckpt_cb = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best",
        monitor="val/acc" if has_val else None,
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
    )
    # Lightning's save_last only writes when a top-k checkpoint is written; resume needs one every
    # epoch, so "last" is its own unmonitored checkpoint, overwritten (atomically) each epoch.
    last_cb = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="last",
        save_top_k=1,
        enable_version_counter=False,
    )
    ema = EMA(m.ema_decay) if m.ema_decay > 0 else None
    own = [staged, ckpt_cb, last_cb, LearningRateMonitor(logging_interval="epoch")] + (
        [ema] if ema else []
    )
    if budget is not None:
        own.append(TimeBudget(budget))
    if cfg.trainer.early_stopping_patience and has_val:
        own.append(
            EarlyStopping(
                monitor="val/acc", mode="max", patience=cfg.trainer.early_stopping_patience
            )
        )
    trainer = build_trainer(
        cfg, run_dir, own + list(callbacks), total_epochs(stages), resume_epoch=resume_epoch
    )

    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
    train_seconds = time.perf_counter() - t0
    if trainer.interrupted:
        raise CarclfError(
            f"training interrupted; continue it with: python train.py resume={run_dir}"
        )
    if not trainer.is_global_zero:
        return {}
    metrics = {"epochs_completed": trainer.current_epoch}
    return finish(
        cfg, run_dir, module, dm, staged.stages, staged, ckpt_cb, ema, meta, train_seconds, metrics
    )


def finish(
    cfg,
    run_dir: Path,
    module,
    dm,
    stages,
    staged,
    ckpt_cb,
    ema,
    meta: BundleMeta,
    train_seconds: float,
    metrics: dict,
) -> dict:
    """Best weights -> temperature -> bundle, curves and metrics.json."""
    best = ckpt_cb.best_model_path
    # The bundle's image size is that of the stage whose weights it keeps: with progressive
    # resizing the best epoch may come from an earlier, smaller stage.
    size = stages[-1].image_size
    if best and Path(best).is_file():
        state = torch.load(best, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"])
        best_stage = state.get("callbacks", {}).get("StagedFinetuning", {}).get("stage")
        if best_stage is not None:
            size = stages[best_stage].image_size
        shadow = state.get("callbacks", {}).get("EMA", {}).get("shadow")
        if shadow:
            module.net.load_state_dict({k: v.cpu() for k, v in shadow.items()}, strict=False)
    elif ema is not None and ema.shadow is not None:
        module.net.load_state_dict(ema.shadow, strict=False)
    net = module.net.cpu().eval()
    module.input_start = 0
    meta.image_size = size
    dm.image_size = meta.image_size
    metrics = {
        "recipe": cfg.recipe,
        "train_seconds": round(train_seconds, 1),
        "epochs": stages[-1].end_epoch,
        **metrics,
    }
    metrics["cache_seconds"] = {k: round(v, 1) for k, v in staged.cache_seconds.items()}
    metrics["cache_engines"] = sorted(staged.engine_names)
    if staged.plan is not None:
        metrics["plan"] = staged.plan.to_dict()
    if len(dm.val_idx):
        t0 = time.perf_counter()
        policy = cfg.calibration_tta if cfg.fit_temperature else "none"
        views, labels = val_view_logits(net, meta, dm, policy)
        plain = views[:, 0]  # every TTA policy's first view is the plain eval view
        metrics["val_acc"] = float((plain.argmax(1) == labels).mean())
        metrics["val_loss"] = float(
            torch.nn.functional.cross_entropy(torch.from_numpy(plain), torch.from_numpy(labels))
        )
        # With no validation mistakes the NLL-optimal temperature runs off to ~0 (certainty);
        # that is an artefact of a small or easy split, not calibration, so keep T=1 then.
        if cfg.fit_temperature and metrics["val_acc"] < 1.0:
            from carclf.evaluate.calibration import fit_temperature

            # logit averaging, predict.py's default merge
            meta.temperature = float(fit_temperature(views.mean(1), labels))
            metrics["temperature"] = meta.temperature
        metrics["final_val_seconds"] = round(time.perf_counter() - t0, 1)
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
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log.info("run finished: %s", {k: v for k, v in metrics.items() if k != "overrides"})
    print(
        f"bundle: {run_dir / 'bundle'}  val_acc: {metrics.get('val_acc', float('nan')):.4f}  train time: {train_seconds:.0f} s",
        flush=True,
    )
    return metrics


def val_view_logits(net, meta: BundleMeta, dm: CarDataModule, policy: str):
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
