"""Pseudo-labels: the model's confident answers on unlabelled photos, as a labelled CSV.

Photos are predicted as ``predict.py`` predicts them (the model's TTA policy, logits merged, its
temperature), and a photo is kept when its calibrated confidence reaches a threshold chosen on
held-out labelled photos so that the kept labels are at least ``min_precision`` precise
(:mod:`carclf.pseudo.threshold`). Held-out photos are the training run's validation split
(rebuilt from its ``config.yaml``), or, for an ensemble bundle, the out-of-fold answers it stores.

The CSV (``path,label,name,confidence,pseudo_model`` and, with ``soft``, one ``p:<label>``
probability column per class) trains through ``data.extra=[pseudo.csv]``; ``data.extra_weight``
sets how much it counts. Only photos are used, never labels of the unlabelled set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from carclf.data.inputs import collect_inputs
from carclf.data.run_split import run_config, run_folder
from carclf.data.tta import merge_views
from carclf.errors import CarclfError, DataError, ModelError
from carclf.inference import Classifier, find_model
from carclf.inference.files import infer_paths
from carclf.inference.heldout import heldout_view_logits
from carclf.io import atomic_path
from carclf.models.bundle import read_meta
from carclf.models.ensemble import HELDOUT_FILE
from carclf.pseudo.threshold import Threshold, choose_threshold

log = logging.getLogger(__name__)


@dataclass
class PseudoResult:
    out: Path
    total: int
    unreadable: int
    kept: int
    threshold: float
    rule: Threshold | None
    tta: str


def is_calibrated(clf: Classifier) -> bool:
    """True when the bundle's temperature was fitted on held-out photos (not the default 1)."""
    return "temperature" in (clf.meta.metrics or {})


def default_tta(model: str | Path) -> str:
    """The policy the model's temperature was fitted for: recorded in the bundle (ensembles), else
    its training run's ``calibration_tta``, else predict.py's default."""
    target = find_model(model)
    if target.is_dir():
        recorded = read_meta(target).extra.get("calibration_tta")
        if recorded:
            return str(recorded)
    run = run_folder(model)
    if run is not None:
        return str(run_config(run).get("calibration_tta", "multiscale"))
    return "multiscale"


def heldout_confidence(
    clf: Classifier, model: str | Path, tta: str, num_workers: int
) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) of the model on held-out labelled photos, as predicted here."""
    target = find_model(model)
    stored = target / HELDOUT_FILE if target.is_dir() else None
    if stored is not None and stored.is_file():
        data = np.load(stored)
        if str(data["tta"]) != tta:
            raise CarclfError(
                f"{stored}: held-out logits are for tta={data['tta']}, not {tta}; pass --tta {data['tta']}"
            )
        probs = torch.softmax(torch.from_numpy(data["logits"]) / clf.temperature, 1).numpy()
        return probs.max(1), probs.argmax(1) == data["labels"]
    res, labels = heldout_view_logits(
        model,
        clf,
        tta,
        num_workers,
        why="a precision target needs held-out labelled photos: pass the training run folder "
        "(its validation split is rebuilt from config.yaml), not a bare bundle",
    )
    ok = res.ok
    probs = merge_views(
        torch.from_numpy(res.logits[ok]), clf.temperature, clf.tta_preset(tta).merge
    )
    probs = probs.numpy()
    return probs.max(1), probs.argmax(1) == labels[ok]


def pseudo_label(
    model: str | Path,
    inputs: str | Path,
    out: str | Path,
    *,
    min_precision: float | None = 0.95,
    min_confidence: float | None = None,
    tta: str | None = None,
    soft: bool = False,
    min_count: int = 10,
    batch_size: int = 32,
    num_workers: int = 2,
) -> PseudoResult:
    """Predict ``inputs`` with ``model`` and write the confident answers to ``out`` (CSV)."""
    if (min_precision is None) == (min_confidence is None):
        raise CarclfError("give exactly one of --min-precision and --min-confidence")
    tta = tta or default_tta(model)
    clf = Classifier.load(model, backend="torch", tta=tta)
    rule = None
    if min_precision is not None:
        if not is_calibrated(clf):
            raise ModelError(
                f"{model}: this model has no fitted temperature (trained with "
                "fit_temperature=false, or a checkpoint), so its confidences are not calibrated "
                "and no precision target can be promised; use --min-confidence C instead"
            )
        conf, correct = heldout_confidence(clf, model, tta, num_workers)
        rule = choose_threshold(conf, correct, min_precision, min_count)
        if rule is None:
            raise CarclfError(
                f"{model}: no confidence threshold reaches precision {min_precision} on its "
                f"{len(conf)} held-out photos (best cuts keep at least {min_count}); lower "
                "--min-precision or --min-count"
            )
        log.info("pseudo-labels: %s", rule.describe())
        threshold = rule.threshold
    else:
        threshold = float(min_confidence)
    items = collect_inputs(inputs)
    res = infer_paths(clf, items.paths, tta, batch_size=batch_size, num_workers=num_workers)
    ok = res.ok
    probs = np.full((len(items), clf.num_classes), np.nan, np.float32)
    probs[ok] = merge_views(
        torch.from_numpy(res.logits[ok]), clf.temperature, clf.tta.merge
    ).numpy()
    conf = np.nan_to_num(probs.max(1), nan=-1.0)
    keep = np.flatnonzero(ok & (conf >= threshold))
    top = probs[keep].argmax(1)
    m = clf.meta
    frame = pd.DataFrame(
        {
            "path": [str(Path(items.paths[i]).resolve()) for i in keep],
            "label": [m.label_values[k] for k in top],
            "name": [m.class_names[k] for k in top],
            "confidence": np.round(conf[keep], 5),
            "pseudo_model": str(model),
        }
    )
    if soft:
        cols = {f"p:{v}": np.round(probs[keep, k], 6) for k, v in enumerate(m.label_values)}
        frame = pd.concat([frame, pd.DataFrame(cols)], axis=1)
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise DataError(f"--out {out}: pseudo-labels are written as a .csv")
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)
    return PseudoResult(out, len(items), len(res.errors), len(keep), threshold, rule, tta)
