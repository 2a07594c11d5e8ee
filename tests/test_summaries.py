"""TensorBoard summaries (carclf.train.summaries): a finished tiny run's event file holds the
stage grids and cards, the end-of-run figures and a real HParams entry; without TensorBoard the
callback does nothing; a failing disk is logged once and never stops training."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT, TINY
from hydra import compose, initialize_config_dir
from PIL import Image

import carclf.config  # noqa: F401  (registers the schema)
from carclf.train import summary_figures as F
from carclf.train.summaries import TensorBoardSummaries
from carclf.train.tensorboard import SafeTensorBoardLogger

FAST = [
    *TINY,
    "stages.head.epochs=1",
    "stages.top.epochs=1",
    "data.report=off",
    "cache_engine=torch",
]


def compose_train(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(run_dir / "logs" / "tensorboard"),
        size_guidance={"images": 0, "tensors": 0, "scalars": 0},
    )
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def tiny_run(synthetic, tmp_path_factory):
    from carclf.train.run import train

    run_dir = tmp_path_factory.mktemp("tb") / "run"
    metrics = train(compose_train([f"data.path={synthetic}", *FAST]), run_dir)
    return run_dir, metrics


def test_event_file_tells_the_run_story(tiny_run):
    run_dir, metrics = tiny_run
    acc = _events(run_dir)
    tags = acc.Tags()
    images = set(tags["images"])
    assert {
        "stage/1_head/training_views",
        "stage/2_top/training_views",
        "final/confusion_matrix",
        "final/worst_mistakes",
        "final/per_class_accuracy",
        "final/calibration",
    } <= images, images
    grid = acc.Images("stage/1_head/training_views")[0]
    # head is a cached stage: 4 views per photo (plain, mirror, 2 random crops), 6 photos (the
    # 4 classes, then 2 more)
    size = Image.open(io.BytesIO(grid.encoded_image_string)).size
    assert size == (170 + 4 * 132 + 4, 6 * 132 + 22)
    texts = {t: acc.Tensors(t)[0].tensor_proto.string_val[0].decode() for t in tags["tensors"] if t.endswith("/text_summary")}  # fmt: skip
    assert "Stage 1/2: head" in texts["stage/1_head/text_summary"]
    assert "feature cache" in texts["stage/1_head/text_summary"]
    assert "2 of 9 backbone groups (blocks.6, conv_head)" in texts["stage/2_top/text_summary"]
    assert "data check" in texts["run/data_check/text_summary"]
    assert "true class" in texts["final/top_confusions/text_summary"] or "No validation" in texts["final/top_confusions/text_summary"]  # fmt: skip
    scalars = set(tags["scalars"])
    assert {"time/epoch_seconds", "time/train_images_per_second", "final/val_acc"} <= scalars
    assert "hp_metric" not in scalars  # no placeholder
    assert len(acc.Scalars("time/epoch_seconds")) == 2
    assert acc.Scalars("final/val_acc")[-1].value == pytest.approx(metrics["val_acc"])
    assert metrics["summaries_seconds"] > 0


def test_hparams_entry_has_the_run_choices_and_final_metrics(tiny_run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir, metrics = tiny_run
    content = _events(run_dir).PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["recipe"].string_value == "quick"
    assert hp["backbone"].string_value == "tf_efficientnet_lite0"
    assert hp["image_size"].number_value == 64 and hp["seed"].number_value == 42
    assert hp["stage/2_top/trainable_groups"].number_value == 2
    assert hp["stage/1_head/views"].number_value == 4
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    shown = {m.name.tag for m in exp.experiment.metric_infos}
    assert {"final/val_acc", "final/val_loss"} <= shown


def test_no_tensorboard_logger_means_no_summaries():
    cb = TensorBoardSummaries()
    trainer = SimpleNamespace(is_global_zero=True, loggers=[object()], callbacks=[])
    cb.setup(trainer, None, "fit")
    cb.on_train_epoch_start(trainer, None)
    cb.on_train_epoch_end(trainer, None)
    metrics = {}
    cb.on_run_finished(SimpleNamespace(), metrics)
    assert cb.tb is None and not cb.active and metrics == {}


class _FullDisk:
    def __init__(self):
        self.calls = 0

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            self.calls += 1
            raise OSError(28, "No space left on device")

        return fail


def test_full_disk_is_logged_once_and_never_raises(tmp_path, caplog):
    logger = SafeTensorBoardLogger(tmp_path, name="logs", version="tb", default_hp_metric=False)
    disk = _FullDisk()
    logger.experiment._get_file_writer = lambda: disk
    with caplog.at_level(logging.WARNING, logger="carclf.train.tensorboard"):
        for step in range(3):
            logger.log_metrics({"train/loss": 1.0}, step)
        logger.log_hyperparams({"lr": 0.1}, {"final/val_acc": 0.5})
        logger.guarded(logger.experiment.add_text, "x", "y")
        logger.finalize("success")
    warnings = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in warnings[0].getMessage()
    assert disk.calls == 1 and logger.failed


@pytest.mark.slow
def test_training_goes_on_when_tensorboard_cannot_write(synthetic, tmp_path, monkeypatch, caplog):
    """A disk that fills mid-run: the warning once, the run ends with its bundle and metrics."""
    from torch.utils.tensorboard.writer import FileWriter

    from carclf.train.run import train

    real, calls = FileWriter.add_event, {"n": 0}

    def add_event(self, event, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(28, "No space left on device")
        return real(self, event, *args, **kwargs)

    monkeypatch.setattr(FileWriter, "add_event", add_event)
    off = ["fit_temperature=false", "open_set.enabled=false", "trainer.limit_train_batches=2"]
    cfg = compose_train([f"data.path={synthetic}", *FAST, *off])
    with caplog.at_level(logging.WARNING):
        metrics = train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "bundle" / "model.safetensors").is_file()
    assert "val_acc" in metrics and calls["n"] > 5
    warned = [r for r in caplog.records if "TensorBoard: cannot write" in r.getMessage()]
    assert len(warned) == 1


# -- the pictures ---------------------------------------------------------------------------
def test_confused_classes_sit_side_by_side():
    cm = np.diag([10, 10, 10, 10, 10]).astype(int)
    cm[1, 4], cm[4, 1], cm[0, 2] = 6, 3, 1
    order = F.confusion_order(cm)
    assert order[:2] in ([1, 4], [4, 1]) and order[2:4] in ([0, 2], [2, 0])
    assert sorted(order) == list(range(5))


def test_figures_for_200_classes_keep_their_names():
    rng = np.random.default_rng(0)
    k = 200
    cm = np.diag(rng.integers(1, 8, k)) + (rng.random((k, k)) < 0.01)
    names = [f"Class name number {i} with a long tail" for i in range(k)]
    img = F.confusion_figure(cm, names)
    # every class gets a row of at least 0.11 in at 100 dpi, with its (clipped) name
    assert img.ndim == 3 and img.shape[0] >= 0.11 * 100 * k and img.shape[1] >= 0.11 * 100 * k
    acc = np.diag(cm)[:60] / cm.sum(1)[:60]
    bars = F.per_class_figure(acc, cm.sum(1)[:60], names[:60])
    assert bars.shape[0] >= 0.16 * 90 * 60  # a bar per class
    grid = F.photo_grid(
        [[np.zeros((8, 8, 3), np.uint8)] * 3] * 2, ["Приора", "Нива"], ["a", "b", "c"]
    )
    assert grid.shape == (2 * 132 + 22, 170 + 3 * 132 + 4, 3)
