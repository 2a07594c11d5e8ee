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
import os
import threading
import time
from importlib import resources

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from carclf import __version__
from carclf.inference import Classifier, find_model
from carclf.serve.engine import Engine, elapsed_ms
from carclf.serve.errors import ApiError, install_error_handlers
from carclf.serve.explain import ExplainSlot, explain_body
from carclf.serve.limits import Limits
from carclf.serve.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from carclf.serve.openapi import BATCH_BODY, ERRORS, PREDICT_BODY
from carclf.serve.schemas import BatchPrediction, ErrorBody, Explanation, Health, Prediction, Ready
from carclf.serve.state import ServiceState
from carclf.serve.uploads import MULTIPART_SLACK, is_multipart, read_body, read_files

STATIC = resources.files("carclf.serve") / "static"


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
    """Every route, in the order /docs lists them."""
    _page_routes(app)
    _status_routes(app, state)
    _predict_routes(app, state)
    _explain_route(app, state)


def _page_routes(app: FastAPI) -> None:
    """The web page (static files are mounted by ``create_app``)."""

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response((STATIC / "favicon.svg").read_bytes(), media_type="image/svg+xml")


def _ready_body(engine: Engine, limits: Limits) -> dict:
    open_set = engine.classifier.open_set
    return {
        "open_set": None
        if open_set is None
        else {"score": open_set.score, "keep": open_set.keep, "threshold": open_set.threshold},
        "ready": True,
        "model": engine.info,
        "class_names": engine.classifier.display_names(),
        "explain": ExplainSlot.available(engine.classifier),
        "limits": {
            "accepted_formats": ["JPEG", "PNG", "WebP", "BMP"],
            "max_upload_bytes": limits.max_upload_bytes,
            "max_pixels": limits.max_pixels,
            "max_files": limits.max_files,
        },
    }


def _status_routes(app: FastAPI, state: ServiceState) -> None:
    """/health (the process), /ready (the model), /metrics (Prometheus)."""

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
        return _ready_body(state.ready_engine(), state.limits)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        summary="Prometheus metrics",
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def metrics():
        return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)


@contextlib.asynccontextmanager
async def _deadline(limits: Limits):
    """A 504 when the request takes longer than ``limits.request_timeout_s``."""
    try:
        async with asyncio.timeout(limits.request_timeout_s):
            yield
    except TimeoutError:
        raise ApiError(
            504, "timeout", f"the request took over {limits.request_timeout_s:g} s"
        ) from None


def _too_big(size: int, limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"image of {size:,} bytes, limit {limit:,}")


async def _one_image(request: Request, limits: Limits) -> bytes:
    """The image of a /predict request: multipart field ``file``, or the raw body."""
    limit = limits.max_upload_bytes
    if is_multipart(request):
        files = await read_files(request, limit + MULTIPART_SLACK, ("file",), 1)
        data = files[0][1]
    else:
        data = await read_body(request, limit)
    if len(data) > limit:
        raise _too_big(len(data), limit)
    return data


def _batch_items(files: list[tuple[str, bytes]], results: list, limits: Limits) -> list[dict]:
    """One /predict/batch result per file, in order: its answer, or its error and detail."""
    items = []
    for (filename, data), result in zip(files, results, strict=True):
        if len(data) > limits.max_upload_bytes:
            result = _too_big(len(data), limits.max_upload_bytes)
        if isinstance(result, ApiError):
            items.append({"filename": filename, "error": result.code, "detail": result.detail})
        else:
            items.append({"filename": filename, "error": None, "detail": None, **result})
    return items


def _predict_routes(app: FastAPI, state: ServiceState) -> None:
    """POST /predict (one image) and /predict/batch (several)."""
    limits = state.limits
    TopK = Query(5, ge=1, le=limits.max_top_k, description="how many classes to return")

    @app.post(
        "/predict",
        response_model=Prediction,
        response_model_exclude_unset=True,  # no open-set keys for a model without open-set data
        summary="Top-k car models for one photo",
        openapi_extra=PREDICT_BODY,
        responses={k: v for k, v in ERRORS.items()},
    )
    async def predict(request: Request, top_k: int = TopK):
        start = time.perf_counter()
        engine = state.ready_engine()
        with engine.admit():
            async with _deadline(limits):
                data = await _one_image(request, limits)
                (result,) = await engine.predict([data], top_k)
        if isinstance(result, ApiError):
            raise result
        return {"model": engine.info, **result, "latency_ms": elapsed_ms(start)}

    @app.post(
        "/predict/batch",
        response_model=BatchPrediction,
        response_model_exclude_unset=True,
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
            async with _deadline(limits):
                files = await read_files(
                    request, limits.max_batch_bytes, ("files", "file"), limits.max_files
                )
                fit = [b"" if len(d) > limits.max_upload_bytes else d for _, d in files]
                results = await engine.predict(fit, top_k)
        items = _batch_items(files, results, limits)
        return {"model": engine.info, "results": items, "latency_ms": elapsed_ms(start)}


def _explain_route(app: FastAPI, state: ServiceState) -> None:
    """POST /explain: the Grad-CAM heat map of one photo (JSON with a data URL, or the PNG)."""
    limits, slot = state.limits, ExplainSlot()
    responses = {
        200: {"content": {"image/png": {}}, "description": "JSON, or the PNG (?format=png)"},
        **ERRORS,
        409: {"model": ErrorBody, "description": "the model has no PyTorch weights"},
    }

    @app.post(
        "/explain",
        response_model=Explanation,
        summary="Grad-CAM heat map: where in the photo the model saw its answer",
        description="The same upload as /predict (same limits and errors). JSON by default, "
        "the overlay as a `data:image/png;base64` URL; `?format=png` answers the PNG itself "
        "(headers `X-Class-Index`, `X-Probability`). 409 when the model has no PyTorch "
        "weights (an ONNX-only bundle).",
        openapi_extra=PREDICT_BODY,
        responses=dict(sorted(responses.items())),
    )
    async def explain(
        request: Request,
        class_index: int | None = Query(None, ge=0, description="class to explain (top-1)"),
        format: str = Query("json", pattern="^(json|png)$", description="json or png"),
    ):
        start = time.perf_counter()
        engine = state.ready_engine()
        clf = engine.classifier
        slot.check(clf)
        if class_index is not None and class_index >= clf.num_classes:
            raise ApiError(
                422,
                "invalid_parameter",
                f"class_index {class_index}: the model has classes 0..{clf.num_classes - 1}",
            )
        with engine.admit():
            async with _deadline(limits):
                data = await _one_image(request, limits)
                e, info = await slot.explain(clf, data, limits.max_pixels, class_index)
        if format == "png":
            headers = {"X-Class-Index": str(e.index), "X-Probability": f"{e.probability:.6f}"}
            return Response(e.png(), media_type="image/png", headers=headers)
        body = explain_body(clf, e, info)
        return {"model": engine.info, **body, "latency_ms": elapsed_ms(start)}
