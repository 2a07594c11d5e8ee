"""INT8 versions of an exported model, with ONNX Runtime's quantization tools.

Two methods, measured on Lite0 at 224 px on a 2-core CPU (see BENCHMARKS.md):

* ``static`` (the default): QDQ format, per-channel int8 weights, uint8 activations whose ranges
  are calibrated on a few dozen real photos. ONNX Runtime fuses the QDQ pairs into integer
  convolutions, which run about 1.5-2x faster than fp32.
* ``dynamic``: int8 weights, activation ranges computed per batch at run time; no calibration
  photos needed. For convolutional networks ORT runs this through ``ConvInteger`` kernels, which
  are several times *slower* than fp32, with no accuracy advantage. Kept for comparison only.

Some nodes stay in float. Shape arithmetic (nodes computing from ``Shape`` outputs and
constants only, e.g. dynamic padding): quantizing those rounds sizes, not pixels. The first
convolution (it sees raw pixels) and the classifier layer (its outputs are the logits): they cost
the most accuracy for the least speed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from carclf.errors import ModelError
from carclf.export.onnx import INPUT
from carclf.inference.int8 import float_nodes, prepare, quantize_static_qdq
from carclf.io import atomic_path

METHODS = ("static", "dynamic")


def quantize_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    method: str = "static",
    calibration: torch.Tensor | None = None,
) -> Path:
    """Write an int8 version of the fp32 ONNX model ``src`` to ``dst``.

    Args:
        method: ``static`` (needs ``calibration``) or ``dynamic``; see the module docstring.
        calibration: preprocessed photos (N, 3, S, S) for the activation ranges; 32-100 photos
            of the kind the model will serve are enough.
    """
    from carclf.export.onnx import set_metadata

    if method not in METHODS:
        raise ModelError(f"int8 method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "static" and (calibration is None or len(calibration) == 0):
        raise ModelError("static int8 quantization needs calibration photos (none given)")
    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix="carclf-quant-") as work:
        prepared = Path(work) / "prepared.onnx"
        # Shape inference and graph cleanup first, as ONNX Runtime recommends for quantization.
        prepare(src, prepared)
        try:
            with atomic_path(dst) as tmp:
                _quantize(prepared, tmp, method, calibration)
                props = _metadata(src)
                how = f"int8 {method}, per-channel QDQ" if method == "static" else f"int8 {method}"
                if method == "static":
                    how += f", calibrated on {len(calibration)} images"
                props["quantization"] = json.dumps(how)
                set_metadata(tmp, props)
        except ModelError:
            raise
        except Exception as e:
            raise ModelError(f"{src}: int8 quantization failed ({type(e).__name__}: {e})") from e
    return dst


def _quantize(prepared: Path, out: Path, method: str, calibration: torch.Tensor | None) -> None:
    """ONNX Runtime's static (QDQ, calibrated) or dynamic quantization of ``prepared`` to ``out``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if method == "static":
        quantize_static_qdq(prepared, out, calibration, INPUT)
    else:
        keep_float = float_nodes(prepared)
        quantize_dynamic(
            str(prepared), str(out), weight_type=QuantType.QUInt8, nodes_to_exclude=keep_float
        )


def _metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}
