"""``carclf.Classifier``: load a trained model from anywhere and ask it about photos.

``Classifier.load(path)`` takes a bundle folder, a training run folder, or a Lightning checkpoint,
and needs neither Hydra nor any training code path. ``predict`` takes paths, PIL images, bytes or
RGB arrays and returns, per image, the top-k classes with names and probabilities. An image that
cannot be decoded gets a result with ``error`` set instead of stopping the batch.

``tta=`` (a policy name from :mod:`carclf.data.tta`, or a preset) runs every view of each image and
merges the answers; the backend only ever sees plain (N, 3, H, W) batches, one per view.
"""

from __future__ import annotations

import logging
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
from carclf.inference.loading import find_model, int8_model, int8_open_set, load_checkpoint_net
from carclf.inference.onnx_backend import ONNX_FILE, OnnxBackend
from carclf.inference.open_set import OpenSet, load_open_set
from carclf.inference.torch_backend import TorchBackend
from carclf.models.bundle import BundleMeta, load_bundle, read_meta
from carclf.models.network import CarNet

BACKENDS = ("auto", "onnx", "int8", "torch")
log = logging.getLogger(__name__)


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
    """The answer for one image: its top classes, or why it could not be read.

    ``unknown`` is True when the photo looks like none of the model's classes (its
    ``open_set_score`` is under the bundle's threshold; see :mod:`carclf.inference.open_set`);
    None for a model without open-set data.
    """

    source: str
    top: list[ClassScore] = field(default_factory=list)
    error: str | None = None
    unknown: bool | None = None
    open_set_score: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.unknown is None:  # a model without open-set data answers as it always did
            d.pop("unknown"), d.pop("open_set_score")
        return d


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
        open_set: OpenSet | None = None,
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
        self.open_set = open_set
        if open_set is not None and open_set.needs_features and not self.has_features:
            log.info(
                "%s backend gives no penultimate features (an export from before open-set "
                "support? re-export it): unknown photos are scored by %s instead of %s",
                getattr(self.backend, "name", "this"),
                open_set.without_features().score,
                open_set.score,
            )
            self.open_set = open_set.without_features()

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
            meta = read_meta(target)
            kw = {"backend": onnx, "tta": tta, "open_set": int8_open_set(target, meta)}
            return cls(None, meta, "cpu", temperature, **kw)
        if target.is_dir() and backend in ("auto", "onnx"):
            onnx_path = target / ONNX_FILE
            on_cpu = (device or "cpu") == "cpu" or not torch.cuda.is_available()
            if onnx_path.is_file() and (backend == "onnx" or on_cpu):
                meta = read_meta(target)
                onnx = OnnxBackend(onnx_path, threads)
                open_set = load_open_set(target, meta)
                return cls(None, meta, "cpu", temperature, backend=onnx, tta=tta, open_set=open_set)
            if backend == "onnx":
                raise ModelError(f"{target}: no model.onnx; run: python -m carclf.export {target}")
        if target.is_file():
            net, meta = load_checkpoint_net(target)
            log.info("%s: a checkpoint has no open-set data: no unknown flag", target)
            return cls(net, meta, device=device, temperature=temperature, tta=tta)
        net, meta = load_bundle(target)
        open_set = load_open_set(target, meta)
        return cls(net, meta, device=device, temperature=temperature, tta=tta, open_set=open_set)

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

        An exported ONNX model takes the input sizes it was exported for (its own, and those of
        the default TTA policy: ``carclf.export`` writes one file per size), so views at other
        scales need a new export or the PyTorch backend; failing here beats failing after the
        first batch.
        """
        runs = getattr(self.backend, "input_sizes", None)
        sizes = sorted({t.size for t in preset.transforms})
        if runs and any((s, s) not in runs for s in sizes):
            shown = ", ".join(f"{h}x{w}" for h, w in runs)
            raise ModelError(
                f"TTA {preset.name!r} needs {sizes} px views, but the {self.backend.name} model "
                f"takes {shown} px only; re-export it (carclf export), use a policy at those "
                "sizes (none, hflip, multicrop) or the torch backend"
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

    # -- open set ------------------------------------------------------------------------------
    @property
    def has_features(self) -> bool:
        """Whether the backend gives penultimate features with the logits."""
        return hasattr(self.backend, "with_features") and getattr(
            self.backend, "has_features", True
        )

    @property
    def needs_features(self) -> bool:
        """Whether predictions need the features (the open-set score is feature-based)."""
        return self.open_set is not None and self.open_set.needs_features

    def view_outputs(
        self, views: Sequence[torch.Tensor], features: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, V, K) logits and, with ``features`` (default: when the open-set score needs
        them), the (N, D) penultimate features of the first (plain) view, in the same calls."""
        features = self.needs_features if features is None else features
        if not features or not self.has_features:
            return self.view_logits(views), None
        first, feats = self.backend.with_features(views[0])
        rest = [self.logits(v) for v in views[1:]]
        return torch.stack([first, *rest], dim=1), feats

    def open_set_scores(self, plain_logits, features=None) -> np.ndarray | None:
        """The open-set score per row of plain-view logits (None without open-set data)."""
        if self.open_set is None:
            return None
        logits = np.asarray(plain_logits, dtype=np.float64)
        feats = None if features is None else np.asarray(features, dtype=np.float32)
        return self.open_set.score_of(logits, feats)

    def answer(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probabilities (N, K), open-set scores (N,) or None)`` for one preprocessed batch,
        from one backend call: what the service and the batch job ask per micro-batch."""
        logits, feats = self.view_outputs([batch])
        plain = logits[:, 0]
        return self.probabilities(plain).numpy(), self.open_set_scores(plain, feats)

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
        probs, errors, open_scores = self._probabilities(images, batch_size, tta)
        out = []
        for i, image in enumerate(images):
            if i in errors:
                out.append(Prediction(_source(image), error=errors[i]))
                continue
            p = Prediction(_source(image), self.scores(probs[i], top_k))
            if open_scores is not None:
                p.open_set_score = float(open_scores[i])
                p.unknown = bool(self.open_set.unknown(open_scores[i]))
            out.append(p)
        return out

    def predict_proba(
        self, images: Sequence, batch_size: int = 32, tta: str | TTAPreset | None = None
    ) -> np.ndarray:
        """(N, K) probabilities; rows of undecodable images are NaN."""
        return self._probabilities(list(images), batch_size, tta)[0]

    def _probabilities(
        self, images: list, batch_size: int, tta: str | TTAPreset | None = None
    ) -> tuple[np.ndarray, dict[int, str], np.ndarray | None]:
        preset = self.tta if tta is None else self.tta_preset(tta)
        out = np.full((len(images), self.num_classes), np.nan, dtype=np.float32)
        open_scores = None if self.open_set is None else np.full(len(images), np.nan)
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
                logits, feats = self.view_outputs(batches)
                out[slots] = merge_views(logits, self.temperature, preset.merge).numpy()
                if open_scores is not None:
                    open_scores[slots] = self.open_set_scores(logits[:, 0], feats)
        return out, errors, open_scores


def _source(image) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, (bytes, bytearray)):
        return "<bytes>"
    return f"<{type(image).__name__}>"
