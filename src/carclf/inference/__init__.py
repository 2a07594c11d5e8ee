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

import importlib

# name -> module: imported on first use, so ``import carclf.inference.onnx_backend`` (the service's
# limits, ``carclf serve --help``) does not import torch through this package's __init__.
_WHERE = {
    "Classifier": "classifier",
    "ClassScore": "classifier",
    "Prediction": "classifier",
    "find_model": "loading",
    "load_checkpoint_net": "loading",
    "load_classifier": "loading",
    "INT8_FILE": "onnx_backend",
    "ONNX_FILE": "onnx_backend",
    "OnnxBackend": "onnx_backend",
    "available_cpus": "onnx_backend",
    "default_threads": "onnx_backend",
    "session_options": "onnx_backend",
    "TorchBackend": "torch_backend",
}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"carclf.inference.{_WHERE[name]}"), name)
    raise AttributeError(name)


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
