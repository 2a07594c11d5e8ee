"""Export a :class:`CarNet` to ONNX, and check the export against PyTorch.

The model file carries its own preprocessing contract and class names in ``metadata_props``, so a
consumer with nothing but ``model.onnx`` (a C++ or Java service, Netron, a colleague) knows how to
feed it and how to read its output; values are JSON strings.

We use the TorchScript-based exporter (``dynamo=False``): it needs nothing beyond ``onnx`` (the
dynamo exporter also needs ``onnxscript``), works offline, and exports the convolutional
backbones carclf uses exactly (max logit difference ~1e-6). The batch axis is dynamic, so one file
serves batch 1 and batch 32; height and width are fixed to the bundle's image size.

TF-ported backbones (``tf_efficientnet_*``) pad "same" from the input size at every call; since the
size is fixed, the export uses a copy of the network whose pads are constants
(:func:`carclf.models.padding.static_padding_net`), which int8 quantization cannot round wrong.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from carclf.errors import ModelError
from carclf.inference.onnx_backend import FEATURES_OUTPUT, OnnxBackend
from carclf.inference.torch_backend import feature_net
from carclf.io import atomic_path
from carclf.models.bundle import BundleMeta
from carclf.models.network import CarNet
from carclf.models.padding import static_padding_net

OPSET = 17
INPUT = "input"
OUTPUT = "logits"
# Second output: the penultimate features, which the open-set knn score needs
# (carclf.inference.open_set); costs nothing, the network computes them anyway.
FEATURES = FEATURES_OUTPUT
# Where exported logits may differ from PyTorch's: fp32 kernels differ in summation order only.
FP32_TOLERANCE = 1e-3


def onnx_metadata(meta: BundleMeta) -> dict[str, str]:
    """metadata_props for ``meta``: the preprocessing contract, class names, model identity."""
    from carclf import __version__

    values = {
        "carclf.format": "carclf-onnx/1",
        "backbone": meta.backbone,
        "image_size": meta.image_size,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "resize": meta.resize,
        "input_layout": "NCHW float32 RGB, (pixel / 255 - mean) / std",
        "temperature": meta.temperature,
        "class_names": meta.class_names,
        "class_names_local": meta.class_names_local,
        "label_values": meta.label_values,
        "created": meta.created,
        "carclf_version": __version__,
    }
    return {k: json.dumps(v, ensure_ascii=False) for k, v in values.items()}


def _put_metadata(model, props: dict[str, str]) -> None:
    """Make ``props`` the metadata_props of a loaded ONNX model (replacing any there)."""
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def set_metadata(onnx_path: str | os.PathLike, props: dict[str, str]) -> None:
    """Replace the metadata_props of an ONNX file in place (atomically)."""
    import onnx

    path = Path(onnx_path)
    model = onnx.load(str(path))
    _put_metadata(model, props)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def export_onnx(net: CarNet, meta: BundleMeta, path: str | os.PathLike, opset: int = OPSET) -> Path:
    """Write ``net`` as an ONNX model with a dynamic batch axis and ``meta`` in its metadata.

    The file appears only when complete (written beside it, then renamed), so a failed export
    never leaves a half-written model.onnx that :class:`Classifier` would pick up.
    """
    import onnx

    if opset < 17:
        raise ModelError(f"opset {opset}: carclf exports need opset 17 or newer")
    path = Path(path)
    net = feature_net(static_padding_net(net.eval().float().cpu(), meta))
    dummy = torch.zeros(1, 3, meta.image_size, meta.image_size)
    try:
        with atomic_path(path) as tmp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
                torch.onnx.export(
                    net,
                    (dummy,),
                    str(tmp),
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT],
                    output_names=[OUTPUT, FEATURES],
                    dynamic_axes={name: {0: "batch"} for name in (INPUT, OUTPUT, FEATURES)},
                    do_constant_folding=True,
                )
            model = onnx.load(str(tmp))
            onnx.checker.check_model(model)
            model.doc_string = f"carclf {meta.backbone} classifier, {meta.num_classes} classes"
            _put_metadata(model, onnx_metadata(meta))
            onnx.save(model, str(tmp))
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"cannot export {meta.backbone} to ONNX ({type(e).__name__}: {e})") from e
    return path


@dataclass
class Parity:
    """How closely an exported model reproduces PyTorch on the same inputs."""

    model: str
    images: int
    max_abs_diff: float
    top1_agreement: float  # share of images with the same top-1 class

    @property
    def top1_identical(self) -> bool:
        return self.top1_agreement == 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "top1_identical": self.top1_identical}


def compare_logits(name: str, reference: np.ndarray, other: np.ndarray) -> Parity:
    if reference.shape != other.shape:
        raise ModelError(f"{name}: logits of shape {other.shape}, PyTorch gives {reference.shape}")
    return Parity(
        model=name,
        images=len(reference),
        max_abs_diff=float(np.abs(reference - other).max()) if reference.size else 0.0,
        top1_agreement=float((reference.argmax(1) == other.argmax(1)).mean())
        if reference.size
        else 1.0,
    )


def require_parity(
    path: Path, reference: np.ndarray, parity: Parity, what: str = "", detail=None
) -> None:
    """Remove ``path`` and raise a ModelError naming it when its ``parity`` with PyTorch's
    ``reference`` logits is outside the fp32 tolerance or changes a top-1 answer (``what``:
    which export; ``detail``: a callable whose text ends the message)."""
    limit = FP32_TOLERANCE * max(1.0, float(np.abs(reference).max()))
    if parity.top1_identical and parity.max_abs_diff <= limit:
        return
    path.unlink(missing_ok=True)
    raise ModelError(
        f"{path}: ONNX export{what} disagrees with PyTorch (max |logit diff| "
        f"{parity.max_abs_diff:.2e}, limit {limit:.1e}; top-1 agreement "
        f"{parity.top1_agreement:.1%}); the file was removed" + (detail() if detail else "")
    )


@torch.inference_mode()
def torch_logits(net: CarNet, batch: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    net = net.eval().float().cpu()
    return np.concatenate(
        [net(batch[i : i + batch_size]).float().numpy() for i in range(0, len(batch), batch_size)]
    )


def onnx_logits(onnx_path: str | os.PathLike, batch: torch.Tensor, batch_size: int = 32):
    backend = OnnxBackend(onnx_path)
    return np.concatenate(
        [backend(batch[i : i + batch_size]).numpy() for i in range(0, len(batch), batch_size)]
    )


def onnx_outputs(onnx_path: str | os.PathLike, batch: torch.Tensor, batch_size: int = 32):
    """``(logits, features or None)`` of an ONNX file (None: exported without features)."""
    backend = OnnxBackend(onnx_path)
    if not backend.has_features:
        return onnx_logits(onnx_path, batch, batch_size), None
    starts = range(0, len(batch), batch_size)
    parts = [backend.with_features(batch[i : i + batch_size]) for i in starts]
    logits, feats = zip(*parts, strict=True)
    return np.concatenate([t.numpy() for t in logits]), np.concatenate([t.numpy() for t in feats])


def validate_onnx(
    net: CarNet,
    onnx_path: str | os.PathLike,
    batch: torch.Tensor,
    reference: np.ndarray | None = None,
) -> Parity:
    """Run ``batch`` (preprocessed images) through PyTorch and the ONNX file and compare logits.

    Give it more than one image: the export traced a batch of one, so a larger batch is what
    catches a batch axis that was exported fixed.
    """
    reference = torch_logits(net, batch) if reference is None else reference
    return compare_logits(Path(onnx_path).name, reference, onnx_logits(onnx_path, batch))
