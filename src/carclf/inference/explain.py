"""Grad-CAM heat maps: which part of the photo made the model give its answer.

The class-activation map of Grad-CAM (Selvaraju et al.) on the backbone's last stage, the feature
map the head pools (EfficientNet: after ``conv_head``/``bn2``; ResNet: ``layer4``), computed by the
maintained library ``pytorch-grad-cam`` (PyPI ``grad-cam``): its hooks, channel weights, ReLU,
scaling and resizing. carclf only chooses the layer and draws the overlay.

Gradients need the PyTorch network: a classifier that runs ONNX Runtime is explained with the
bundle's ``model.safetensors`` beside its ``model.onnx``; a bundle without them (an ONNX-only
deployment) cannot be explained, and :meth:`Explainer.for_classifier` says so (ModelError).

The score's gradient with respect to the last feature map depends on the head only, so the
backbone runs without autograd and only the head is differentiated: an explanation costs about
one forward pass. An ensemble bundle is explained as the mean of its members' maps (the target
layer of each member; the score is the ensemble's averaged logit).

Library use::

    from carclf import Classifier
    from carclf.inference.explain import Explainer

    ex = Explainer.for_classifier(Classifier.load("outputs/runs/<run>"))
    e = ex.explain("car.jpg")          # the top-1 class; target=k for another one
    open("car_cam.png", "wb").write(e.png())
"""

from __future__ import annotations

import copy
import io
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from carclf.data.images import MAX_PIXELS, load_rgb
from carclf.data.presets import EvalPreset
from carclf.errors import ModelError
from carclf.models.bundle import WEIGHTS, BundleMeta, load_bundle

OVERLAY_SIZE = 448  # longest side of an overlay PNG, in pixels
HEAT_WEIGHT = 0.45  # share of the heat-map colours in the overlay (the rest is the photo)


@dataclass
class Explanation:
    """A heat map for one photo and one class.

    Attributes:
        heatmap: (S, S) float32 in [0, 1] at the model's input size (S = ``meta.image_size``):
            1 where the evidence for ``index`` is strongest.
        overlay: (h, w, 3) uint8 RGB: the photo as the model saw it (whole photo for ``squash``,
            the centre crop for ``crop``), at most ``OVERLAY_SIZE`` px, with the map over it.
        index: the class explained (model output index).
        probability: the model's probability of that class (at its temperature).
        probabilities: (K,) the model's probabilities of every class.
    """

    heatmap: np.ndarray
    overlay: np.ndarray
    index: int
    probability: float
    probabilities: np.ndarray | None = None

    @property
    def rank(self) -> int:
        """1 when the explained class is the model's answer, 2 for its second guess..."""
        if self.probabilities is None:
            return 1
        return 1 + int((self.probabilities > self.probability).sum())

    def png(self) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(self.overlay).save(buf, "PNG", optimize=False, compress_level=6)
        return buf.getvalue()


class _Leaf(nn.Module):
    """Grad-CAM's target layer: the last feature map as a leaf of the autograd graph."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.detach().requires_grad_(True)


class _CamModel(nn.Module):
    """The network as Grad-CAM sees it: backbone without autograd, then leaf, then head."""

    def __init__(self, net: nn.Module):
        super().__init__()
        members = list(net.members) if hasattr(net, "members") else [net]
        for m in members:
            if not (hasattr(m, "features_from") and hasattr(m, "head")):
                raise ModelError(
                    f"cannot explain a {type(m).__name__}: Grad-CAM needs a carclf CarNet"
                )
        self.members = nn.ModuleList(members)
        self.leaves = nn.ModuleList(_Leaf() for _ in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = []
        for net, leaf in zip(self.members, self.leaves, strict=True):
            with torch.no_grad():
                features = net.features_from(x)
            logits.append(net.head(leaf(features)))
        return torch.stack(logits).mean(0)


class Explainer:
    """Grad-CAM for a carclf network; thread-safe (one explanation at a time).

    Args:
        net: a CarNet (or an ensemble of them); a private copy is kept, so the caller's network
            can keep serving predictions from other threads while this one is hooked.
        meta: the bundle metadata (preprocessing contract, temperature).
        device: where the copy runs (default: CPU).
        overlay_size: the longest side of overlays, in pixels.
    """

    def __init__(
        self,
        net: nn.Module,
        meta: BundleMeta,
        device: str | torch.device = "cpu",
        temperature: float | None = None,
        overlay_size: int = OVERLAY_SIZE,
    ):
        self.meta = meta
        self.device = torch.device(device)
        self.temperature = meta.temperature if temperature is None else temperature
        self.overlay_size = overlay_size
        self.preset = EvalPreset(
            size=meta.image_size, mean=meta.mean, std=meta.std, resize=meta.resize
        )
        net = copy.deepcopy(net).float().to(self.device).eval()
        for p in net.parameters():
            p.requires_grad_(False)  # only the feature map needs a gradient
        self.model = _CamModel(net)
        self._lock = threading.Lock()

    @classmethod
    def for_classifier(cls, classifier, overlay_size: int = OVERLAY_SIZE) -> Explainer:
        """The explainer of a loaded :class:`~carclf.inference.Classifier`.

        Its PyTorch network when it has one; for an ONNX Runtime classifier, the bundle's
        PyTorch weights beside its ONNX file. Raises ModelError when there are none.
        """
        if classifier.net is not None:
            net = classifier.net
        else:
            folder = _bundle_folder(classifier)
            if folder is None:
                raise ModelError(
                    f"explanations need the PyTorch weights ({WEIGHTS}); this model runs "
                    f"{getattr(classifier.backend, 'name', 'ONNX')} only"
                )
            net, _ = load_bundle(folder)
        device = classifier.device if classifier.net is not None else "cpu"
        return cls(net, classifier.meta, device, classifier.temperature, overlay_size)

    # -- explaining ---------------------------------------------------------------------------
    def explain(self, image, target: int | None = None) -> Explanation:
        """The heat map of ``image`` (path, bytes or RGB array) for class ``target`` (default:
        the model's top-1). Raises ImageDecodeError for an unreadable image."""
        rgb = image if isinstance(image, np.ndarray) else load_rgb(image, max_pixels=MAX_PIXELS)
        return self.explain_arrays([rgb], None if target is None else [target])[0]

    def explain_arrays(
        self, images: list[np.ndarray], targets: list[int | None] | None = None
    ) -> list[Explanation]:
        """Heat maps for decoded RGB images (one batch); ``targets[i]`` None: the top-1."""
        if not images:
            return []
        targets = list(targets) if targets is not None else [None] * len(images)
        batch = torch.stack([self.preset(rgb) for rgb in images]).to(self.device)
        maps, logits = self._cam(batch, targets)
        probs = torch.softmax(logits / self.temperature, dim=1).numpy()
        out = []
        for rgb, heat, p, t in zip(images, maps, probs, targets, strict=True):
            k = int(p.argmax()) if t is None else int(t)
            out.append(Explanation(heat, self.overlay(rgb, heat), k, float(p[k]), p))
        return out

    def _cam(self, batch: torch.Tensor, targets: list[int | None]):
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with self._lock:
            with torch.no_grad():
                logits = self.model(batch).float().cpu()
            chosen = [
                int(logits[i].argmax()) if t is None else int(t) for i, t in enumerate(targets)
            ]
            k = logits.shape[1]
            bad = [t for t in chosen if not 0 <= t < k]
            if bad:
                raise ValueError(f"class index {bad[0]} out of range (the model has {k} classes)")
            with GradCAM(self.model, list(self.model.leaves)) as cam, torch.enable_grad():
                maps = cam(batch, [ClassifierOutputTarget(t) for t in chosen])
        return np.nan_to_num(maps.astype(np.float32)), logits

    # -- drawing ------------------------------------------------------------------------------
    def view(self, rgb: np.ndarray) -> np.ndarray:
        """The part of the photo the model saw (all of it, or the centre crop), at most
        ``overlay_size`` px on its longest side."""
        h, w = rgb.shape[:2]
        if self.meta.resize == "crop":
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            rgb = rgb[top : top + side, left : left + side]
            h = w = side
        scale = min(1.0, self.overlay_size / max(h, w))
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(rgb)

    def overlay(self, rgb: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
        """``heatmap`` (model input size) stretched over :meth:`view` of ``rgb``, as colours."""
        from pytorch_grad_cam.utils.image import show_cam_on_image

        shown = self.view(rgb)
        h, w = shown.shape[:2]
        heat = cv2.resize(heatmap, (w, h), interpolation=cv2.INTER_LINEAR)
        return show_cam_on_image(
            shown.astype(np.float32) / 255.0,
            np.clip(heat, 0.0, 1.0),
            use_rgb=True,
            image_weight=1.0 - HEAT_WEIGHT,
        )


def _bundle_folder(classifier) -> Path | None:
    """The bundle folder holding PyTorch weights beside an ONNX classifier's model file."""
    path = getattr(classifier.backend, "path", None)
    if path is None:
        return None
    folder = Path(path).parent
    return folder if (folder / WEIGHTS).is_file() else None


def can_explain(classifier) -> bool:
    """Whether :meth:`Explainer.for_classifier` would find PyTorch weights (nothing is loaded)."""
    return classifier.net is not None or _bundle_folder(classifier) is not None
