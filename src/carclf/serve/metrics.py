"""Prometheus metrics, written by hand in the text exposition format (version 0.0.4).

A dozen counters and histograms do not justify a dependency. Labels are bounded: ``endpoint`` is
the route template (``unmatched`` for unknown paths, so a scanner cannot blow up the series
count), ``error`` is one of the service's fixed error codes.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    escaped = (
        (k, str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
        for k, v in labels
    )
    return "{" + ",".join(f'{k}="{v}"' for k, v in escaped) + "}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1


class Metrics:
    """Thread-safe counters and histograms keyed by (name, labels)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}
        self._counters: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self._histograms: dict[str, dict[tuple, Histogram]] = defaultdict(dict)
        self._buckets: dict[str, tuple[float, ...]] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        self.started = time.time()
        self.counter("carclf_requests_total", "HTTP requests by endpoint, method and status.")
        self.counter("carclf_errors_total", "Error responses by endpoint and error code.")
        self.counter("carclf_images_total", "Images predicted (ok) or refused (error).")
        self.histogram(
            "carclf_request_duration_seconds", "Request latency by endpoint.", LATENCY_BUCKETS
        )
        self.histogram("carclf_batch_size", "Images per model call.", BATCH_BUCKETS)
        self.histogram(
            "carclf_model_seconds", "Duration of one model call (a batch).", LATENCY_BUCKETS
        )

    def counter(self, name: str, help_text: str) -> None:
        self._help[name] = ("counter", help_text)

    def histogram(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self._help[name] = ("histogram", help_text)
        self._buckets[name] = buckets

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._help[name] = ("gauge", help_text)
        self._gauges[name] = read

    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._counters[name][key] += value

    def observe(self, name: str, value: float, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            hist = self._histograms[name].get(key)
            if hist is None:
                hist = self._histograms[name][key] = Histogram(self._buckets[name])
            hist.observe(value)

    def value(self, name: str, **labels) -> float:
        """A counter's value (for tests and the page)."""
        with self._lock:
            return self._counters[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, (kind, help_text) in self._help.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                if kind == "counter":
                    for key, v in sorted(self._counters[name].items()):
                        lines.append(f"{name}{_labels(key)} {_number(v)}")
                elif kind == "gauge":
                    lines.append(f"{name} {_number(self._gauges[name]())}")
                else:
                    for key, h in sorted(self._histograms[name].items()):
                        for bound, c in zip(h.buckets, h.counts, strict=True):
                            le = (*key, ("le", _number(bound)))
                            lines.append(f"{name}_bucket{_labels(le)} {c}")
                        lines.append(f"{name}_bucket{_labels((*key, ('le', '+Inf')))} {h.count}")
                        lines.append(f"{name}_sum{_labels(key)} {_number(h.sum)}")
                        lines.append(f"{name}_count{_labels(key)} {h.count}")
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Pure ASGI middleware: count and time every HTTP request, errors labelled by code."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status, code = 500, "internal_error"

        async def send_wrapper(message):
            nonlocal status, code
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = dict(message.get("headers") or [])
                code = headers.get(b"x-error-code", b"").decode() or None
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            endpoint = _endpoint(scope)
            m = self.metrics
            m.inc("carclf_requests_total", endpoint=endpoint, method=scope["method"], status=status)
            m.observe(
                "carclf_request_duration_seconds", time.perf_counter() - start, endpoint=endpoint
            )
            if status >= 400:
                m.inc("carclf_errors_total", endpoint=endpoint, error=code or f"http_{status}")


def _endpoint(scope) -> str:
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    if scope.get("path", "").startswith("/static/"):
        return "/static"
    return "unmatched"
