"""``carclf.Classifier``: load a trained model from anywhere and ask it about photos.

``Classifier.load(path)`` takes a bundle folder, a training run folder, or a Lightning checkpoint,
and needs neither Hydra nor any training code path. ``predict`` takes paths, PIL images, bytes or
RGB arrays and returns, per image, the top-k classes with names and probabilities. An image that
cannot be decoded gets a result with ``error`` set instead of stopping the batch.

``tta=`` (a policy name from :mod:`carclf.data.tta`, or a preset) runs every view of each image and
merges the answers; the backend only ever sees plain (N, 3, H, W) batches, one per view.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from carclf.data.classmaps import display_name
from carclf.data.images import MAX_PIXELS, load_rgb
from carclf.data.presets import EvalPreset
from carclf.data.tta import TTAPreset, merge_views, tta_preset
from carclf.errors import ImageDecodeError, ModelError
from carclf.inference.loading import find_model, int8_model, load_checkpoint_net
from carclf.inference.onnx_backend import ONNX_FILE, OnnxBackend
from carclf.inference.torch_backend import TorchBackend
from carclf.models.bundle import BundleMeta, load_bundle, read_meta
from carclf.models.network import CarNet

BACKENDS = ("auto", "onnx", "int8", "torch")


def _doc(text: str, **kwargs):
    """A dataclass field with a description (the service's /docs shows it)."""
    return field(metadata={"description": text}, **kwargs)


@dataclass(kw_only=True)
class ClassScore:
    """One class of an answer. The one definition of these fields: the service's response model
    (:mod:`carclf.serve.schemas`) is built from them, with their types and descriptions."""

    index: int = _doc("class index in the model's output")
    label: int | str = _doc("the class label as written in the training data")
    name: str
    name_local: str | None = _doc("name in the data's own language, if any", default=None)
    display: str = _doc("name with the local name in brackets, for showing")
    probability: float


@dataclass
class Prediction:
    """The answer for one image: its top classes, or why it could not be read."""

    source: str
    top: list[ClassScore] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return asdict(self)


class Classifier:
    """A trained car classifier with its preprocessing contract.

    ``backend`` turns a preprocessed batch into logits: PyTorch by default, ONNX Runtime when the
    bundle holds an exported ``model.onnx`` (written by :mod:`carclf.export`). ``tta`` is the default
    test-time augmentation policy (None: the eval view only); ``predict`` may override it.
    """

    def __init__(
        self,
        net: CarNet | None,
        meta: BundleMeta,
        device: str | torch.device | None = None,
        temperature: float | None = None,
        backend=None,
        tta: str | TTAPreset | None = None,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = net
        self.meta = meta
        self.temperature = meta.temperature if temperature is None else temperature
        self.preset = EvalPreset(
            size=meta.image_size, mean=meta.mean, std=meta.std, resize=meta.resize
        )
        self.backend = backend if backend is not None else TorchBackend(net, self.device)
        self.tta = self.tta_preset(tta)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str | None = None,
        temperature: float | None = None,
        backend: str = "auto",
        tta: str | TTAPreset | None = None,
        threads: int | None = None,
    ) -> Classifier:
        """Load a bundle, run folder or checkpoint.

        Args:
            backend: ``auto`` (ONNX Runtime where the bundle has a model.onnx and the device is
                the CPU, else PyTorch), ``torch``, ``onnx``, or ``int8`` (the bundle's
                model.int8.onnx).
            tta: default test-time augmentation: a name in ``carclf.data.tta.TTA_PRESETS``
                (``none``, ``hflip``, ``multiscale``, ...), a preset, or None.
            threads: ONNX Runtime intra-op threads (default: see ``onnx_backend``).
        """
        if backend not in BACKENDS:
            raise ModelError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        target = find_model(path)
        if backend == "int8":
            onnx = OnnxBackend(int8_model(target), threads)
            return cls(None, read_meta(target), "cpu", temperature, backend=onnx, tta=tta)
        if target.is_dir() and backend in ("auto", "onnx"):
            onnx_path = target / ONNX_FILE
            on_cpu = (device or "cpu") == "cpu" or not torch.cuda.is_available()
            if onnx_path.is_file() and (backend == "onnx" or on_cpu):
                meta = read_meta(target)
                onnx = OnnxBackend(onnx_path, threads)
                return cls(None, meta, "cpu", temperature, backend=onnx, tta=tta)
            if backend == "onnx":
                raise ModelError(f"{target}: no model.onnx; run: python -m carclf.export {target}")
        net, meta = load_checkpoint_net(target) if target.is_file() else load_bundle(target)
        return cls(net, meta, device=device, temperature=temperature, tta=tta)

    # -- facts ------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return self.meta.class_names

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    def display_names(self) -> list[str]:
        local = self.meta.class_names_local or [None] * self.num_classes
        return [display_name(n, loc) for n, loc in zip(self.class_names, local, strict=True)]

    # -- inference -----------------------------------------------------------------------------
    def decode(self, image) -> np.ndarray:
        """Any accepted input as an RGB uint8 array (raises ImageDecodeError)."""
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ImageDecodeError(
                    "<array>", f"expected an HxWx3 uint8 RGB array, got {image.shape} {image.dtype}"
                )
            return image
        if hasattr(image, "convert") and hasattr(image, "size"):  # PIL image
            from carclf.data.images import _to_rgb

            return np.asarray(_to_rgb(image))
        return load_rgb(image, max_pixels=MAX_PIXELS)

    def tta_preset(self, policy: str | TTAPreset | None) -> TTAPreset:
        """A TTA preset built on this model's preprocessing contract (size, mean, std, resize)."""
        m = self.meta
        preset = tta_preset(policy, size=m.image_size, mean=m.mean, std=m.std, resize=m.resize)
        return self.check_tta(preset)

    def check_tta(self, preset: TTAPreset) -> TTAPreset:
        """``preset`` if the backend can run all its views, else a ModelError saying why.

        An exported ONNX model takes one input size only, so views at other scales (multiscale)
        need the PyTorch backend; failing here beats failing after the first batch.
        """
        fixed = getattr(self.backend, "input_size", None)
        sizes = sorted({t.size for t in preset.transforms})
        if fixed and any((s, s) != tuple(fixed) for s in sizes):
            raise ModelError(
                f"TTA {preset.name!r} needs {sizes} px views, but the {self.backend.name} model "
                f"takes {fixed[0]}x{fixed[1]} px only; use a policy at the model's size (none, "
                "hflip, multicrop) or the torch backend"
            )
        return preset

    def preprocess(self, image) -> torch.Tensor:
        return self.preset(self.decode(image))

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw logits (CPU, float32) for a preprocessed batch (N, 3, H, W)."""
        return self.backend(batch)

    def view_logits(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, V, K) logits for V batches of views of the same N images (one backend call each)."""
        return torch.stack([self.logits(v) for v in views], dim=1)

    def probabilities(self, logits: torch.Tensor, merge: str | None = None) -> torch.Tensor:
        """Temperature-scaled probabilities (N, K) from logits (N, K) or per-view logits (N, V, K).

        Views are merged by ``merge`` (``logits`` or ``probs``; default: this TTA policy's rule).
        """
        if logits.ndim == 2:
            return torch.softmax(logits / self.temperature, dim=1)
        return merge_views(logits, self.temperature, merge or self.tta.merge)

    def scores(self, probs: np.ndarray, top_k: int) -> list[ClassScore]:
        local = self.meta.class_names_local or [None] * self.num_classes
        order = np.argsort(-probs)[: min(top_k, self.num_classes)]
        return [
            ClassScore(
                index=int(i),
                label=self.meta.label_values[i],
                name=self.class_names[i],
                name_local=local[i],
                display=display_name(self.class_names[i], local[i]),
                probability=float(probs[i]),
            )
            for i in order
        ]

    def predict(
        self,
        images: Iterable | object,
        top_k: int = 5,
        batch_size: int = 32,
        tta: str | TTAPreset | None = None,
    ) -> list[Prediction]:
        """Top-k classes for each image; a single image (not a list) is accepted too.

        ``tta`` overrides the classifier's default TTA policy for this call.
        """
        if isinstance(images, (str, os.PathLike, bytes, bytearray, np.ndarray)) or hasattr(
            images, "convert"
        ):
            images = [images]
        images = list(images)
        probs, errors = self._probabilities(images, batch_size, tta)
        return [
            Prediction(_source(image), error=errors[i])
            if i in errors
            else Prediction(_source(image), self.scores(probs[i], top_k))
            for i, image in enumerate(images)
        ]

    def predict_proba(
        self, images: Sequence, batch_size: int = 32, tta: str | TTAPreset | None = None
    ) -> np.ndarray:
        """(N, K) probabilities; rows of undecodable images are NaN."""
        return self._probabilities(list(images), batch_size, tta)[0]

    def _probabilities(
        self, images: list, batch_size: int, tta: str | TTAPreset | None = None
    ) -> tuple[np.ndarray, dict[int, str]]:
        preset = self.tta if tta is None else self.tta_preset(tta)
        out = np.full((len(images), self.num_classes), np.nan, dtype=np.float32)
        errors: dict[int, str] = {}
        for start in range(0, len(images), batch_size):
            views, slots = [], []
            for j, image in enumerate(images[start : start + batch_size], start):
                try:
                    views.append(preset(self.decode(image)))
                    slots.append(j)
                except ImageDecodeError as e:
                    errors[j] = e.reason
            if views:
                batches = [torch.stack(v) for v in zip(*views, strict=True)]
                logits = self.view_logits(batches)
                out[slots] = merge_views(logits, self.temperature, preset.merge).numpy()
        return out, errors


def _source(image) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, (bytes, bytearray)):
        return "<bytes>"
    return f"<{type(image).__name__}>"
