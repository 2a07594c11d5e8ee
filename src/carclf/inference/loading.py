"""Find and load a model: a bundle folder, a training run folder, or a Lightning checkpoint.

A bundle (``carclf.models.bundle``) is the deployable form; a checkpoint is what training leaves.
Both load here without Hydra or any training code path, so every consumer (``Classifier``, the
exporter, the service, the batch job) resolves a model path the same way, and
:func:`load_classifier` is the one way the apps (``predict.py``, the service) load a Classifier.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from carclf.data.tta import TTAPreset
from carclf.errors import ModelError
from carclf.inference.onnx_backend import INT8_CHECK_FILE, INT8_FILE
from carclf.models.bundle import BundleMeta, is_bundle, read_meta
from carclf.models.network import CarNet

if TYPE_CHECKING:
    from carclf.inference.classifier import Classifier

log = logging.getLogger(__name__)


def find_model(path: str | os.PathLike) -> Path:
    """The bundle or checkpoint that ``path`` (bundle, run dir, or checkpoint) stands for."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(
            f"{p}: no such model (expected a bundle folder, a run folder or a .ckpt file)"
        )
    if p.is_file():
        return p
    if is_bundle(p):
        return p
    if is_bundle(p / "bundle"):
        return p / "bundle"
    for ckpt in (p / "checkpoints" / "best.ckpt", p / "checkpoints" / "last.ckpt"):
        if ckpt.is_file():
            return ckpt
    raise ModelError(f"{p}: no bundle/ and no checkpoints/best.ckpt or last.ckpt in this folder")


def _read_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ModelError(f"{path}: cannot read checkpoint ({e})") from None
    if "meta" not in ckpt.get("hyper_parameters", {}):
        raise ModelError(
            f"{path}: not a carclf checkpoint (no model metadata in its hyper-parameters)"
        )
    return ckpt


def model_meta(path: str | os.PathLike) -> BundleMeta:
    """The metadata (classes, preprocessing contract) of any model path, without building the net.

    What a process that only decodes and preprocesses photos (a batch job's CPU tasks) needs.
    """
    target = find_model(path)
    if target.is_dir():
        return read_meta(target)
    return BundleMeta.from_dict(_read_checkpoint(target)["hyper_parameters"]["meta"])


def load_checkpoint_net(path: Path) -> tuple[CarNet, BundleMeta]:
    """Network and metadata from a Lightning checkpoint written by carclf's training."""
    from carclf.models.factory import build_net

    ckpt = _read_checkpoint(path)
    meta = BundleMeta.from_dict(ckpt["hyper_parameters"]["meta"])
    net = build_net(meta.backbone, meta.num_classes, weights="none", head=meta.head)
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state, strict=True)
    return net.eval(), meta


def int8_model(target: Path) -> Path:
    """The bundle's ``model.int8.onnx`` if its export kept it, else a ModelError saying why not.

    ``python -m carclf.export --int8 --max-drop N`` deletes an int8 model that lost more than N
    points against fp32 on held-out photos and records the verdict in ``int8_check.json``.
    """
    path = target / INT8_FILE
    check = target / INT8_CHECK_FILE
    if target.is_dir() and not path.is_file() and check.is_file():
        try:
            c = json.loads(check.read_text())
            why = (
                f"{c['loss']:.2f} points lost on {c['photos']} held-out photos, "
                f"limit {c['max_drop']:g}"
            )
        except (ValueError, KeyError, TypeError):
            why = f"see {check}"
        raise ModelError(f"{target}: its export refused the int8 model ({why}); use fp32")
    if not target.is_dir() or not path.is_file():
        raise ModelError(
            f"{target}: no {INT8_FILE}; run: python -m carclf.export {target} --int8 --images DIR"
        )
    return path


def int8_open_set(target: Path, meta: BundleMeta):
    """The bundle's open set for its int8 model: kept only where the int8 check passed for it
    too (``int8_check.json``: ``open_set_kept``); else None, with one log line saying why."""
    from carclf.inference.open_set import load_open_set

    open_set = load_open_set(target, meta)
    if open_set is None:
        return None
    try:
        check = json.loads((target / INT8_CHECK_FILE).read_text())
    except (OSError, ValueError):
        check = {}
    if check.get("open_set_kept") is True:
        return open_set
    why = (
        f"its flags changed on {check['open_set_changes']:.2f}% of the held-out photos, limit "
        f"{check.get('max_drop', 0):g}"
        if check.get("open_set_changes") is not None
        else "not checked: export with --int8 --max-drop POINTS"
    )
    log.info("%s: the int8 model keeps no open-set threshold (%s): no unknown flag", target, why)
    return None


def load_classifier(
    model: str | os.PathLike,
    backend: str = "auto",
    *,
    device: str | None = "auto",
    tta: str | TTAPreset | Callable[[Classifier], TTAPreset] | None = None,
) -> Classifier:
    """The Classifier of ``model`` (bundle, run folder or checkpoint), with ``tta`` as its policy.

    With ``backend="auto"``, a TTA policy the exported ONNX model cannot run (views of another
    size) switches to the PyTorch backend instead of failing; any other backend fails with a
    ModelError saying why.

    Args:
        backend: ``auto``, ``onnx``, ``int8`` (the bundle's model.int8.onnx) or ``torch``.
        device: ``auto`` (or None: CUDA where there is one), ``cpu``, ``cuda``, ``cuda:1``...
        tta: a policy name, a preset, or a function building the preset for a loaded classifier
            (on its preprocessing contract); None: the eval view only.
    """
    from carclf.inference.classifier import Classifier  # it imports this module

    device = None if device == "auto" else device

    def with_tta(clf: Classifier) -> Classifier:
        if tta is None or isinstance(tta, (str, TTAPreset)):
            clf.tta = clf.tta_preset(tta)
        else:
            clf.tta = tta(clf)
        return clf

    clf = Classifier.load(model, device=device, backend=backend)
    try:
        return with_tta(clf)
    except ModelError as e:
        if backend != "auto" or clf.backend.name == "torch":
            raise
        log.info("%s: using the PyTorch backend", e)
        return with_tta(Classifier.load(model, device=device, backend="torch"))
