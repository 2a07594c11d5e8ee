"""One ONNX file per input size of the default TTA policy, so its views run on ONNX Runtime.

An ONNX export takes one input size (TF-ported backbones pad "same" from the input size, and
the export freezes those pads: :func:`carclf.models.padding.static_padding_net`). ``multiscale``,
``carclf predict``'s default policy, also looks at each photo at 1.15x the model's size; with only
``model.onnx`` it had to fall back to PyTorch (about 2x slower on a CPU) and say so on every run.
So the export writes ``model.<size>px.onnx`` for each other size of that policy, checked against
PyTorch like ``model.onnx``, and :class:`carclf.inference.onnx_backend.OnnxBackend` runs a batch
on the file of its size. Dynamic spatial axes would be one file, but exact only for backbones
whose padding does not depend on the input size.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from carclf.data.tta import TTA_PRESETS
from carclf.export.onnx import (
    OPSET,
    compare_logits,
    export_onnx,
    onnx_logits,
    require_parity,
    torch_logits,
)
from carclf.inference.onnx_backend import ONNX_FILE, sized_onnx
from carclf.models.bundle import BundleMeta

DEFAULT_POLICY = "multiscale"  # carclf predict's default (conf/predict.yaml)


def tta_sizes(meta: BundleMeta, policy: str = DEFAULT_POLICY) -> list[int]:
    """Input sizes the views of ``policy`` need besides the model's own."""
    preset = TTA_PRESETS[policy](size=meta.image_size, mean=meta.mean, std=meta.std)
    return sorted({t.size for t in preset.transforms} - {meta.image_size})


def export_tta_sizes(report, net, meta: BundleMeta, batch: torch.Tensor, opset: int = OPSET):
    """Write and check ``model.<size>px.onnx`` for each :func:`tta_sizes` in ``report.bundle``;
    their sizes and parity go into the :class:`~carclf.export.pipeline.ExportReport`.

    ``batch`` (the parity photos at the model's size) is resized to each size, so both runtimes
    see the same input. A file that disagrees with PyTorch is removed and raises a ModelError.
    """
    folder = Path(report.bundle)
    for f in folder.glob("model.*px.onnx"):  # an earlier export's sizes may differ
        f.unlink()
    for size in tta_sizes(meta):
        path = sized_onnx(folder / ONNX_FILE, size)
        export_onnx(net, dataclasses.replace(meta, image_size=size), path, opset=opset)
        x = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
        reference = torch_logits(net, x)
        p = compare_logits(path.name, reference, onnx_logits(path, x))
        require_parity(path, reference, p, what=f" at {size} px")
        report.files[path.name] = path.stat().st_size
        report.parity.append(p)
