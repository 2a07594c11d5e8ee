"""The model bundle: what a trained model needs to run anywhere, and nothing else.

A folder with ``model.safetensors`` (weights, fp32 or fp16) and ``meta.json`` (backbone name, head,
class names, the preprocessing contract, temperature, open-set thresholds), plus array files such
as ``open_set.npz`` (:mod:`carclf.inference.open_set`). No pickles, no training code: tens of MB
for Lite0 instead of the 450 MB Keras files of the original notebook, and nothing to break between
library versions. Written to a temporary folder and renamed into place, so a crash never leaves
half a bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, save_file

from carclf.errors import ModelError
from carclf.io import file_mode, make_temp_dir, replace_dir
from carclf.models.network import CarNet

WEIGHTS = "model.safetensors"
META = "meta.json"
FORMAT = "carclf-bundle/1"


@dataclass
class BundleMeta:
    backbone: str
    class_names: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    resize: str = "squash"
    head: dict = field(default_factory=dict)
    label_values: list = field(default_factory=list)
    class_names_local: list[str] | None = None
    temperature: float = 1.0
    dtype: str = "float32"
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    # unknown-photo rejection (carclf.inference.open_set); {} in bundles from before it
    open_set: dict = field(default_factory=dict)
    format: str = FORMAT
    created: str = ""
    carclf_version: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __post_init__(self):
        if not self.label_values:
            self.label_values = list(range(len(self.class_names)))

    @classmethod
    def from_dict(cls, d: dict) -> BundleMeta:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def is_bundle(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / META).is_file() and (p / WEIGHTS).is_file()


def save_bundle(
    net: CarNet,
    meta: BundleMeta,
    folder: str | os.PathLike,
    fp16: bool = False,
    arrays: dict[str, dict] | None = None,
) -> Path:
    """Write ``net`` and ``meta`` to ``folder`` atomically (replacing an older bundle there).

    ``arrays``: file name -> arrays of an ``.npz`` written into the same folder before it is
    renamed into place (e.g. ``open_set.npz``), so the bundle appears whole or not at all.
    """
    from carclf import __version__

    folder = Path(folder)
    meta.dtype = "float16" if fp16 else "float32"
    meta.created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    meta.carclf_version = __version__
    state = {
        k: (v.half() if fp16 and v.is_floating_point() else v).contiguous().cpu()
        for k, v in net.state_dict().items()
    }
    tmp = make_temp_dir(folder.parent, f".{folder.name}-")
    try:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        os.chmod(tmp / WEIGHTS, file_mode())  # safetensors writes it 0600, whatever the umask
        for name, data in (arrays or {}).items():
            with open(tmp / name, "wb") as f:  # a file object: np.savez appends no ".npz"
                np.savez(f, **data)
            os.chmod(tmp / name, file_mode())
        (tmp / META).write_text(json.dumps(asdict(meta), indent=2, ensure_ascii=False))
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_meta(folder: str | os.PathLike) -> BundleMeta:
    path = Path(folder) / META
    try:
        return BundleMeta.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise ModelError(f"{path}: not a valid carclf bundle ({e})") from None


def read_arrays(folder: str | os.PathLike, name: str) -> dict | None:
    """The arrays of the bundle's ``name`` (.npz), or None when the bundle has no such file."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: not a readable array file ({e})") from None


def load_bundle(folder: str | os.PathLike) -> tuple[CarNet, BundleMeta]:
    """Rebuild the network of a bundle (no download: weights come from the bundle)."""
    from carclf.models.factory import build_from_meta

    folder = Path(folder)
    if not is_bundle(folder):
        raise ModelError(f"{folder}: not a carclf bundle (expected {META} and {WEIGHTS})")
    meta = read_meta(folder)
    net = build_from_meta(meta)
    state = load_file(str(folder / WEIGHTS))
    try:
        net.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True
        )
    except RuntimeError as e:
        raise ModelError(
            f"{folder / WEIGHTS}: weights do not match backbone {meta.backbone!r} ({e})"
        ) from None
    return net.eval(), meta
