"""Distillation targets: a teacher's soft answers for every training photo, computed once.

``python train.py experiment=distill teacher=<bundle> [distill.unlabelled=[<photos>]]`` trains an
ordinary student (a normal bundle comes out) whose loss per photo is
``(1 - alpha) * CE(label) + alpha * T^2 * KL(teacher_T || student_T)`` (Hinton et al., 2015),
with ``_T`` the softmax at temperature ``T`` (:meth:`CarClassifier.row_loss`). Unlabelled photos
join the training split with the teacher's answer only; one identical (bytes) to a validation
photo is dropped, as for ``data.extra``.

Design: the teacher answers once per *photo* (its logits merged over ``distill.tta`` views,
default the plain eval view), before training, and the logits are kept in the run dir
(``teacher_logits.npz``) so a resumed run does not ask again. The student, meanwhile, trains on
a random view of each photo (a cached crop or flip): it matches the teacher's photo-level answer,
not the teacher's answer for that exact crop. Answers per cached view would be closer to
"consistent teaching" but need the view index in the cached batches and the teacher run on the
cache's exact augmented pixels; the per-photo target costs one teacher pass and nothing per epoch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from carclf import io
from carclf.data.extra import file_md5
from carclf.data.inputs import collect_inputs
from carclf.errors import ConfigError, DataError
from carclf.inference import Classifier
from carclf.inference.files import infer_paths

log = logging.getLogger(__name__)

LOGITS_FILE = "teacher_logits.npz"


def unlabelled_rows(sources, val_paths) -> pd.DataFrame:
    """Rows (label -1) for the photos of ``sources``, minus copies of validation photos."""
    paths: list[str] = []
    for source in sources or []:
        paths += [str(Path(p).resolve()) for p in collect_inputs(source).paths]
    paths = list(dict.fromkeys(paths))
    val = {file_md5(p) for p in val_paths} - {""}
    kept = [p for p in paths if file_md5(p) not in val]
    if len(kept) < len(paths):
        log.warning(
            "distill.unlabelled: dropped %d photos identical to validation photos",
            len(paths) - len(kept),
        )
    return pd.DataFrame({"id": kept, "path": kept, "label": -1, "weight": 1.0})


def teacher_logits(
    teacher: Classifier, paths: list[str], tta: str, cache: Path | None, num_workers: int
) -> np.ndarray:
    """(N, K) logits merged over the views of ``tta``; reused from ``cache`` when it matches."""
    if cache is not None and cache.is_file():
        data = np.load(cache, allow_pickle=False)
        if data["paths"].tolist() == paths and str(data["tta"]) == tta:
            log.info("teacher logits: reusing %s", cache)
            return data["logits"]
    res = infer_paths(teacher, paths, tta, num_workers=num_workers)
    logits = res.logits.mean(1)  # NaN rows: unreadable photos (skipped by the loaders too)
    log.info(
        "teacher logits: %d photos x %d views in %.0f s",
        len(paths),
        res.logits.shape[1],
        res.seconds,
    )
    if cache is not None:
        with io.atomic_path(cache, suffix=".npz") as tmp:
            np.savez(tmp, logits=logits, paths=np.array(paths), tta=np.array(tta))
    return logits


def attach_teacher(dm, teacher: str, distill, run_dir: str | Path | None = None) -> None:
    """Give ``dm``'s training rows (plus ``distill.unlabelled`` photos) the teacher's soft targets.

    ``distill``: ``temperature``, ``alpha``, ``tta``, ``unlabelled`` (see ``DistillConfig``).
    """
    if not 0.0 <= distill.alpha <= 1.0:
        raise ConfigError(f"distill.alpha={distill.alpha}: must be in [0, 1]")
    if distill.temperature <= 0:
        raise ConfigError(f"distill.temperature={distill.temperature}: must be > 0")
    clf = Classifier.load(teacher, backend="torch", device="cpu")
    ours = [str(v) for v in dm.index.label_values]
    if [str(v) for v in clf.meta.label_values] != ours:
        raise DataError(
            f"teacher={teacher}: its classes {clf.meta.label_values[:6]}... differ from the "
            f"dataset's {dm.index.label_values[:6]}... ({clf.num_classes} vs {len(ours)})"
        )
    extra = unlabelled_rows(list(distill.unlabelled or []), dm.rows("val")["path"])
    if len(extra):
        dm.add_train_rows(extra)
    paths = [str(p) for p in dm.rows("train")["path"]]
    cache = Path(run_dir) / LOGITS_FILE if run_dir is not None else None
    logits = teacher_logits(clf, paths, distill.tta, cache, dm.num_workers)
    soft = torch.softmax(torch.from_numpy(logits) / distill.temperature, 1).numpy()
    ok = ~np.isnan(soft).any(1)
    dm.soft_targets = soft.astype(np.float32)
    dm.soft_alpha = np.where(ok, distill.alpha, 0.0).astype(np.float32)
    dm.soft_temperature = float(distill.temperature)
    log.info(
        "distillation: teacher %s, %d training photos (%d unlabelled), T=%g, alpha=%g",
        teacher,
        len(paths),
        len(extra),
        distill.temperature,
        distill.alpha,
    )
