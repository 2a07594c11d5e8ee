"""The validation split of a finished training run, rebuilt from its ``config.yaml``.

Pseudo-labelling picks its confidence threshold there, and an ensemble of k-fold runs refits its
temperature on the members' out-of-fold (validation) logits. The split is a pure function of the
dataset, the files the run's data check skipped (``data_check.json``), the seed and the split
keys, so it comes back photo for photo without the run having stored it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from carclf.data.layouts import read_dataset
from carclf.data.split import fold_split, stratified_split
from carclf.errors import DataError

CONFIG_FILE = "config.yaml"


def run_folder(model_path: str | Path) -> Path | None:
    """The training run folder behind a run folder or its ``bundle/`` (None for a bare bundle)."""
    p = Path(model_path).expanduser().resolve()
    for candidate in (p, p.parent, p.parent.parent):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    return None


def run_config(run_dir: Path):
    from omegaconf import OmegaConf

    return OmegaConf.load(run_dir / CONFIG_FILE)


def validation_rows(run_dir: str | Path) -> tuple[pd.DataFrame, list]:
    """``(rows, label_values)``: the run's validation photos (``path``, ``label`` as a class
    index of the run's dataset) and the dataset's label values (index -> source label)."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    d = cfg.data
    try:
        index = read_dataset(d.path, layout=d.layout, class_map=d.class_map)
    except DataError as e:
        raise DataError(f"{run_dir / CONFIG_FILE}: its data.path cannot be read ({e})") from None
    check = run_dir / "data_check.json"
    if check.is_file():
        index = index.drop(b["path"] for b in json.loads(check.read_text()).get("bad_files", []))
    labels = index.train["label"].to_numpy()
    if d.get("fold") is not None:
        _, val = fold_split(labels, d.fold, d.num_folds, cfg.seed)
    else:
        _, val = stratified_split(labels, d.val_fraction, cfg.seed)
    return index.train.iloc[val].reset_index(drop=True), list(index.label_values)
