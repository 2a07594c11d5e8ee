"""``export_model``: from any model path to a bundle with checked ONNX files in it.

Steps: resolve the model (bundle, run folder or checkpoint), write a bundle if there is none yet,
export ``model.onnx`` into it, compare it with PyTorch on sample photos, and optionally add
``model.int8.onnx``. A fp32 export that disagrees with PyTorch is deleted, not left for
:class:`Classifier` to pick up.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from carclf.errors import ModelError
from carclf.export.int8_check import Int8Check, check_int8, holdout_photos, write_check
from carclf.export.onnx import (
    OPSET,
    Parity,
    compare_logits,
    export_onnx,
    onnx_logits,
    require_parity,
    torch_logits,
)
from carclf.export.quantize import quantize_int8
from carclf.export.samples import list_images, photo_batch, synthetic_batch
from carclf.export.tta_sizes import export_tta_sizes
from carclf.inference.loading import find_model, load_checkpoint_net
from carclf.inference.onnx_backend import INT8_FILE, ONNX_FILE
from carclf.models.bundle import BundleMeta, is_bundle, load_bundle, save_bundle

log = logging.getLogger(__name__)


@dataclass
class ExportReport:
    bundle: Path
    wrote_bundle: bool
    samples: str  # where the parity images came from
    files: dict[str, int] = field(default_factory=dict)  # file name -> bytes
    parity: list[Parity] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    int8_method: str | None = None
    int8_check: Int8Check | None = None

    @property
    def ok(self) -> bool:
        return all(p.top1_identical for p in self.parity if p.model == ONNX_FILE)

    def format(self) -> str:
        lines = [f"bundle: {self.bundle}" + (" (new bundle written)" * self.wrote_bundle)]
        for name, size in self.files.items():
            what = f"opset {OPSET}, dynamic batch" if name == ONNX_FILE else f"{self.int8_method}"
            what = "the same, for TTA views of this size" if name.endswith("px.onnx") else what
            lines.append(f"  {name:<16} {size / 2**20:6.1f} MB  {what}")
        lines.append(f"parity vs PyTorch on {self.samples}:")
        for p in self.parity:
            same = round(p.top1_agreement * p.images)
            top1 = (
                f"top-1 identical ({same}/{p.images})"
                if p.top1_identical
                else f"top-1 agreement {p.top1_agreement:.1%} ({same}/{p.images})"
            )
            lines.append(f"  {p.model:<16} max |logit diff| {p.max_abs_diff:.2e}  {top1}")
        if INT8_FILE in self.files and "static" in (self.int8_method or ""):
            lines.append("  (int8 was calibrated on these same photos)")
        lines += [f"  skipped (cannot decode): {s}" for s in self.skipped]
        if self.int8_check is not None:
            lines.append(self.int8_check.format())
        elif INT8_FILE in self.files:
            lines.append("  int8 not checked on held-out photos (pass --max-drop POINTS to check)")
        return "\n".join(lines)


def bundle_for_checkpoint(ckpt: Path) -> Path:
    """Where the bundle of a checkpoint goes: ``<run>/bundle`` for a run's checkpoint when the run
    has none yet, else ``<checkpoint>.bundle`` beside it (never over another checkpoint's bundle)."""
    if ckpt.parent.name == "checkpoints" and not (ckpt.parent.parent / "bundle").exists():
        return ckpt.parent.parent / "bundle"
    return ckpt.with_suffix(".bundle")


def resolve_bundle(model: str | os.PathLike, out: str | os.PathLike | None = None):
    """``(net, meta, bundle folder, wrote_bundle)`` for any model path."""
    target = find_model(model)
    if target.is_dir() and out is None:
        net, meta = load_bundle(target)
        return net, meta, target, False
    net, meta = load_checkpoint_net(target) if target.is_file() else load_bundle(target)
    folder = Path(out) if out is not None else bundle_for_checkpoint(target)
    if is_bundle(folder) and folder.resolve() == target.resolve():
        return net, meta, folder, False
    save_bundle(net, meta, folder)
    return net, meta, folder, True


def run_data_folder(model: str | os.PathLike) -> Path | None:
    """The training data folder recorded in a run's Hydra config, if it is still there."""
    p = Path(model).expanduser()
    candidates = [p, p.parent, p.parent.parent]
    for run in candidates:
        cfg = run / ".hydra" / "config.yaml"
        if cfg.is_file():
            try:
                from omegaconf import OmegaConf

                path = OmegaConf.load(cfg).get("data", {}).get("path")
            except Exception:  # a config we cannot read just means no default photos
                return None
            return Path(path) if path and Path(path).is_dir() else None
    return None


def sample_batch(meta: BundleMeta, images, num_images: int):
    """``(batch, description, skipped)``: photos from ``images`` or synthetic stand-ins."""
    if not images:
        return synthetic_batch(meta, n=8), "8 synthetic images (pass --images for real photos)", []
    paths = list_images(images, num_images)
    batch, skipped = photo_batch(paths, meta)
    where = ", ".join(str(i) for i in images)
    return batch, f"{len(batch)} photos from {where}", skipped


def export_model(
    model: str | os.PathLike,
    int8: bool = False,
    int8_method: str = "static",
    images: list[str | os.PathLike] | None = None,
    num_images: int = 32,
    out: str | os.PathLike | None = None,
    opset: int = OPSET,
    max_drop: float | None = None,
    holdout: list[str | os.PathLike] | None = None,
    holdout_labels: str | os.PathLike | None = None,
    holdout_images: int = 200,
) -> ExportReport:
    """Export ``model`` to ``model.onnx`` (and ``model.int8.onnx``) inside its bundle.

    Args:
        images: photos (files or folders) for the parity check and int8 calibration; default: the
            training data of a run folder, when its config names one that still exists.
        num_images: how many of them to use.
        out: bundle folder to write (default: the model's own bundle, or one beside a checkpoint).
        max_drop: keep the int8 model only if it loses at most this many points against fp32
            on held-out photos (see :mod:`carclf.export.int8_check`); None: no check.
        holdout: photos for that check (default: ``images`` less the calibration photos);
            ``holdout_labels`` a CSV of their labels; ``holdout_images`` how many to use.

    Raises:
        ModelError: the model cannot be loaded or exported, or the fp32 export disagrees with
            PyTorch (the file is then removed).
    """
    if not images:
        data = run_data_folder(model)
        images = [data] if data else []
    if max_drop is not None and not int8:
        raise ModelError("--max-drop limits the int8 model's loss: pass --int8 too")
    if int8 and int8_method == "static" and not images:
        raise ModelError(
            "--int8 calibrates on real photos: pass --images DIR (a few dozen photos like those "
            "you will serve), or --int8-method dynamic (no photos, but slower than fp32 on CPU)"
        )
    net, meta, folder, wrote = resolve_bundle(model, out)
    batch, where, skipped = sample_batch(meta, images, num_images)
    report = ExportReport(folder, wrote, where, skipped=skipped)
    reference = torch_logits(net, batch)

    fp32 = export_onnx(net, meta, folder / ONNX_FILE, opset=opset)
    report.files[ONNX_FILE] = fp32.stat().st_size
    parity = compare_logits(ONNX_FILE, reference, onnx_logits(fp32, batch))
    report.parity.append(parity)
    require_parity(fp32, reference, parity, detail=lambda: "\n" + report.format())
    export_tta_sizes(report, net, meta, batch, opset)  # model.<size>px.onnx: multiscale on ORT

    if int8:
        q = quantize_int8(fp32, folder / INT8_FILE, int8_method, batch)
        report.int8_method = f"int8 {int8_method}" + (
            f" ({len(batch)} calibration photos)" if int8_method == "static" else ""
        )
        report.files[INT8_FILE] = q.stat().st_size
        report.parity.append(compare_logits(INT8_FILE, reference, onnx_logits(q, batch)))
        if max_drop is None:
            write_check(folder, None)  # an earlier verdict is about another int8 file
            return report
        used = list_images(images, num_images) if images else []
        photos = holdout_photos(
            meta,
            list(holdout or images or []),
            {os.path.realpath(p) for p in used},
            holdout_images,
            holdout_labels,
        )
        report.int8_check = check_int8(fp32, q, meta, photos, max_drop)
        if not report.int8_check.kept:
            report.files.pop(INT8_FILE, None)
    return report
