"""Per-view logits of a model on its own training run's validation photos.

Calibrating an ensemble and choosing a pseudo-label threshold both need answers on labelled photos
the model did not train on; the run that trained it has exactly those (its validation split,
rebuilt from ``config.yaml``). One function finds them, predicts them with a TTA policy and
matches their labels to the model's classes, so both commands see the same held-out set.
"""

from __future__ import annotations

import numpy as np

from carclf.data.inputs import LabelMatcher
from carclf.data.run_split import run_folder, validation_rows
from carclf.errors import CarclfError
from carclf.inference.files import ViewLogits, infer_paths


def heldout_view_logits(
    source, clf, tta: str, num_workers: int, *, why: str, error=CarclfError
) -> tuple[ViewLogits, np.ndarray]:
    """Per-view logits of ``clf`` on the validation photos of the run around ``source`` and
    their labels as ``clf``'s class indices. ``why`` ends the error for a bundle with no run."""
    run = run_folder(source)
    if run is None:
        raise error(f"{source}: no training run around it (config.yaml); {why}")
    rows, values = validation_rows(run)
    if not len(rows):
        raise error(f"{run}: the run has no validation split (data.val_fraction=0)")
    m = clf.meta
    labels = LabelMatcher(m.label_values, m.class_names, m.class_names_local)(
        [values[k] for k in rows["label"]], str(run)
    )
    return infer_paths(clf, rows["path"].tolist(), tta, num_workers=num_workers), labels
