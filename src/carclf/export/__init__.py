"""Export to ONNX (fp32 and int8) and run exported models with ONNX Runtime.

``python -m carclf.export MODEL [--int8]`` writes ``model.onnx`` into the model's bundle; from then
on :meth:`carclf.Classifier.load` runs it with ONNX Runtime on the CPU.
"""

from carclf.export.onnx import export_onnx, onnx_metadata, validate_onnx
from carclf.export.pipeline import ExportReport, export_model
from carclf.export.quantize import quantize_int8
from carclf.inference.onnx_backend import INT8_FILE, ONNX_FILE

__all__ = [
    "INT8_FILE",
    "ONNX_FILE",
    "ExportReport",
    "export_model",
    "export_onnx",
    "onnx_metadata",
    "quantize_int8",
    "validate_onnx",
]
