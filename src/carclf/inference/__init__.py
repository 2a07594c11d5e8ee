"""Load a trained model and run it: the one place every consumer gets inference from.

``evaluate`` (predict.py), ``export``, ``serve``, ``batch``, ``ensemble``, ``pseudo`` and
``train`` import this package; it imports none of them (only ``data`` for decoding, presets and
inputs, ``models`` for the network and the bundle format).

Modules:
    classifier     ``Classifier`` (``carclf.Classifier``), ``Prediction``, ``ClassScore``
    loading        ``load_classifier`` (what the apps call), ``find_model``,
                   ``load_checkpoint_net``: a bundle, run folder or checkpoint
    heldout        ``heldout_view_logits``: a model's answers on its own run's validation photos
    calibration    ``fit_temperature``: temperature scaling on held-out logits
    torch_backend  ``TorchBackend``: PyTorch eager, CPU or GPU
    onnx_backend   ``OnnxBackend`` (ONNX Runtime, CPU), ``session_options``, ``default_threads``,
                   ``available_cpus``, the bundle's ONNX file names
    files          ``infer_paths``, ``loader_logits``, ``ViewLogits``: per-view logits for files
"""

from carclf.inference.classifier import Classifier, ClassScore, Prediction
from carclf.inference.loading import find_model, load_checkpoint_net, load_classifier
from carclf.inference.onnx_backend import (
    INT8_FILE,
    ONNX_FILE,
    OnnxBackend,
    available_cpus,
    default_threads,
    session_options,
)
from carclf.inference.torch_backend import TorchBackend

__all__ = [
    "INT8_FILE",
    "ONNX_FILE",
    "ClassScore",
    "Classifier",
    "OnnxBackend",
    "Prediction",
    "TorchBackend",
    "available_cpus",
    "default_threads",
    "find_model",
    "load_checkpoint_net",
    "load_classifier",
    "session_options",
]
