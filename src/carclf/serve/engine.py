"""The inference engine behind the routes: admission, decoding, micro-batching, top-k.

Request path: admitted (or 503) -> header checked on the event loop (cheap: format, pixels) ->
decoded and preprocessed in a small thread pool -> queued for the micro-batcher -> top-k.
Every step that can fail on user input raises :class:`ApiError` with a status that says why.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from carclf.data.images import load_rgb
from carclf.errors import ImageDecodeError
from carclf.inference import Classifier
from carclf.serve.batcher import MicroBatcher, QueueFull
from carclf.serve.errors import ApiError
from carclf.serve.limits import Limits
from carclf.serve.metrics import Metrics
from carclf.serve.schemas import ModelInfo
from carclf.serve.uploads import ImageInfo, inspect_image

log = logging.getLogger("carclf.serve")


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def model_info(classifier: Classifier, name: str | None = None) -> ModelInfo:
    """Identity of a loaded model; ``version`` hashes the file actually run (or the metadata)."""
    meta = classifier.meta
    path = getattr(classifier.backend, "path", None)
    if path is not None and Path(path).is_file():
        version = _file_hash(Path(path))
        backend = "onnx-int8" if ".int8." in Path(path).name else "onnx"
        folder = Path(path).parent
        # a run's bundle is <run>/bundle: the run's name says more than "bundle"
        default_name = folder.parent.name if folder.name == "bundle" else folder.name
    else:
        blob = json.dumps(asdict(meta), sort_keys=True, default=str).encode()
        version = hashlib.sha256(blob).hexdigest()[:12]
        backend = getattr(classifier.backend, "name", "torch")
        default_name = meta.backbone
    return ModelInfo(
        name=name or default_name,
        version=version,
        backbone=meta.backbone,
        backend=backend,
        num_classes=meta.num_classes,
        image_size=meta.image_size,
        created=meta.created,
    )


class Engine:
    def __init__(self, classifier: Classifier, limits: Limits, metrics: Metrics, name=None):
        self.classifier = classifier
        self.limits = limits
        self.metrics = metrics
        self.info = model_info(classifier, name)
        metrics.counter("carclf_unknown_total", "Photos answered unknown (true) or known (false).")
        self.pending = 0  # admitted requests not yet answered
        self.decoding = 0  # requests whose images are being decoded
        self._decoders = concurrent.futures.ThreadPoolExecutor(
            limits.decode_threads, thread_name_prefix="carclf-decode"
        )
        self.batcher = MicroBatcher(
            self._probabilities,
            max_batch=limits.max_batch,
            max_wait_s=limits.max_wait_ms / 1000,
            max_queue=limits.max_queue,
            incoming=lambda: self.decoding,
            on_batch=self._observe_batch,
        )

    # -- model side (runs in the batcher's thread) --------------------------------------------
    def _probabilities(self, batch: torch.Tensor) -> list[tuple[np.ndarray, float | None]]:
        """Per image: its probabilities and open-set score (None without open-set data)."""
        probs, scores = self.classifier.answer(batch)
        if scores is None:
            return [(p, None) for p in probs]
        return [(p, float(s)) for p, s in zip(probs, scores, strict=True)]

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.observe("carclf_batch_size", size)
        self.metrics.observe("carclf_model_seconds", seconds)

    def warm_up(self) -> None:
        """One model call before the first request, so it does not pay for lazy allocations."""
        s = self.classifier.meta.image_size
        self._probabilities(torch.zeros(1, 3, s, s))

    async def close(self) -> None:
        await self.batcher.stop()
        self.batcher.close()
        self._decoders.shutdown(wait=False, cancel_futures=True)

    # -- request side -------------------------------------------------------------------------
    @contextlib.contextmanager
    def admit(self):
        """Count a request in, or refuse it with 503 when ``max_pending`` are in progress."""
        if self.pending >= self.limits.max_pending:
            raise ApiError(
                503,
                "overloaded",
                f"{self.pending} requests in progress (limit {self.limits.max_pending}); "
                f"retry in {self.limits.retry_after_s} s",
                {"Retry-After": str(self.limits.retry_after_s)},
            )
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    def _decode(self, data: bytes) -> torch.Tensor:
        try:
            rgb = load_rgb(data, max_pixels=self.limits.max_pixels)
        except ImageDecodeError as e:
            raise ApiError(422, "undecodable_image", e.reason) from None
        return self.classifier.preset(rgb)

    async def prepare(self, images: list[bytes]) -> list[tuple[torch.Tensor, ImageInfo] | ApiError]:
        """Check and decode each image; a refused image becomes its ApiError in the list."""
        loop = asyncio.get_running_loop()
        self.decoding += 1
        try:
            checked: list[ImageInfo | ApiError] = []
            for data in images:
                try:
                    checked.append(inspect_image(data, self.limits.max_pixels))
                except ApiError as e:
                    checked.append(e)
            jobs = [
                loop.run_in_executor(self._decoders, self._decode, data)
                if isinstance(info, ImageInfo)
                else None
                for data, info in zip(images, checked, strict=True)
            ]
            live = [j for j in jobs if j is not None]
            done = iter(await asyncio.gather(*live, return_exceptions=True))
            out: list[tuple[torch.Tensor, ImageInfo] | ApiError] = []
            for job, info in zip(jobs, checked, strict=True):
                if job is None:
                    out.append(info)
                    continue
                result = next(done)
                if isinstance(result, ApiError):
                    out.append(result)
                elif isinstance(result, BaseException):
                    raise result
                else:
                    out.append((result, info))
            return out
        finally:
            self.decoding -= 1

    async def predict(self, images: list[bytes], top_k: int) -> list[dict | ApiError]:
        """Per image: ``{"top": [...], "image": {...}}``, or the ApiError that refused it."""
        prepared = await self.prepare(images)
        ok = [p for p in prepared if not isinstance(p, ApiError)]
        try:
            probs = await self.batcher.submit([t for t, _ in ok]) if ok else []
        except QueueFull as e:
            raise ApiError(
                503,
                "overloaded",
                f"model queue full: {e}; retry in {self.limits.retry_after_s} s",
                {"Retry-After": str(self.limits.retry_after_s)},
            ) from None
        rows = iter(probs)
        results: list[dict | ApiError] = []
        for p in prepared:
            if isinstance(p, ApiError):
                self.metrics.inc("carclf_images_total", result="error")
                results.append(p)
                continue
            probs, open_score = next(rows)
            scores = self.classifier.scores(probs, top_k)
            self.metrics.inc("carclf_images_total", result="ok")
            results.append(
                {
                    "top": [{"rank": r, **asdict(s)} for r, s in enumerate(scores, 1)],
                    "image": asdict(p[1]),
                    **self.open_set_answer(scores, open_score),
                }
            )
        return results

    def open_set_answer(self, scores, open_score: float | None) -> dict:
        """``label``, ``unknown``, ``reason``, ``open_set_score``; {} without open-set data."""
        open_set = self.classifier.open_set
        if open_set is None or open_score is None:
            return {}
        unknown = bool(open_set.unknown(open_score))
        self.metrics.inc("carclf_unknown_total", result=str(unknown).lower())
        answer = {
            "label": None if unknown else scores[0].label,
            "unknown": unknown,
            "open_set_score": round(open_score, 6),
        }
        if unknown:
            answer["reason"] = (
                f"not one of the {self.classifier.num_classes} known models: "
                f"{open_set.reason(open_score)}"
            )
        return answer


def elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
