"""ONNX Runtime static int8 (QDQ) quantization, shared by the exporter and the training cache.

Static QDQ: per-channel int8 weights, uint8 activations whose ranges are calibrated on real
photos (the moving average of each calibration batch's min/max, which keeps one outlier batch
from widening a range). ONNX Runtime fuses the QDQ pairs into integer convolutions (VNNI/AMX
kernels where the CPU has them).

Some nodes stay in float. Shape arithmetic (nodes computing from ``Shape`` outputs and
constants only, e.g. dynamic padding): quantizing those rounds sizes, not pixels. The first
convolution (it sees raw pixels) and the classifier layer (its outputs are the logits): they cost
the most accuracy for the least speed.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import torch


def shape_arithmetic(graph) -> list[str]:
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


def float_nodes(model_path: str | Path) -> list[str]:
    """Nodes kept in float: shape arithmetic, the first Conv and the final Gemm/MatMul."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    dense = [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    return shape_arithmetic(graph) + convs[:1] + dense[-1:]


class CalibrationBatches:
    """ONNX Runtime's CalibrationDataReader protocol over a preprocessed batch."""

    def __init__(self, batch: torch.Tensor, input_name: str = "input", size: int = 8):
        data = batch.detach().cpu().float().numpy().astype(np.float32)
        self._chunks = iter([{input_name: data[i : i + size]} for i in range(0, len(data), size)])

    def get_next(self):
        return next(self._chunks, None)


def prepare(src: str | Path, dst: str | Path) -> Path:
    """Shape inference and graph clean-up, as ONNX Runtime recommends before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return Path(dst)


def quantize_static_qdq(
    prepared: str | Path,
    out: str | Path,
    calibration: torch.Tensor,
    input_name: str = "input",
    moving_average: bool = False,
) -> Path:
    """Static QDQ int8 of the :func:`prepare`-d model ``prepared``, calibrated on ``calibration``
    (preprocessed photos, N x 3 x S x S), written to ``out``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with _quiet_quantizer():
        quantize_static(
            str(prepared),
            str(out),
            CalibrationBatches(calibration, input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=float_nodes(prepared),
            extra_options={"CalibMovingAverage": True} if moving_average else {},
        )
    return Path(out)


class _FromQuantizer(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname or record.levelno >= logging.WARNING


@contextlib.contextmanager
def _quiet_quantizer():
    """ONNX Runtime's quantizer logs a line per adjusted bias scale on the root logger at INFO
    (a hundred lines for Lite2 in a run's train.log); keep its warnings, drop those."""
    root, quiet = logging.getLogger(), _FromQuantizer()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)
