"""Fuzz the running service from its own OpenAPI schema (schemathesis): no request, however odd,
may produce a 5xx (other than the documented 503/504), a non-JSON error, or an undocumented
response shape. Bounded: a few dozen examples per operation, well under a minute."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from test_serve_helpers import ServerProcess, tiny_bundle, tiny_meta

from carclf.inference import Classifier
from carclf.serve import create_app


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(tiny_bundle(tmp_path_factory))
    yield proc
    proc.stop()


def _service_schema() -> dict:
    """The service's OpenAPI document; it does not depend on the model, so none is loaded here
    (schemathesis needs the schema when the module is collected, before fixtures exist)."""

    def unused_backend(batch):
        raise AssertionError("the schema is generated without running a model")

    return create_app(Classifier(None, tiny_meta(), "cpu", backend=unused_backend)).openapi()


@schemathesis.serializer("image/bmp")
def _raw_bytes(ctx, value) -> bytes:
    """Send generated binary bodies as they are (schemathesis has no BMP serializer built in)."""
    return value if isinstance(value, bytes) else str(value).encode()


schema = schemathesis.openapi.from_dict(_service_schema())


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case, server):
    response = case.call(base_url=server.url, timeout=30)
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "detail"}, body
    assert server.alive


def test_fuzzing_reached_the_server(server):
    """The fuzz run above really sent requests (a schema with no operations would pass too)."""
    import re

    import httpx

    text = httpx.get(f"{server.url}/metrics").text
    counts = re.findall(r'carclf_requests_total\{endpoint="/predict[^"]*",[^}]*\} (\d+)', text)
    assert sum(map(int, counts)) >= 40, text[:2000]
    assert 'endpoint="/predict",method="POST",status="200"' in text
    assert re.search(r'endpoint="/predict",method="POST",status="4\d\d"', text)
