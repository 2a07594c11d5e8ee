"""Structured configs: the schema behind conf/, registered in Hydra's ConfigStore.

Every YAML file under conf/ is merged onto these dataclasses, so a misspelt key or a value of the
wrong type fails when the run starts, with the full key in the message, not hours into a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from carclf.data.presets import AugmentConfig
from carclf.inference.open_set import OpenSetConfig
from carclf.models.head import HeadConfig
from carclf.train.planner import PlanConfig
from carclf.train.stages import StageConfig
from carclf.tune.config import TrialRef


@dataclass
class DataConfig:
    path: str = MISSING  # Kaggle layout, folder per class, CSV of path,label, or a zip of any
    layout: str = "auto"  # auto | kaggle | folders | csv
    class_map: str = "auto"  # auto | none | sfdl | path to classes.csv
    image_size: int = 224  # starting size; stages may change it
    batch_size: int = 32
    eval_batch_size: int | None = None
    num_workers: int = 2
    val_fraction: float = 0.15
    fold: int | None = None  # k-fold: use fold `fold` of `num_folds` as validation
    num_folds: int = 5
    resize: str = "squash"  # squash (whole car) | crop (shorter side + centre crop)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    check: bool = True  # run the data check first; unreadable files are skipped
    # Dataset report in the run dir (carclf.inspect, conf/callbacks/data_report): off | cheap (costs what the check
    # costs) | full (adds the label doctor, label_issues.csv). Needs check=true.
    report: str = "cheap"
    exclude: str | None = (
        None  # CSV (path or id column) of photos to leave out, e.g. label_issues.csv
    )
    # CSV (path or id, and label) of photos to give another label, e.g. the doctor's decisions.csv
    relabel: str | None = None
    # Extra labelled sets (folders, zips, CSVs; carclf.data.extra): training split only.
    extra: list[str] = field(default_factory=list)
    extra_class_map: str | None = None  # CSV (their,ours) or YAML mapping; None: match labels
    extra_weight: float = 1.0  # loss weight of each extra photo


@dataclass
class ModelConfig:
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "auto"  # auto | offline | hub | none | path to a weights file
    head: HeadConfig = field(default_factory=HeadConfig)
    drop_path_rate: float = 0.0
    label_smoothing: float = 0.1
    class_weights: bool = False  # inverse-frequency loss weights
    mixup: float = 0.0  # Beta(alpha, alpha) mixup, 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) cutmix, 0 = off
    mix_prob: float = 0.5  # share of batches mixed when mixup/cutmix is on
    ema_decay: float = 0.0  # EMA of weights, e.g. 0.999; 0 = off
    layer_decay: float | None = None  # layer-wise LR decay per backbone group, e.g. 0.8
    channels_last: bool = False


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"  # bf16-mixed / 16-mixed on GPU
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    deterministic: bool = False
    log_every_n_steps: int = 10
    limit_train_batches: float | None = None
    limit_val_batches: float | None = None
    enable_progress_bar: bool = True
    early_stopping_patience: int | None = None
    # Stop training this many minutes after the run started (data check and caches included).
    # Stages with `epochs: auto` / `cache_views: auto` are planned to fill it (see PlanConfig).
    time_budget_min: float | None = None


@dataclass
class DistillConfig:
    """Knowledge distillation from ``teacher`` (carclf.train.distill): used only when it is set."""

    temperature: float = 2.0  # softmax temperature of teacher and student in the KL term
    alpha: float = 0.7  # share of the loss from the teacher (the rest: the true label)
    tta: str = "none"  # views the teacher's answer per photo is merged over
    unlabelled: list[str] = field(default_factory=list)  # photos with no label, teacher only


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: str | None = None  # a bundle (e.g. an ensemble) to distil into this model
    distill: DistillConfig = field(default_factory=DistillConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    stages: dict[str, StageConfig] = field(default_factory=dict)
    recipe: str = "custom"
    seed: int = 42
    resume: str | None = None  # a run dir to continue (kill -9 safe)
    bundle_fp16: bool = False  # store the bundle's weights in fp16 (half the size)
    fit_temperature: bool = True  # temperature scaling on the validation split
    # T is fitted on the validation logits merged as predict.py merges them by default (TTA
    # changes the logit scale); "none" fits it on single-view logits.
    calibration_tta: str = "multiscale"
    # Unknown-photo rejection fitted at the end of the run (carclf.inference.open_set).
    open_set: OpenSetConfig = field(default_factory=OpenSetConfig)
    # Feature caches live in the run dir (a killed run reuses them); up to this size also in RAM.
    max_cache_mb: int = 2048
    # What computes the frozen prefix for the feature cache: auto (on a CPU the fastest of onnx,
    # int8, bf16 that passes the gate; torch on a GPU) | torch | onnx (ONNX Runtime fp32, checked
    # against PyTorch on the first batch) | int8 (ORT static QDQ) | bf16 (autocast, channels_last).
    cache_engine: str = "auto"
    # How the trained part of a cached stage runs on a CPU (carclf.train.tail_format): auto (the
    # budget probe times each and keeps the fastest) | fp32 | channels_last | bf16 (autocast).
    tail_format: str = "auto"
    plan: PlanConfig = field(default_factory=PlanConfig)
    # Experiment loggers (conf/logger: tensorboard, csv, mlflow; several at once) and extra
    # callbacks (conf/callbacks): entries with a `_target_`, built by hydra.utils.instantiate.
    logger: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None  # set by the run itself: ${run_dir} in conf/logger, conf/callbacks
    tune: TrialRef = field(default_factory=TrialRef)  # set by the search sweeper per trial


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)


register_configs()
