"""``predict(cfg)`` and ``evaluate(cfg)``: what ``predict.py`` runs, callable without the CLI.

predict: model + inputs -> per-view logits (batched loader, TTA) -> merged probabilities ->
submission CSV (sample-submission ids and order) + top-k CSV. evaluate: the same on a labelled
set, then metrics, calibration before/after temperature scaling, and the HTML report.
An unreadable image never stops a run: it is logged, listed in the top-k CSV with its reason,
and still gets a (fallback) row in the submission.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from carclf.cli import exit_code
from carclf.data.inputs import InputSet, LabelMatcher, collect_inputs
from carclf.data.tta import TTAPreset, merge_views
from carclf.errors import ConfigError
from carclf.evaluate import heatmaps
from carclf.evaluate.evaluation import score
from carclf.evaluate.open_set_report import OpenSetEvaluation, evaluate_open_set
from carclf.evaluate.report import write_report
from carclf.evaluate.submission import (
    fallback_label,
    read_sample_submission,
    submission_frame,
    topk_frame,
    topk_path,
    write_csv,
)
from carclf.inference.classifier import Classifier
from carclf.inference.files import ViewLogits, infer_paths
from carclf.inference.loading import load_classifier

log = logging.getLogger(__name__)


@dataclass
class PredictResult:
    """Everything a prediction run produced, for evaluation, benchmarks and tests."""

    classifier: Classifier
    tta: TTAPreset
    items: InputSet
    views: ViewLogits
    probs: np.ndarray  # (N, K) at the model's temperature; NaN rows for unreadable images
    submission: Path
    topk: Path
    filled: list[str] = field(default_factory=list)
    open_set_scores: np.ndarray | None = None  # (N,) NaN for unreadable; None: no open-set data
    explainer: object | None = None  # the Grad-CAM explainer, once explain=true made one


def build_tta(spec, classifier: Classifier) -> TTAPreset:
    """Instantiate the ``tta`` config node on the model's preprocessing contract."""
    m = classifier.meta
    if spec is None or isinstance(spec, (str, TTAPreset)):
        return classifier.tta_preset(spec)
    try:
        preset = instantiate(
            spec, size=m.image_size, mean=list(m.mean), std=list(m.std), resize=m.resize
        )
    except (InstantiationException, TypeError, ValueError) as e:
        cause = e.__cause__ or e
        raise ConfigError(f"tta: cannot build the TTA preset ({cause})") from None
    return classifier.check_tta(preset)


def load_model(cfg: DictConfig) -> tuple[Classifier, TTAPreset]:
    """The model and its TTA preset from predict.py's settings (see ``load_classifier``: with
    ``backend=auto``, a policy the ONNX model cannot run switches to the PyTorch backend)."""
    clf = load_classifier(
        cfg.model, cfg.backend, device=cfg.device, tta=lambda c: build_tta(cfg.tta, c)
    )
    return clf, clf.tta


def _log_errors(items: InputSet, errors: dict[int, str]) -> None:
    if not errors:
        return
    shown = "; ".join(f"{items.ids[i]} ({r})" for i, r in list(errors.items())[:10])
    more = f" and {len(errors) - 10} more" if len(errors) > 10 else ""
    log.warning("%d unreadable image(s), listed in the top-k CSV: %s%s", len(errors), shown, more)


def _submission(cfg, items: InputSet, predicted: dict, fallback) -> tuple[pd.DataFrame, list[str]]:
    sample_path = cfg.sample_submission or items.sample_submission
    if sample_path is None:
        labels = [predicted.get(i, fallback) for i in items.ids]
        missing = [i for i in items.ids if i not in predicted]
        return pd.DataFrame({"Id": items.ids, "Category": labels}), missing
    sample = read_sample_submission(sample_path)
    frame, filled = submission_frame(sample, predicted, fallback)
    listed = set(sample.iloc[:, 0])
    extra = [i for i in items.ids if i not in listed and PurePosixPath(i).name not in listed]
    if extra:
        log.info("%d input image(s) are not in %s and are left out of it", len(extra), sample_path)
    log.info("submission follows %s (%d ids)", sample_path, len(sample))
    return frame, filled


def predict(cfg: DictConfig) -> PredictResult:
    """Predict every input image; write the submission and the top-k CSV."""
    clf, tta = load_model(cfg)
    m = clf.meta
    match = LabelMatcher(m.label_values, m.class_names, m.class_names_local)
    if cfg.labels and not cfg.evaluate:
        log.info("labels=%s is only used with evaluate=true; predicting only", cfg.labels)
    if cfg.get("unknown") and not cfg.evaluate:
        log.info("unknown=%s is only used with evaluate=true; predicting only", cfg.unknown)
    items = collect_inputs(
        cfg.input,
        labelled=cfg.evaluate,
        labels_csv=cfg.labels if cfg.evaluate else None,
        match=match,
    )
    log.info(
        "%d image(s) from %s; model %s (%s backend); TTA %s",
        len(items),
        cfg.input,
        cfg.model,
        getattr(clf.backend, "name", "?"),
        tta.describe(),
    )
    every_score = bool(cfg.evaluate and cfg.get("unknown") and clf.has_features)
    views = infer_paths(
        clf, items.paths, tta, cfg.batch_size, cfg.num_workers, cfg.progress, every_score or None
    )
    probs = merge_views(torch.from_numpy(views.logits), clf.temperature, tta.merge).numpy()
    open_scores = _open_set_scores(clf, views)
    _log_errors(items, views.errors)
    ok = views.ok
    top = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
    predicted = {items.ids[i]: m.label_values[top[i]] for i in np.flatnonzero(ok)}
    fallback = fallback_label(list(predicted.values()), m.label_values)
    frame, filled = _submission(cfg, items, predicted, fallback)
    if filled:
        log.warning(
            "%d submission row(s) have no prediction (missing or unreadable image) and were "
            "filled with %r, the most frequent prediction: %s%s",
            len(filled),
            fallback,
            ", ".join(map(str, filled[:10])),
            " ..." if len(filled) > 10 else "",
        )
    submission = write_csv(frame, cfg.output)
    table = topk_frame(
        items.ids,
        items.paths,
        probs,
        views.errors,
        m.label_values,
        clf.display_names(),
        cfg.top_k,
        items.labels,
        None if open_scores is None else (clf.open_set.unknown(open_scores), open_scores),
    )
    topk = write_csv(table, topk_path(cfg.output))
    log.info(
        "%d image(s) in %.1f s (%.1f images/s); submission: %s; top-%d: %s",
        len(items),
        views.seconds,
        views.images_per_second,
        submission,
        cfg.top_k,
        topk,
    )
    res = PredictResult(clf, tta, items, views, probs, submission, topk, filled, open_scores)
    if cfg.get("explain"):
        res.explainer = heatmaps.for_predictions(cfg, res)
    return res


def _open_set_scores(clf: Classifier, views: ViewLogits) -> np.ndarray | None:
    """The open-set score of each readable photo (NaN for the others); None without open set."""
    if clf.open_set is None:
        return None
    ok = views.ok
    out = np.full(len(ok), np.nan)
    if ok.any():
        feats = None if views.features is None else views.features[ok]
        out[ok] = clf.open_set_scores(views.logits[ok, 0], feats)
    unknown = int(np.sum(clf.open_set.unknown(out[ok])))
    log.info(
        "open set (%s score, keep %.0f%%): %d of %d photo(s) unknown",
        clf.open_set.score,
        100 * clf.open_set.keep,
        unknown,
        int(ok.sum()),
    )
    return out


def open_set_evaluation(cfg: DictConfig, res: PredictResult) -> OpenSetEvaluation:
    """Predict the ``unknown=`` photos and measure every open-set score, known vs unknown."""
    clf, views, labels = res.classifier, res.views, res.items.labels
    if clf.open_set is None:
        raise ConfigError(
            f"unknown={cfg.unknown}: {cfg.model} has no open-set data (a bundle from before "
            "carclf fitted it, a checkpoint, or an int8 model that failed its check); retrain it"
        )
    unknown = collect_inputs(cfg.unknown)
    log.info("open set: %d unknown photo(s) from %s", len(unknown), cfg.unknown)
    plain = clf.tta_preset("none")  # the scores use the plain view only
    uv = infer_paths(clf, unknown.paths, plain, cfg.batch_size, cfg.num_workers, cfg.progress,
                     clf.has_features)  # fmt: skip
    _log_errors(unknown, uv.errors)
    known = views.ok & (labels >= 0)
    if not known.any() or not uv.ok.any():
        raise ConfigError(f"unknown={cfg.unknown}: no readable known and unknown photos to compare")

    def scores(v: ViewLogits, rows: np.ndarray) -> dict:
        feats = None if v.features is None else v.features[rows]
        return clf.open_set.scores(v.logits[rows, 0], feats)

    correct = res.probs[known].argmax(1) == labels[known]
    return evaluate_open_set(
        clf.open_set, scores(views, known), scores(uv, uv.ok), correct, str(cfg.unknown)
    )


def report_folder(cfg: DictConfig) -> Path:
    if cfg.report_dir:
        return Path(cfg.report_dir).expanduser()
    out = Path(cfg.output).expanduser()
    return out.with_name(f"{out.stem}_report")


def evaluate(cfg: DictConfig) -> dict:
    """Predict a labelled set, score it, write the report; returns the metrics."""
    if not cfg.evaluate:
        cfg = OmegaConf.merge(cfg, {"evaluate": True})
    res = predict(cfg)
    clf, items, views = res.classifier, res.items, res.views
    probs_raw = merge_views(torch.from_numpy(views.logits), 1.0, res.tta.merge).numpy()
    ev = score(
        probs_raw,
        res.probs,
        items.labels,
        views.ok,
        items.paths,
        clf.class_names,
        clf.meta.class_names_local,
        clf.temperature,
        cfg.ece_bins,
        cfg.gallery,
    )
    m = clf.meta
    context = {
        "title": f"carclf evaluation: {Path(str(cfg.model)).name} on {Path(str(cfg.input)).name}",
        "model": cfg.model,
        "backbone": f"{m.backbone}, {m.image_size} px, {m.num_classes} classes, T = {clf.temperature:.3f}",
        "data": cfg.input + (f" (labels: {cfg.labels})" if cfg.labels else ""),
        "TTA": res.tta.describe(),
        "speed": f"{views.images_per_second:.1f} images/s ({getattr(clf.backend, 'name', '?')}, batch {cfg.batch_size}, "
        f"{cfg.num_workers} loader workers)",
        "outputs": f"{res.submission}, {res.topk}",
    }
    errors = {items.ids[i]: r for i, r in views.errors.items()}
    oe = open_set_evaluation(cfg, res) if cfg.get("unknown") else None
    maps = heatmaps.for_report(cfg, res, [m.path for m in ev.mistakes], res.explainer)
    sections = [maps] if maps else []
    page = write_report(ev, report_folder(cfg), context, errors, open_set=oe, sections=sections)
    log.info(
        "accuracy %.4f, top-3 %.4f, macro F1 %.4f on %d image(s); ECE %.4f at T=1, %.4f at T=%.3f; "
        "report: %s",
        ev.accuracy,
        ev.top3,
        ev.report.macro_f1,
        ev.num_scored,
        ev.ece_raw,
        ev.ece_scaled,
        ev.temperature,
        page,
    )
    out = {**ev.to_dict(), "report": str(page), "images_per_second": views.images_per_second}
    if oe is not None:
        out["open_set"] = oe.to_dict()
        d = oe.default
        log.info(
            "open set (%s): AUROC %.4f, known kept %.1f%%, unknown accepted %.1f%% at keep %.0f%%",
            oe.score,
            d.auroc,
            100 * d.known_kept,
            100 * d.fpr,
            100 * oe.keep,
        )
    return out


def _check_required(cfg: DictConfig) -> None:
    hints = {
        "model": "model=<run dir | bundle folder | .ckpt>",
        "input": "input=<image | folder | zip | CSV | Kaggle dataset folder>",
        "output": "output=<submission CSV>",
    }
    for key, hint in hints.items():
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key}: missing; pass {hint}")


def main(cfg: DictConfig) -> int:
    """The CLI body (``predict.py`` runs it through ``cli.main_exit``): 0, or 2 with one line on
    stderr for a user error."""
    return exit_code(lambda: _run(cfg))


def _run(cfg: DictConfig) -> None:
    _check_required(cfg)
    if cfg.evaluate:
        evaluate(cfg)
    else:
        predict(cfg)
