"""The service's model slot: the engine once the model is loaded, or why it is not (yet)."""

from __future__ import annotations

import logging
import os
import time

from carclf.inference.loading import load_classifier
from carclf.serve.engine import Engine
from carclf.serve.errors import ApiError
from carclf.serve.limits import Limits
from carclf.serve.metrics import Metrics

log = logging.getLogger("carclf.serve")


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
            classifier = load_classifier(model, backend, device="cpu")
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
