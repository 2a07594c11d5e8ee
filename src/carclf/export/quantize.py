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

import numpy as np
import torch

from carclf.errors import ModelError
from carclf.export.onnx import INPUT
from carclf.io import atomic_path

METHODS = ("static", "dynamic")


def _shape_arithmetic(graph) -> list[str]:
    """Nodes whose inputs all derive from Shape outputs or constants (nodes are in graph order)."""
    derived = {i.name for i in graph.initializer} | {""}
    names = []
    for node in graph.node:
        if node.op_type == "Shape" or (
            node.op_type != "Constant" and all(i in derived for i in node.input)
        ):
            derived.update(node.output)
            names.append(node.name)
        elif node.op_type == "Constant":
            derived.update(node.output)
    return names


def _float_nodes(model_path: Path) -> list[str]:
    """Nodes kept in float: shape arithmetic, the first Conv and the final Gemm/MatMul."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    dense = [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    return _shape_arithmetic(graph) + convs[:1] + dense[-1:]


class _Batches:
    """ONNX Runtime's CalibrationDataReader protocol over a preprocessed batch."""

    def __init__(self, batch: torch.Tensor, size: int = 8):
        data = batch.detach().cpu().numpy().astype(np.float32)
        self._chunks = iter([{INPUT: data[i : i + size]} for i in range(0, len(data), size)])

    def get_next(self):
        return next(self._chunks, None)


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
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from carclf.export.onnx import set_metadata

    if method not in METHODS:
        raise ModelError(f"int8 method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "static" and (calibration is None or len(calibration) == 0):
        raise ModelError("static int8 quantization needs calibration photos (none given)")
    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix="carclf-quant-") as work:
        prepared = Path(work) / "prepared.onnx"
        # Shape inference and graph cleanup first, as ONNX Runtime recommends for quantization.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
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
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    keep_float = _float_nodes(prepared)
    if method == "static":
        quantize_static(
            str(prepared),
            str(out),
            _Batches(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_float,
        )
    else:
        quantize_dynamic(
            str(prepared), str(out), weight_type=QuantType.QUInt8, nodes_to_exclude=keep_float
        )


def _metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}
