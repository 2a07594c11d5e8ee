"""``create_app(model, **limits)``: the FastAPI service and its web page.

Endpoints: ``POST /predict`` (one image: multipart field ``file``, or the raw bytes as the body),
``POST /predict/batch`` (multipart fields ``files``), ``GET /health`` (the process answers),
``GET /ready`` (the model is loaded), ``GET /metrics`` (Prometheus), ``/docs`` (OpenAPI), and
the page at ``/``. Given a path, the model loads in a background thread after start-up, so
``/health`` answers at once and ``/ready`` tells a load balancer when to send traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from importlib import resources

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from carclf import __version__
from carclf.evaluate.classifier import Classifier, find_model
from carclf.serve.engine import Engine, elapsed_ms
from carclf.serve.errors import ApiError, install_error_handlers
from carclf.serve.limits import Limits
from carclf.serve.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from carclf.serve.schemas import BatchPrediction, ErrorBody, Health, Prediction, Ready
from carclf.serve.uploads import (
    ACCEPTED_TEXT,
    MULTIPART_SLACK,
    is_multipart,
    read_body,
    read_files,
)

log = logging.getLogger("carclf.serve")

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "application/octet-stream")
BINARY = {"type": "string", "format": "binary"}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": f"one {ACCEPTED_TEXT} image: multipart field `file`, or the raw bytes",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": BINARY},
                    "required": ["file"],
                }
            },
            **{t: {"schema": BINARY} for t in IMAGE_TYPES},
        },
    }
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": f"several {ACCEPTED_TEXT} images in multipart fields `files`",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": BINARY}},
                    "required": ["files"],
                }
            }
        },
    }
}
ERRORS = {
    code: {"model": ErrorBody, "description": what}
    for code, what in {
        400: "no image in the request (empty body, missing field, malformed multipart)",
        413: "upload, pixel count or file count over the limit",
        415: f"not a {ACCEPTED_TEXT} image",
        422: "image cannot be decoded, or a bad query parameter",
        503: "model not loaded yet, or overloaded (see Retry-After)",
        504: "request took longer than the time limit",
    }.items()
}
STATIC = resources.files("carclf.serve") / "static"


class ServiceState:
    """The engine once the model is loaded, or why it is not (yet)."""

    def __init__(self, limits: Limits, metrics: Metrics, name: str | None):
        self.limits = limits
        self.metrics = metrics
        self.name = name
        self.engine: Engine | None = None
        self.error: str | None = None
        self.started = time.time()

    def load(self, model: str | os.PathLike, backend: str) -> None:
        try:
            classifier = load_classifier(model, backend)
            engine = Engine(classifier, self.limits, self.metrics, self.name)
            engine.warm_up()
            self.engine = engine
            log.info("model %s (%s) ready", engine.info.name, engine.info.backend)
        except Exception as e:  # reported by /ready; the process stays up for /health
            log.exception("cannot load model %s", model)
            self.error = f"{type(e).__name__}: {e}"

    def ready_engine(self) -> Engine:
        if self.engine is not None:
            return self.engine
        if self.error is not None:
            raise ApiError(503, "model_failed", f"the model failed to load: {self.error}")
        raise ApiError(
            503, "model_loading", "the model is still loading; retry shortly", {"Retry-After": "1"}
        )


def load_classifier(model: str | os.PathLike, backend: str = "auto") -> Classifier:
    """A CPU Classifier; ``backend`` ``int8`` runs the bundle's model.int8.onnx."""
    if backend != "int8":
        return Classifier.load(model, device="cpu", backend=backend)
    from carclf.errors import ModelError
    from carclf.export.runtime import OnnxBackend
    from carclf.models.bundle import read_meta

    target = find_model(model)
    path = target / "model.int8.onnx"
    if not path.is_file():
        raise ModelError(
            f"{target}: no model.int8.onnx; run: python -m carclf.export {target} --int8"
        )
    return Classifier(None, read_meta(target), "cpu", backend=OnnxBackend(path))


def create_app(
    model: str | os.PathLike | Classifier,
    *,
    name: str | None = None,
    backend: str = "auto",
    **limits,
) -> FastAPI:
    """The service for ``model`` (a Classifier, or a bundle/run/checkpoint path).

    Args:
        name: model name shown in responses (default: the bundle folder).
        backend: for a path: ``auto``, ``onnx``, ``int8`` or ``torch`` (see ``load_classifier``).
        **limits: any field of :class:`Limits` (e.g. ``max_upload_bytes=5_000_000``).
    """
    state = ServiceState(Limits.from_kwargs(**limits), Metrics(), name)
    if isinstance(model, Classifier):
        state.engine = Engine(model, state.limits, state.metrics, name)
    else:
        find_model(model)  # a wrong path fails here, not in a background thread

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = None
        if state.engine is None:
            loader = threading.Thread(
                target=state.load, args=(model, backend), name="carclf-load", daemon=True
            )
            loader.start()
        else:
            state.engine.batcher.start()
        yield
        if loader is not None:
            await asyncio.to_thread(loader.join)
        if state.engine is not None:
            await state.engine.close()

    app = FastAPI(
        title="carclf",
        version=__version__,
        description="Which car model is in this photo? Upload a photo, get the top-k models.",
        lifespan=lifespan,
    )
    app.state.service = state
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    _gauges(state)
    _routes(app, state)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


def _gauges(state: ServiceState) -> None:
    m = state.metrics
    m.gauge("carclf_model_ready", "1 once the model is loaded.", lambda: float(bool(state.engine)))
    m.gauge(
        "carclf_requests_in_progress",
        "Prediction requests admitted and not yet answered.",
        lambda: state.engine.pending if state.engine else 0,
    )
    m.gauge(
        "carclf_queue_depth",
        "Images waiting for the model.",
        lambda: state.engine.batcher.depth if state.engine else 0,
    )


def _routes(app: FastAPI, state: ServiceState) -> None:
    limits = state.limits
    TopK = Query(5, ge=1, le=limits.max_top_k, description="how many classes to return")

    @contextlib.asynccontextmanager
    async def deadline():
        try:
            async with asyncio.timeout(limits.request_timeout_s):
                yield
        except TimeoutError:
            raise ApiError(
                504, "timeout", f"the request took over {limits.request_timeout_s:g} s"
            ) from None

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response((STATIC / "favicon.svg").read_bytes(), media_type="image/svg+xml")

    @app.get("/health", response_model=Health, summary="The process is up")
    async def health():
        return {"status": "ok", "uptime_s": round(time.time() - state.started, 1)}

    @app.get(
        "/ready",
        response_model=Ready,
        summary="The model is loaded and serving",
        responses={503: ERRORS[503]},
    )
    async def ready():
        engine = state.ready_engine()
        return {
            "ready": True,
            "model": engine.info,
            "class_names": engine.classifier.display_names(),
            "limits": {
                "accepted_formats": ["JPEG", "PNG", "WebP", "BMP"],
                "max_upload_bytes": limits.max_upload_bytes,
                "max_pixels": limits.max_pixels,
                "max_files": limits.max_files,
            },
        }

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        summary="Prometheus metrics",
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def metrics():
        return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.post(
        "/predict",
        response_model=Prediction,
        summary="Top-k car models for one photo",
        openapi_extra=PREDICT_BODY,
        responses={k: v for k, v in ERRORS.items()},
    )
    async def predict(request: Request, top_k: int = TopK):
        start = time.perf_counter()
        engine = state.ready_engine()
        with engine.admit():
            async with deadline():
                limit = limits.max_upload_bytes
                if is_multipart(request):
                    files = await read_files(request, limit + MULTIPART_SLACK, ("file",), 1)
                    data = files[0][1]
                else:
                    data = await read_body(request, limit)
                if len(data) > limit:
                    raise ApiError(
                        413, "payload_too_large", f"image of {len(data):,} bytes, limit {limit:,}"
                    )
                (result,) = await engine.predict([data], top_k)
        if isinstance(result, ApiError):
            raise result
        return {"model": engine.info, **result, "latency_ms": elapsed_ms(start)}

    @app.post(
        "/predict/batch",
        response_model=BatchPrediction,
        summary="Top-k car models for several photos",
        description="Each image is answered in `results`, in order; an image that cannot be "
        "used gets `error` and `detail` there instead of failing the whole request.",
        openapi_extra=BATCH_BODY,
        responses={k: v for k, v in ERRORS.items()},
    )
    async def predict_batch(request: Request, top_k: int = TopK):
        start = time.perf_counter()
        engine = state.ready_engine()
        if not is_multipart(request):
            raise ApiError(
                415,
                "unsupported_media_type",
                "send the images as multipart/form-data fields named 'files'",
            )
        with engine.admit():
            async with deadline():
                files = await read_files(
                    request, limits.max_batch_bytes, ("files", "file"), limits.max_files
                )
                too_big = {
                    i for i, (_, data) in enumerate(files) if len(data) > limits.max_upload_bytes
                }
                results = await engine.predict(
                    [b"" if i in too_big else data for i, (_, data) in enumerate(files)], top_k
                )
        items = []
        for i, ((filename, data), result) in enumerate(zip(files, results, strict=True)):
            if i in too_big:
                result = ApiError(
                    413,
                    "payload_too_large",
                    f"image of {len(data):,} bytes, limit {limits.max_upload_bytes:,}",
                )
            if isinstance(result, ApiError):
                items.append({"filename": filename, "error": result.code, "detail": result.detail})
            else:
                items.append({"filename": filename, **result})
        return {"model": engine.info, "results": items, "latency_ms": elapsed_ms(start)}
