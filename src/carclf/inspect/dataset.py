"""What the inspection commands share: reading a dataset that training would refuse, their
common arguments, and their exit code."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from carclf.data.layouts import READERS, DatasetIndex, detect_layout, list_images, resolve
from carclf.errors import DataError


def read_for_report(
    path: str | Path, layout: str = "auto", class_map: str = "auto"
) -> tuple[DatasetIndex, list[str]]:
    """The dataset as training reads it, except that one class or no labels is a note, not an
    error: the report of such a folder says so (and skips the doctor) instead of refusing."""
    root = resolve(path)
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in READERS:
        raise DataError(
            f"unknown data layout {layout!r}; choose one of {sorted(READERS)} or 'auto'"
        )
    notes = []
    try:
        index = READERS[layout](root, class_map=class_map)
    except DataError as e:
        if layout != "folders" or "no images found in class folders" not in str(e):
            raise
        index = _unlabelled(root)
        notes.append(
            "No labels: the images are not in class folders, so they are all counted as "
            "unlabelled. A classifier needs <class>/<image> folders (or a CSV of path,label)."
        )
    if index.num_classes == 1:
        notes.append(
            f"Only one class ({index.class_names[0]!r}): a classifier needs at least 2, "
            "so training would refuse this dataset and the label doctor does not run."
        )
    return index, notes


def _unlabelled(root: Path) -> DatasetIndex:
    """Every image under ``root`` as an unlabelled (test) photo."""
    files = list_images(root)
    if not files:
        raise DataError(f"{root}: no images found (looked in every sub-folder)") from None
    empty = pd.DataFrame({"id": [], "path": [], "label": []}).astype({"label": int})
    test = pd.DataFrame(
        {"id": [str(p.relative_to(root)) for p in files], "path": [str(p) for p in files]}
    )
    return DatasetIndex(root, "folders", empty, test, [], [])


def dataset_parser(prog: str, description: str, out: str) -> argparse.ArgumentParser:
    """A parser with the arguments every inspection command takes: the dataset and ``--out``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("path", help="dataset: Kaggle layout, folder per class, CSV, or a zip")
    parser.add_argument("--out", default=out, help="output folder")
    parser.add_argument("--layout", default="auto", choices=["auto", "kaggle", "folders", "csv"])
    parser.add_argument("--class-map", default="auto", help="auto, none, sfdl, or a classes.csv")
    return parser
