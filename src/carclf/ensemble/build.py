"""Build one bundle from several trained runs (k folds, seeds, backbones) that averages their logits.

``python train.py -m data.fold=0,1,2,3,4 ...`` trains k members, each holding out a different
fifth of the photos. Their averaged logits have a scale of their own (averaging shrinks
disagreement), so the ensemble gets its own temperature: fitted on *out-of-fold* logits, each
photo of the training data answered by the one member that never trained on it (its validation
split, rebuilt from the run's config), through the same TTA policy the members were calibrated
with. Those held-out logits are stored in the bundle (``heldout.npz``) so ``carclf.pseudo`` can
choose its thresholds on them.

Members must agree on the class list (names and label values, in order) and the preprocessing
contract (image size, mean, std, resize); otherwise the error names the two runs and what differs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from carclf.data.run_split import run_config, run_folder
from carclf.errors import CarclfError
from carclf.inference import Classifier, find_model
from carclf.inference.calibration import fit_temperature
from carclf.inference.heldout import heldout_view_logits
from carclf.inference.open_set import OPEN_SET_FILE, fit_open_set
from carclf.io import atomic_path
from carclf.models.bundle import BundleMeta, load_bundle, save_bundle
from carclf.models.ensemble import ENSEMBLE, HELDOUT_FILE, EnsembleNet

log = logging.getLogger(__name__)

CONTRACT = ("class_names", "label_values", "image_size", "mean", "std", "resize")


class EnsembleError(CarclfError):
    """Runs that cannot be averaged into one model."""


def check_compatible(metas: list[BundleMeta], sources: list[str]) -> None:
    """Every member answers over the same classes from the same preprocessed input."""
    first = metas[0]
    for meta, source in zip(metas[1:], sources[1:], strict=True):
        for key in CONTRACT:
            a, b = getattr(first, key), getattr(meta, key)
            if _norm(a) != _norm(b):
                what = "class lists" if key in ("class_names", "label_values") else "preprocessing"
                raise EnsembleError(
                    f"cannot ensemble {sources[0]} and {source}: different {what} "
                    f"({key}: {_short(a)} vs {_short(b)})"
                )


def _norm(v):
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else v


def _short(v) -> str:
    if isinstance(v, (list, tuple)) and len(v) > 6:
        return f"{list(v[:6])}... ({len(v)})"
    return str(v)


def out_of_fold_logits(
    source: str, clf: Classifier, tta: str, num_workers: int, plain: list | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(logits merged over the TTA views, model labels) on the run's own validation photos;
    the plain view's logits (what open-set scores use) are appended to ``plain`` if given."""
    res, labels = heldout_view_logits(
        source,
        clf,
        tta,
        num_workers,
        why="an ensemble refits its temperature on each member's validation split, so pass run folders",
        error=EnsembleError,
    )
    ok = res.ok
    if clf.tta_preset(tta).merge != "logits":
        raise EnsembleError(f"tta={tta}: the ensemble is calibrated on logit-merged policies")
    if plain is not None:
        plain.append(res.logits[ok][:, 0])
    return res.logits[ok].mean(1), labels[ok]


def _save_heldout(folder: Path, logits: np.ndarray, labels: np.ndarray, tta: str) -> None:
    with atomic_path(folder / HELDOUT_FILE) as tmp, open(tmp, "wb") as f:
        # a file object: given a name, np.savez would append ".npz" to the temporary one
        np.savez(f, logits=logits.astype(np.float32), labels=labels, tta=np.array(tta))


def build_ensemble(
    runs: list[str | Path], out: str | Path, *, tta: str | None = None, num_workers: int = 2
) -> tuple[Path, dict]:
    """Average the runs' networks into the bundle ``out``; returns it and its metrics."""
    runs = [str(r) for r in runs]
    if len(runs) < 2:
        raise EnsembleError("an ensemble needs at least two runs")
    loaded = []
    for r in runs:
        target = find_model(r)
        if target.is_file():
            raise EnsembleError(
                f"{r}: a checkpoint; ensembles are built from bundles (run folders)"
            )
        loaded.append(load_bundle(target))
    metas = [m for _, m in loaded]
    check_compatible(metas, runs)
    if any(m.backbone == ENSEMBLE for m in metas):
        raise EnsembleError("members must be single models, not ensembles")
    if tta is None:
        run = run_folder(runs[0])
        tta = str(run_config(run).get("calibration_tta", "multiscale")) if run else "multiscale"
    oof_logits, oof_labels, member_acc, oof_plain = [], [], [], []
    for (net, meta), source in zip(loaded, runs, strict=True):
        clf = Classifier(net, meta, device="cpu")
        logits, labels = out_of_fold_logits(source, clf, tta, num_workers, oof_plain)
        oof_logits.append(logits)
        oof_labels.append(labels)
        member_acc.append(float((logits.argmax(1) == labels).mean()))
        log.info(
            "member %s: %d held-out photos, accuracy %.4f", source, len(labels), member_acc[-1]
        )
    logits, labels = np.concatenate(oof_logits), np.concatenate(oof_labels)
    temperature = float(fit_temperature(logits, labels))
    first = metas[0]
    metrics = {
        "members": len(runs),
        "temperature": temperature,
        "oof_acc": float((logits.argmax(1) == labels).mean()),
        "oof_photos": int(len(labels)),
        "member_val_acc_mean": float(np.mean(member_acc)),
    }
    meta = BundleMeta(
        backbone=ENSEMBLE,
        class_names=list(first.class_names),
        class_names_local=first.class_names_local,
        label_values=list(first.label_values),
        image_size=first.image_size,
        mean=list(first.mean),
        std=list(first.std),
        resize=first.resize,
        head={},
        temperature=temperature,
        metrics=metrics,
        extra={
            "members": [
                {"backbone": m.backbone, "head": m.head, "source": str(Path(s).resolve())}
                for m, s in zip(metas, runs, strict=True)
            ],
            "calibration_tta": tta,
        },
    )
    # Open set: msp and energy thresholds on the out-of-fold plain-view logits (the same held-out
    # answers the temperature is fitted on). No knn score: the ensemble's features of every
    # training photo would cost a pass of every member over all of them.
    keep = float(metas[0].open_set.get("keep", 0.95))
    open_set = fit_open_set(np.concatenate(oof_plain), labels, keep=keep, temperature=temperature)
    meta.open_set = open_set.meta_dict()
    folder = save_bundle(
        EnsembleNet([net for net, _ in loaded]),
        meta,
        out,
        arrays={OPEN_SET_FILE: open_set.arrays()},
    )
    _save_heldout(folder, logits, labels, tta)
    return folder, {**metrics, "member_val_acc": member_acc, "bundle": str(folder)}
