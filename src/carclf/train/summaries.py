"""TensorBoardSummaries: a run's story in TensorBoard (``conf/callbacks/tensorboard_summaries.yaml``).

Beside the scalars Lightning logs (losses, accuracies, the learning rate of every parameter
group from ``LearningRateMonitor``, the stage index), this callback writes:

* at each stage start, under ``stage/<n>_<name>/``: a grid of the training views of a few photos
  (a cached stage shows the views its feature cache holds, made by the presets
  ``CacheStage.view_presets`` uses: the plain photo, its mirror, random crops; an uncached stage
  shows fresh random augmentations), rows named by class; and a text card: trained groups, LRs,
  image and batch size, views, epochs planned. Once, under ``run/``: the budget plan and the data
  check summary;
* per epoch, under ``time/``: the epoch's seconds and the training images per second;
* at the end (``final/``): the validation confusion matrix (classes that are confused with each
  other side by side; the top confusions as a table), a gallery of the worst validation mistakes
  (photo, true and predicted class, probability), accuracy per class, the calibration curve;
* the HParams tab: the run's main choices against its final validation accuracy and loss
  (``logger.tensorboard.default_hp_metric=false``: no ``hp_metric = -1`` placeholder).

The end-of-run pictures reuse the validation logits the end of the run computed anyway
(:func:`carclf.train.finish.finish` hands them over through :meth:`on_run_finished`): no second
validation pass. With no TensorBoard logger (``logger=csv``) the callback does nothing; a failed
write (disk full) is logged once and switches TensorBoard off, training goes on
(:mod:`carclf.train.tensorboard`).
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import pytorch_lightning as pl
import torch

from carclf.data.classmaps import display_name
from carclf.data.images import load_rgb
from carclf.errors import ImageDecodeError
from carclf.train import summary_figures as F
from carclf.train.cache_stage import CacheStage
from carclf.train.finetune import StagedFinetuning, rng_state, set_rng_state
from carclf.train.summary_text import card, hparams, per_class_table, top_confusions_table
from carclf.train.tensorboard import failed, find_tensorboard, guarded

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _same_random_state():
    """Drawing the views must not change what the run draws next (same seed, same run)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


class TensorBoardSummaries(pl.Callback):
    """See the module docstring.

    Args:
        photos: photos per stage grid (one per class, as many classes as that).
        views: views per photo in a grid (a cached stage shows at most its cache's views).
        tile: pixels per view in the grid.
        gallery: worst validation mistakes shown at the end.
        confusions: top confusions listed at the end.
    """

    def __init__(
        self,
        photos: int = 6,
        views: int = 6,
        tile: int = 128,
        gallery: int = 16,
        confusions: int = 15,
    ):
        self.photos, self.views, self.tile = photos, views, tile
        self.gallery, self.confusions = gallery, confusions
        self.tb = None
        self.seconds = 0.0  # time spent writing summaries (metrics.json: summaries_seconds)
        self._stage: int | None = None
        self._once = False
        self._epoch_start = self._last_batch = 0.0
        self._images = 0

    # -- wiring -------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        self.tb = find_tensorboard(trainer) if trainer.is_global_zero else None
        if self.tb is None:
            log.debug("no TensorBoard logger: no summaries")

    def _write(self, fn, *args, **kwargs):
        if self.tb is not None:
            guarded(self.tb, fn, *args, **kwargs)

    @property
    def active(self) -> bool:
        return self.tb is not None and not failed(self.tb)

    @contextlib.contextmanager
    def _timed(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0

    # -- stages -------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        if self.active:
            staged = next((c for c in trainer.callbacks if isinstance(c, StagedFinetuning)), None)
            with self._timed():
                if not self._once:
                    self._once = True
                    self._run_cards(trainer, staged)
                if (
                    staged is not None
                    and staged.applied is not None
                    and staged.applied != self._stage
                ):
                    self._stage = staged.applied
                    self._stage_start(trainer, pl_module, staged)
        self._epoch_start = self._last_batch = time.perf_counter()
        self._images = 0

    def _run_cards(self, trainer, staged) -> None:
        exp, step = self.tb.experiment, trainer.global_step
        planner = getattr(staged, "planner", None)
        if planner is not None and planner.plan is not None:
            text = planner.plan.describe(staged.stages)
            self._write(exp.add_text, "run/budget_plan", text, step)
        check = getattr(trainer.datamodule, "check_report", None)
        if check is not None:
            block = "\n".join("    " + line for line in check.summary().splitlines())
            self._write(exp.add_text, "run/data_check", block, step)

    def _stage_start(self, trainer, pl_module, staged: StagedFinetuning) -> None:
        stage = staged.current_stage()
        tag = f"stage/{stage.index + 1}_{stage.name}"
        exp, step = self.tb.experiment, trainer.global_step
        text = card(stage, len(staged.stages), pl_module.net, staged.cut)
        self._write(exp.add_text, tag, text, step)
        try:
            with _same_random_state():
                grid = self._grid(trainer.datamodule, pl_module, stage, staged.cut)
        except Exception:  # a picture must never cost the run
            log.warning("TensorBoard: no view grid for stage %s", stage.name, exc_info=True)
            return
        if grid is not None:
            self._write(exp.add_image, f"{tag}/training_views", grid, step, dataformats="HWC")

    def _grid(self, dm, pl_module, stage, cut: int) -> np.ndarray | None:
        rows = dm.rows("train")
        rows = rows[rows["label"].to_numpy() >= 0]
        if not len(rows):
            return None
        pick = _one_per_class(rows["label"].to_numpy(), self.photos, seed=stage.index)
        if cut:
            n = min(self.views, stage.cache_views)
            presets = CacheStage.view_presets(dm, "train", stage.cache_views)[:n]
            heads = ["plain", "mirror"] + [f"random crop {i}" for i in range(1, n - 1)]
        else:
            presets = [dm.train_preset() for _ in range(self.views)]
            heads = [f"random view {i}" for i in range(1, self.views + 1)]
        data = CacheStage.multiview(dm, rows.iloc[pick], presets)
        names = _display_names(pl_module.meta)
        pictures, labels = [], []
        for i in range(len(data)):
            item = data[i]
            if item is None:
                continue
            views, label, _ = item
            pictures.append([F.to_uint8(v, dm.mean, dm.std) for v in views])
            labels.append(names[int(label)])
        if not pictures:
            return None
        return F.photo_grid(pictures, labels, heads[: len(presets)], self.tile)

    # -- epochs -------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, (list, tuple)) and len(batch) > 1 and hasattr(batch[1], "__len__"):
            self._images += len(batch[1])
        self._last_batch = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not self.active:
            return
        with self._timed():
            now, exp, step = time.perf_counter(), self.tb.experiment, trainer.global_step
            train_s = max(self._last_batch - self._epoch_start, 1e-9)
            self._write(exp.add_scalar, "time/epoch_seconds", now - self._epoch_start, step)
            self._write(
                exp.add_scalar, "time/train_images_per_second", self._images / train_s, step
            )

    # -- the end of the run ---------------------------------------------------------------------
    def on_run_finished(self, run, metrics: dict) -> None:
        """Called by the end of the run (:func:`carclf.train.finish.finish`) with its fitted run
        (``run.val_logits``: the final plain-view validation logits and labels, or None) and
        its metrics; adds ``summaries_seconds`` to them."""
        if not self.active:
            return
        with self._timed():
            try:
                self._final(run, metrics)
            except Exception:  # a picture must never cost the run's bundle and metrics
                log.warning("TensorBoard: end-of-run summaries failed", exc_info=True)
            self._write(hparams_writer(self.tb), run, metrics)
            self._write(self.tb.experiment.flush)
        metrics["summaries_seconds"] = round(self.seconds, 2)

    def _final(self, run, metrics: dict) -> None:
        val = getattr(run, "val_logits", None)
        if val is None:
            return
        logits, labels = (np.asarray(a) for a in val)
        if not len(labels):
            return
        exp = self.tb.experiment
        step = int(getattr(run.module, "global_step", 0) or 0)
        names = _display_names(run.meta)
        k = len(names)
        probs = torch.softmax(torch.from_numpy(logits).float() / run.meta.temperature, 1).numpy()
        pred = probs.argmax(1)
        cm = np.zeros((k, k), dtype=np.int64)
        np.add.at(cm, (labels, pred), 1)
        img = F.confusion_figure(cm, names)
        self._write(exp.add_image, "final/confusion_matrix", img, step, dataformats="HWC")
        text = top_confusions_table(cm, names, self.confusions)
        self._write(exp.add_text, "final/top_confusions", text, step)
        support = cm.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.diag(cm) / support
        img = F.per_class_figure(acc, support, names)
        self._write(exp.add_image, "final/per_class_accuracy", img, step, dataformats="HWC")
        self._write(
            exp.add_text, "final/per_class_accuracy", per_class_table(acc, support, names), step
        )
        conf = probs.max(1)
        img = F.calibration_figure(conf, (pred == labels).astype(float))
        self._write(exp.add_image, "final/calibration", img, step, dataformats="HWC")
        paths = run.dm.rows("val")["path"].tolist()
        if len(paths) == len(labels):  # no unreadable validation photo was left out
            img = self._mistakes(paths, labels, pred, conf, names)
            self._write(exp.add_image, "final/worst_mistakes", img, step, dataformats="HWC")

    def _mistakes(self, paths, labels, pred, conf, names) -> np.ndarray:
        wrong = np.flatnonzero(pred != labels)
        worst = wrong[np.argsort(-conf[wrong], kind="stable")][: self.gallery]
        items = []
        for i in worst:
            try:
                pic = load_rgb(paths[i], draft_size=330)
            except ImageDecodeError:
                pic = None
            lines = [f"true: {names[labels[i]]}", f"said: {names[pred[i]]}", f"p = {conf[i]:.2f}"]
            items.append((pic, lines))
        return F.gallery(items)


def hparams_writer(tb):
    def write(run, metrics: dict) -> None:
        params, values = hparams(run.cfg, run.staged.stages, metrics)
        if not values:
            log.info("TensorBoard: no validation split, so no HParams entry")
            return
        tb.log_hyperparams(params, values)

    return write


def _display_names(meta) -> list[str]:
    local = meta.class_names_local or [None] * len(meta.class_names)
    return [display_name(n, loc) for n, loc in zip(meta.class_names, local, strict=True)]


def _one_per_class(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Row indices of ``n`` photos, one of each of ``n`` classes where there are that many."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    chosen = rng.choice(classes, size=min(n, len(classes)), replace=False)
    rows = [int(rng.choice(np.flatnonzero(labels == c))) for c in sorted(chosen)]
    if len(rows) < n:
        rest = np.setdiff1d(np.arange(len(labels)), rows)
        rows += rng.choice(rest, size=min(n - len(rows), len(rest)), replace=False).tolist()
    return np.asarray(rows)
