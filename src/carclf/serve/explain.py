"""What ``POST /explain`` runs: the Grad-CAM heat map of the model's answer for one photo.

The upload is checked exactly as ``/predict`` checks it (same size, format and pixel limits, the
same error codes), then decoded and explained in a thread of its own, one photo at a time: an
explanation is a forward pass plus the head's backward pass on the PyTorch network
(:mod:`carclf.inference.explain`), which runs beside the prediction batcher on its own copy of
the weights. A service whose model has no PyTorch weights (an ONNX-only bundle) answers 409
``explain_unavailable`` with the reason, before reading the upload.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import threading
from dataclasses import asdict

import numpy as np

from carclf.data.images import load_rgb
from carclf.errors import ImageDecodeError, ModelError
from carclf.inference.explain import Explainer, Explanation, can_explain
from carclf.serve.errors import ApiError
from carclf.serve.uploads import ImageInfo, inspect_image

UNAVAILABLE = "explain_unavailable"


class ExplainSlot:
    """The service's explainer: made on the first ``/explain`` (the weights load then), kept."""

    def __init__(self):
        self._explainer: Explainer | None = None
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="carclf-explain")

    @staticmethod
    def available(classifier) -> bool:
        """Whether this model can be explained (it has PyTorch weights); nothing is loaded."""
        return can_explain(classifier)

    @staticmethod
    def check(classifier) -> None:
        """409 when this model cannot be explained (no PyTorch weights)."""
        if not can_explain(classifier):
            raise ApiError(
                409,
                UNAVAILABLE,
                "this service runs an ONNX-only model: Grad-CAM needs the PyTorch weights "
                "(model.safetensors in the bundle); serve a bundle that has them to explain",
            )

    def explainer(self, classifier) -> Explainer:
        with self._lock:
            if self._explainer is None:
                try:
                    self._explainer = Explainer.for_classifier(classifier)
                except ModelError as e:
                    raise ApiError(409, UNAVAILABLE, str(e)) from None
            return self._explainer

    async def explain(
        self, classifier, data: bytes, max_pixels: int, target: int | None
    ) -> tuple[Explanation, ImageInfo]:
        """The heat map of ``data`` for class ``target`` (None: the top-1), or the ApiError
        ``/predict`` would give the same upload."""
        info = inspect_image(data, max_pixels)
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._pool, self._run, classifier, data, max_pixels, target)
        return await job, info

    def _run(self, classifier, data: bytes, max_pixels: int, target: int | None) -> Explanation:
        try:
            rgb = load_rgb(data, max_pixels=max_pixels)
        except ImageDecodeError as e:
            raise ApiError(422, "undecodable_image", e.reason) from None
        return self.explainer(classifier).explain_arrays([rgb], [target])[0]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def explain_body(classifier, e: Explanation, info: ImageInfo) -> dict:
    """The JSON body of ``/explain`` (without ``model`` and ``latency_ms``)."""
    one = np.zeros(classifier.num_classes, dtype=np.float32)
    one[e.index] = 1.0
    (score,) = classifier.scores(one, 1)  # the class's names and label
    score.probability = e.probability
    png = e.png()
    h, w = e.overlay.shape[:2]
    return {
        "explained": {"rank": e.rank, **asdict(score)},
        "image": asdict(info),
        "method": "grad-cam",
        "overlay": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
        "overlay_width": w,
        "overlay_height": h,
    }
