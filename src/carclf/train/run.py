"""``train(cfg)``: one training run, from a composed config to a bundle. ``train.py`` is a shell.

The run dir (Hydra's output dir) receives: ``config.yaml`` (resolved), ``data_check.json``,
``checkpoints/{best,last}.ckpt``, TensorBoard and CSV logs under ``logs/``, ``curves.png``,
``metrics.json`` and ``bundle/`` (the shareable model).
"""

from __future__ import annotations

import inspect
import logging
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from carclf import io, phases
from carclf.data.check import CheckReport, check_index
from carclf.data.datamodule import CarDataModule
from carclf.data.exclude import apply_exclude, apply_relabel
from carclf.data.extra import read_extra
from carclf.data.layouts import read_dataset
from carclf.data.tta import TTA_PRESETS
from carclf.errors import CarclfError, ConfigError
from carclf.inference.open_set import check_config as check_open_set
from carclf.models.bundle import BundleMeta
from carclf.models.factory import normalization
from carclf.models.module import CarClassifier
from carclf.train.cache_stage import CacheStage
from carclf.train.checkpoint import AtomicCheckpointIO
from carclf.train.csv_log import ResumableCSVLogger
from carclf.train.distill import attach_teacher
from carclf.train.ema import EMA
from carclf.train.finetune import StagedFinetuning
from carclf.train.finish import FittedRun, finish
from carclf.train.loggers import configured_callbacks, configured_loggers
from carclf.train.planner import Budget, Planner
from carclf.train.prefix_engine import check_engine
from carclf.train.progress import progress_bar, quiet_third_party
from carclf.train.stages import resolve_stages, total_epochs
from carclf.train.tail_format import check_format
from carclf.train.time_budget import TimeBudget

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


def _on_gpu(cfg) -> bool:
    """Whether this run trains on a GPU (decides which cache engines can run)."""
    acc = str(cfg.trainer.accelerator)
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


# The open set's bank from the feature cache runs only the tail: a small share of a full pass.
CACHED_BANK_SHARE = 0.1


def _finish_views(cfg, dm: CarDataModule | None = None, bank_cached: bool = False) -> float:
    """Network passes per validation image at the end of the run, in units of one plain view
    (a 1.15x view costs 1.15^2): what the budget planner keeps free for it. With ``dm``, the
    open set's pass over training photos (one plain view each, up to ``open_set.max_bank``;
    ``bank_cached``: through the tail only, from the last stage's feature cache)."""
    bank = 0.0
    osc = cfg.get("open_set")
    if dm is not None and osc is not None and osc.enabled and len(dm.val_idx):
        bank = min(len(dm.train_idx), osc.max_bank) / len(dm.val_idx)
        bank *= CACHED_BANK_SHARE if bank_cached else 1.0
    if not cfg.fit_temperature:
        return 1.0 + bank
    views = TTA_PRESETS[cfg.calibration_tta](size=224, mean=(0, 0, 0), std=(1, 1, 1)).views
    return float(sum(v.scale**2 for v in views)) + bank


def run_data_check(index, run_dir: Path, d) -> CheckReport | None:
    """The data check of ``data`` config ``d`` (skipped with ``data.check=false``): written to
    ``data_check.json`` and summed up in one line; with a report on, the per-image facts are kept
    for the report callback (:mod:`carclf.inspect`), so no image is decoded twice."""
    if not d.check:
        return None
    report = check_index(index, with_facts=d.get("report", "off") != "off")
    io.write_json(run_dir / "data_check.json", report.to_dict())
    print(report.summary(), flush=True)
    return report


def build_trainer(
    cfg: DictConfig,
    run_dir: Path,
    callbacks: list,
    max_epochs: int,
    resume_epoch: int | None = None,
) -> pl.Trainer:
    t = cfg.trainer
    limits = {k: t[k] for k in ("limit_train_batches", "limit_val_batches") if t[k] is not None}
    csv = ResumableCSVLogger(run_dir, keep_through_epoch=resume_epoch)
    quiet_third_party()
    bar = [progress_bar()] if t.enable_progress_bar else []
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
        enable_model_summary=False,  # its FLOPs column is 0 here; stages log their parameters
        reload_dataloaders_every_n_epochs=1,
        num_sanity_val_steps=0,
        logger=configured_loggers(cfg) + [csv],  # conf/logger; the CSV log is always written
        callbacks=callbacks + bar,
        plugins=[AtomicCheckpointIO()],
        **limits,
    )


# Frozen BatchNorm layers are in eval mode on purpose (see CarNet.train).
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def train(
    cfg: DictConfig,
    run_dir: str | Path,
    callbacks: list | tuple = (),
    started: float | None = None,
) -> dict:
    """Train ``cfg`` into ``run_dir`` (or continue the run ``cfg.resume``); returns the metrics.

    ``callbacks`` are extra Lightning callbacks (e.g. for monitoring), added after carclf's own
    and those of ``cfg.callbacks``. ``started`` (a ``time.perf_counter`` value, default now) is
    where the time budget starts; ``carclf train`` passes :func:`carclf.phases.clock_start`.
    """
    started = time.perf_counter() if started is None else started
    cfg, run_dir, ckpt_path, resume_epoch = open_run(cfg, run_dir)
    minutes = cfg.trainer.time_budget_min
    phases.set_budget(started + minutes * 60 if minutes else None)
    try:
        return _train(cfg, run_dir, ckpt_path, resume_epoch, list(callbacks), started)
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM (carclf.cli.sigterm_as_interrupt)
        raise type(e)(f"continue with: carclf train resume={run_dir}") from None
    finally:
        phases.set_budget(None)


def _train(cfg, run_dir: Path, ckpt_path, resume_epoch, callbacks: list, started: float) -> dict:
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    check_settings(cfg)
    dm = build_datamodule(cfg, run_dir)
    meta = build_meta(cfg, dm)
    module = build_module(cfg, meta, dm)
    staged = build_staged(cfg, module, run_dir, started, dm)
    ckpt_cb, own = run_callbacks(cfg, staged, has_val=len(dm.val_idx) > 0)
    extra = configured_callbacks(cfg) + callbacks
    trainer = build_trainer(
        cfg, run_dir, own + extra, total_epochs(staged.stages), resume_epoch=resume_epoch
    )
    t0 = time.perf_counter()
    spent = fit(trainer, module, dm, staged, ckpt_path)
    train_seconds = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return {}
    ema = next((c for c in own if isinstance(c, EMA)), None)
    budget = next((c for c in own if isinstance(c, TimeBudget)), None)
    if budget is not None:  # the end of the run may use the time kept for it
        phases.set_budget(budget.budget.end)
    stopped = spent or (budget is not None and budget.stopped)
    fitted = FittedRun(
        cfg,
        run_dir,
        module,
        dm,
        staged,
        ckpt_cb.best_model_path,
        ema,
        meta,
        train_seconds,
        {"epochs_completed": trainer.current_epoch, "stopped_by_budget": stopped},
        started=started,
    )
    return finish(fitted)


def fit(trainer: pl.Trainer, module, dm, staged: StagedFinetuning, ckpt_path) -> bool:
    """``trainer.fit``; True when the time budget ended it inside a phase.

    Lightning turns Ctrl-C into ``sys.exit(1)``; the interrupt it saw is raised again here, so
    the command exits 130 with a hint on how to resume. A phase that ran out of time
    (:class:`carclf.phases.BudgetSpent`) ends the run with the best weights so far.
    """
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except SystemExit:
        if staged.interrupt is not None:
            raise staged.interrupt from None
        raise
    except phases.BudgetSpent as e:
        log.warning("%s: the run ends with the best weights so far", e)
        staged.on_fit_end(trainer, module)
        return True
    if trainer.interrupted:
        raise KeyboardInterrupt()
    return False


def open_run(cfg: DictConfig, run_dir) -> tuple[DictConfig, Path, Path | None, int | None]:
    """The config, run dir, checkpoint and last checkpointed epoch of a new or resumed run.

    A new run writes its resolved ``config.yaml``; ``resume_epoch`` (None for a new run) is the
    last epoch the checkpoint covers: metrics.csv keeps the rows up to it.
    """
    ckpt_path, resume_epoch = None, None
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
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)  # ${run_dir} in conf/logger and conf/callbacks
    if resume_epoch is None:
        io.write_text(run_dir / CONFIG_FILE, saved_config(cfg))
        (run_dir / "plan.json").unlink(missing_ok=True)  # an earlier run's plan is not this one's
    return cfg, run_dir, ckpt_path, resume_epoch


def saved_config(cfg: DictConfig) -> str:
    """``config.yaml``: the resolved config, except that loggers and callbacks keep their
    ``${...}`` references (``${run_dir}``), so a run's config says what was chosen, not where
    the run happened to live, and a resumed or rerun copy resolves them for its own dir."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for group in ("logger", "callbacks"):
        if group in cfg:
            data[group] = OmegaConf.to_container(cfg[group], resolve=False)
    data["run_dir"] = None
    return OmegaConf.to_yaml(data)


def check_settings(cfg: DictConfig) -> None:
    """Settings that would only fail after training: checked before anything is built."""
    if cfg.fit_temperature and cfg.calibration_tta not in TTA_PRESETS:
        raise ConfigError(
            f"calibration_tta={cfg.calibration_tta!r}: choose one of {sorted(TTA_PRESETS)}"
        )
    check_engine(cfg.cache_engine, "cuda" if _on_gpu(cfg) else "cpu")
    check_format(cfg.get("tail_format", "auto"))
    if cfg.get("open_set") is not None:
        check_open_set(cfg.open_set)


def _pick(node, fn, skip=()) -> dict:
    """The keys of config ``node`` that are parameters of ``fn`` (plain Python values)."""
    params = inspect.signature(fn).parameters
    values = OmegaConf.to_container(node, resolve=True)
    return {k: v for k, v in values.items() if k in params and k not in skip}


def build_datamodule(cfg: DictConfig, run_dir: Path) -> CarDataModule:
    d = cfg.data
    index = read_dataset(d.path, layout=d.layout, class_map=d.class_map)
    index = apply_exclude(apply_relabel(index, d.get("relabel")), d.get("exclude"))
    check = run_data_check(index, run_dir, d)
    mean, std = normalization(cfg.model.backbone)
    extra = read_extra(
        d.extra, index, class_map=d.extra_class_map, weight=d.extra_weight, run_dir=run_dir
    )
    dm = CarDataModule(
        index=index,
        seed=cfg.seed,
        mean=mean,
        std=std,
        bad_files=check.bad_paths if check else (),
        extra=extra,
        **_pick(d, CarDataModule, skip=("path", "layout", "class_map", "extra")),
    )
    dm.check_report = check  # read by the data report callback (conf/callbacks/data_report)
    if cfg.get("teacher"):
        attach_teacher(dm, cfg.teacher, cfg.distill, run_dir)
    return dm


def build_meta(cfg: DictConfig, dm: CarDataModule) -> BundleMeta:
    index, d, m = dm.index, cfg.data, cfg.model
    return BundleMeta(
        backbone=m.backbone,
        class_names=index.class_names,
        class_names_local=index.class_names_local,
        label_values=index.label_values,
        image_size=d.image_size,
        mean=list(dm.mean),
        std=list(dm.std),
        resize=d.resize,
        head=OmegaConf.to_container(m.head),
        extra={"recipe": cfg.recipe, "dataset": str(index.root)},
    )


def build_module(cfg: DictConfig, meta: BundleMeta, dm: CarDataModule) -> CarClassifier:
    m = cfg.model
    return CarClassifier(
        asdict(meta),
        class_weights=dm.class_weights().tolist() if m.class_weights else None,
        seed=cfg.seed,
        **_pick(m, CarClassifier, skip=("class_weights",)),
    )


def build_staged(cfg: DictConfig, module: CarClassifier, run_dir: Path, started: float, dm=None):
    d, minutes = cfg.data, cfg.trainer.time_budget_min
    stages = resolve_stages(
        cfg.stages, module.net.num_groups, d.image_size, d.batch_size, d.augment.strength
    )
    planner = None
    if minutes:
        budget = Budget(minutes * 60.0, start=started)
        planner = Planner(budget, OmegaConf.to_container(cfg.plan), run_dir / "plan.json")
    cache = CacheStage(cfg.cache_engine, cfg.max_cache_mb, run_dir / "cache")
    # On one device the last stage's cache serves the open set's bank (see train/finish.py).
    single = cfg.trainer.devices in (1, "1", "auto") and cfg.trainer.num_nodes == 1
    bank_cached = single and not _on_gpu(cfg) and cache.cacheable(stages[-1], module)
    return StagedFinetuning(
        stages,
        layer_decay=cfg.model.layer_decay,
        cache=cache,
        planner=planner,
        finish_views=_finish_views(cfg, dm, bank_cached),
        tail_format=cfg.get("tail_format", "auto"),  # a run resumed from before it existed
    )


def run_callbacks(cfg: DictConfig, staged: StagedFinetuning, has_val: bool):
    """carclf's own callbacks (the stage schedule, checkpoints, EMA, budget, early stop)."""
    ckpt_cb = ModelCheckpoint(
        dirpath=str(Path(cfg.run_dir) / "checkpoints"),
        filename="best",
        monitor="val/acc" if has_val else None,
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
    )
    # Lightning's save_last only writes when a top-k checkpoint is written; resume needs one every
    # epoch, so "last" is its own unmonitored checkpoint, overwritten (atomically) each epoch.
    last_cb = ModelCheckpoint(
        dirpath=str(Path(cfg.run_dir) / "checkpoints"),
        filename="last",
        save_top_k=1,
        enable_version_counter=False,
    )
    own = [staged, ckpt_cb, last_cb]
    if cfg.model.ema_decay > 0:
        own.append(EMA(cfg.model.ema_decay))
    if staged.planner is not None:
        own.append(TimeBudget(staged.planner.budget))
    if cfg.trainer.early_stopping_patience and has_val:
        patience = cfg.trainer.early_stopping_patience
        own.append(EarlyStopping(monitor="val/acc", mode="max", patience=patience))
    return ckpt_cb, own
