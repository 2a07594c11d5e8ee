"""Output files: the Kaggle submission and the per-image top-k table.

The submission has exactly the rows of the sample submission, in its order and with its column
names: Kaggle rejects a file with a missing or extra id, and a wrong order silently scores near
chance. An id with no prediction (missing or unreadable image) still gets a row, filled with the
most frequent predicted class, and is logged; the top-k table lists it with its error.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from carclf.data.layouts import pick_column, read_table
from carclf.errors import DataError

log = logging.getLogger(__name__)


def read_sample_submission(path: str | Path) -> pd.DataFrame:
    """The sample submission as strings, checked to have an id column and a second column."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: sample submission not found")
    df = read_table(path)
    pick_column(df, ("Id", "id", "ID", "image", "filename"), "id", path)
    if df.shape[1] < 2:
        raise DataError(f"{path}: expected two columns (id, class), found {list(df.columns)}")
    if df.iloc[:, 0].duplicated().any():
        dup = df.iloc[:, 0][df.iloc[:, 0].duplicated()].iloc[0]
        raise DataError(f"{path}: id {dup!r} appears more than once")
    return df


def fallback_label(predicted: Sequence, label_values: Sequence):
    """The most frequent predicted label (the first class when nothing was predicted)."""
    counts = Counter(predicted)
    return counts.most_common(1)[0][0] if counts else label_values[0]


def submission_frame(
    sample: pd.DataFrame, predictions: Mapping[str, object], fallback
) -> tuple[pd.DataFrame, list[str]]:
    """The sample's ids in its order with predicted labels; also the ids that got ``fallback``.

    ``predictions`` maps image id -> label; an id that is not found as is is looked up by its
    file name (inputs in sub-folders), when that name is unique.
    """
    names = Counter(PurePosixPath(k).name for k in predictions)
    by_name = {
        PurePosixPath(k).name: v
        for k, v in predictions.items()
        if names[PurePosixPath(k).name] == 1
    }
    id_col, label_col = sample.columns[0], sample.columns[1]
    labels, filled = [], []
    for i in sample[id_col]:
        label = predictions.get(i, by_name.get(PurePosixPath(i).name))
        if label is None:
            filled.append(i)
            label = fallback
        labels.append(label)
    frame = pd.DataFrame({id_col: sample[id_col].to_numpy(), label_col: labels})
    return frame, filled


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, encoding="utf-8")
    return path


def topk_frame(
    ids: Sequence[str],
    paths: Sequence[str],
    probs: np.ndarray,
    errors: Mapping[int, str],
    label_values: Sequence,
    names: Sequence[str],
    top_k: int = 3,
    labels: np.ndarray | None = None,
    open_set: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per image: ``Id, path, label_1, name_1, prob_1, ..., error`` (+ truth if known).

    ``open_set``: (unknown flags, open-set scores) per image, written as the ``unknown`` and
    ``open_set_score`` columns (a model without open-set data has neither).
    Rows of unreadable images have empty class columns and the reason in ``error``.
    """
    k = min(top_k, probs.shape[1])
    order = np.argsort(-np.nan_to_num(probs, nan=-1.0), axis=1, kind="stable")[:, :k]
    data: dict[str, list] = {"Id": list(ids), "path": list(paths)}
    for j in range(k):
        cls = order[:, j]
        data[f"label_{j + 1}"] = [label_values[c] for c in cls]
        data[f"name_{j + 1}"] = [names[c] for c in cls]
        data[f"prob_{j + 1}"] = np.round(probs[np.arange(len(cls)), cls].astype(np.float64), 6)
    frame = pd.DataFrame(data)
    if labels is not None:
        known = labels >= 0
        truth = [label_values[c] if c >= 0 else None for c in labels]
        frame["true_label"] = pd.Series(truth, dtype=object)
        frame["true_name"] = [names[c] if c >= 0 else None for c in labels]
        frame["correct"] = pd.Series(np.where(known, order[:, 0] == labels, None), dtype=object)
    if open_set is not None:
        flags, scores = open_set
        frame["unknown"] = pd.Series(np.asarray(flags, dtype=bool), dtype=object)
        frame["open_set_score"] = np.round(np.asarray(scores, dtype=np.float64), 6)
    bad = list(errors)
    frame["error"] = ""
    if bad:
        class_cols = [
            c
            for c in frame.columns
            if c.split("_")[0] in ("label", "name", "prob") or c in ("unknown", "open_set_score")
        ]
        frame[class_cols] = frame[class_cols].astype(object)
        frame.loc[bad, class_cols] = None
        frame.loc[bad, "error"] = [errors[i] for i in bad]
        if labels is not None:
            frame.loc[bad, "correct"] = None
    return frame


def topk_path(output: str | Path) -> Path:
    """Where the top-k table goes: next to the submission, ``<stem>_topk.csv``."""
    output = Path(output)
    return output.with_name(f"{output.stem}_topk.csv")
