"""The web service: answers on real photos, every bad input refused with a clear JSON error,
limits (size, pixels, queue, time), micro-batching, metrics, readiness, and a real server."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_serve_helpers import (
    ServerProcess,
    bad_inputs,
    bomb_png,
    image_bytes,
    photo_paths,
    tiny_bundle,
)

from carclf.inference import Classifier, OnnxBackend
from carclf.serve import create_app


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


@pytest.fixture(scope="session")
def classifier(bundle):
    clf = Classifier.load(bundle)
    assert isinstance(clf.backend, OnnxBackend)
    return clf


@pytest.fixture(scope="module")
def client(classifier):
    with TestClient(create_app(classifier)) as c:
        yield c


@pytest.fixture(scope="session")
def photos():
    return [p.read_bytes() for p in photo_paths()[:8]]


def assert_error(r: httpx.Response, status: int, code: str):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and len(body["detail"]) > 10
    assert "Traceback" not in r.text


# -- answers -------------------------------------------------------------------------------------
def test_predict_real_photos_match_the_classifier(client, classifier):
    paths = photo_paths()[:5]
    expected = classifier.predict(paths, top_k=5)
    for path, want in zip(paths, expected, strict=True):
        r = client.post("/predict", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        body = r.json()
        top = body["top"]
        assert [c["rank"] for c in top] == [1, 2, 3, 4, 5]
        assert [c["index"] for c in top] == [s.index for s in want.top]
        np.testing.assert_allclose(
            [c["probability"] for c in top], [s.probability for s in want.top], atol=1e-5
        )
        probs = [c["probability"] for c in top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
        assert top[0]["name_local"] == classifier.meta.class_names_local[top[0]["index"]]
        assert body["model"]["backend"] == "onnx" and len(body["model"]["version"]) == 12
        assert body["image"]["format"] == "JPEG" and body["latency_ms"] > 0


def test_raw_body_equals_multipart(client, photos):
    a = client.post("/predict", files={"file": ("a.jpg", photos[0], "image/jpeg")}).json()
    b = client.post("/predict", content=photos[0], headers={"content-type": "image/jpeg"}).json()
    # curl --data-binary sends application/x-www-form-urlencoded by default: still raw bytes
    c = client.post("/predict", content=photos[0], headers={"content-type": "application/x-www-form-urlencoded"}).json()  # fmt: skip
    assert a["top"] == b["top"] == c["top"]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP"])
def test_other_accepted_formats(client, fmt):
    r = client.post("/predict?top_k=3", content=image_bytes(fmt))
    assert r.status_code == 200, r.text
    assert r.json()["image"] == {"format": fmt, "width": 64, "height": 48}
    assert len(r.json()["top"]) == 3


def test_batch_keeps_order_and_reports_bad_items(client, photos):
    files = [("files", (f"{i}.jpg", p, "image/jpeg")) for i, p in enumerate(photos[:3])]
    files.insert(1, ("files", ("anim.gif", image_bytes("GIF", frames=2), "image/gif")))
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == ["0.jpg", "anim.gif", "1.jpg", "2.jpg"]
    assert results[1]["error"] == "unsupported_media_type" and "GIF" in results[1]["detail"]
    for item, photo in zip([results[0], results[2], results[3]], photos[:3], strict=True):
        single = client.post("/predict", content=photo).json()
        assert item["top"] == single["top"]


def test_batch_limits(classifier, photos):
    with TestClient(create_app(classifier, max_files=2)) as c:
        files = [("files", (f"{i}.jpg", photos[0], "image/jpeg")) for i in range(3)]
        assert_error(c.post("/predict/batch", files=files), 413, "too_many_files")
        assert_error(c.post("/predict/batch", content=photos[0]), 415, "unsupported_media_type")
        wrong = {"file_list": ("a.jpg", photos[0], "image/jpeg")}
        assert_error(c.post("/predict/batch", files=wrong), 400, "missing_file")


def test_too_many_files_is_413_whatever_the_count(classifier, photos):
    # the multipart parser stops at its own cap (max_files + 8): past it, still 413, not 400
    with TestClient(create_app(classifier, max_files=2)) as c:
        for n in (3, 10, 11, 40):
            files = [("files", (f"{i}.jpg", photos[0], "image/jpeg")) for i in range(n)]
            r = c.post("/predict/batch", files=files)
            assert_error(r, 413, "too_many_files")
            assert "limit 2" in r.json()["detail"], n


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(bad_inputs(b"\xff\xd8\xff")))
def test_bad_input_gets_clear_4xx(client, photos, case):
    kwargs, status, code = bad_inputs(photos[0])[case]
    assert_error(client.post("/predict", **kwargs), status, code)
    assert client.get("/health").status_code == 200
    assert client.post("/predict", content=photos[1]).status_code == 200


def test_error_details_name_the_problem(client, photos):
    bomb = client.post("/predict", content=bomb_png()).json()["detail"]
    assert "400,000,000 pixels" in bomb and "limit" in bomb
    gif = client.post("/predict", content=image_bytes("GIF", frames=3)).json()["detail"]
    assert "GIF" in gif and "JPEG, PNG, WebP or BMP" in gif
    text = client.post("/predict", content=b"hello there", headers={"content-type": "image/png"})
    assert "text" in text.json()["detail"]


def test_pixel_limit_is_checked_before_decoding(classifier, monkeypatch):
    import carclf.serve.engine as engine

    def never(*a, **k):
        raise AssertionError("decoded an image that the header check should have refused")

    monkeypatch.setattr(engine, "load_rgb", never)
    with TestClient(create_app(classifier, max_pixels=1000)) as c:
        assert_error(c.post("/predict", content=image_bytes("PNG", (100, 100))), 413, "too_many_pixels")  # fmt: skip
        assert_error(c.post("/predict", content=bomb_png()), 413, "too_many_pixels")


def test_upload_limit_is_configurable(classifier, photos):
    with TestClient(create_app(classifier, max_upload_bytes=5000)) as c:
        assert_error(c.post("/predict", content=photos[0]), 413, "payload_too_large")
        files = {"file": ("a.jpg", photos[0], "image/jpeg")}
        assert_error(c.post("/predict", files=files), 413, "payload_too_large")


def test_chunked_upload_without_length_is_cut_off(classifier):
    def endless():
        for _ in range(100):
            yield b"\xff" * 65536

    with TestClient(create_app(classifier, max_upload_bytes=1_000_000)) as c:
        r = c.post("/predict", content=endless())
        assert r.request.headers["transfer-encoding"] == "chunked"
        assert_error(r, 413, "payload_too_large")


def test_unknown_limit_is_named(classifier):
    with pytest.raises(TypeError, match="max_uplod_bytes"):
        create_app(classifier, max_uplod_bytes=10)
    with pytest.raises(ValueError, match="max_batch"):
        create_app(classifier, max_batch=0)


def test_query_and_routing_errors_are_json(client, photos):
    assert_error(client.post("/predict?top_k=0", content=photos[0]), 422, "invalid_parameter")
    assert_error(client.post("/predict?top_k=abc", content=photos[0]), 422, "invalid_parameter")
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/predict"), 405, "method_not_allowed")
    r = client.post("/predict?top_k=50", content=photos[0])  # more than there are classes
    assert r.status_code == 200 and len(r.json()["top"]) == 10


# -- load: batching, queue, timeout ----------------------------------------------------------------
class SlowBackend:
    """Wraps a backend: sleeps per call and records batch sizes."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay, self.sizes = inner, delay, []
        self.name = "slow"

    def __call__(self, batch):
        self.sizes.append(len(batch))
        time.sleep(self.delay)
        return self.inner(batch)


def slow_classifier(classifier, delay):
    return Classifier(None, classifier.meta, "cpu", backend=SlowBackend(classifier.backend, delay))


async def _post_many(app, bodies, path="/predict"):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        return await asyncio.gather(*(c.post(path, content=b) for b in bodies))


def test_concurrent_requests_share_model_calls_and_keep_their_answers(classifier, photos):
    slow = slow_classifier(classifier, 0.05)
    app = create_app(slow, max_batch=8, max_wait_ms=20)
    responses = asyncio.run(_post_many(app, photos))
    assert all(r.status_code == 200 for r in responses)
    assert max(slow.backend.sizes) > 1, slow.backend.sizes  # requests were batched
    expected = classifier.predict([p for p in photo_paths()[:8]], top_k=5)
    for r, want in zip(responses, expected, strict=True):
        assert [c["index"] for c in r.json()["top"]] == [s.index for s in want.top]


def test_full_queue_gets_503_with_retry_after(classifier, photos):
    app = create_app(slow_classifier(classifier, 0.3), max_pending=2, max_batch=1)
    responses = asyncio.run(_post_many(app, photos[:6]))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and 503 in codes, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert_error(busy, 503, "overloaded")
    assert busy.headers["retry-after"] == "1"


def test_slow_request_gets_504_and_service_recovers(classifier, photos):
    slow = slow_classifier(classifier, 0.5)
    with TestClient(create_app(slow, request_timeout_s=0.2)) as c:
        assert_error(c.post("/predict", content=photos[0]), 504, "timeout")
        slow.backend.delay = 0.0
        time.sleep(0.5)
        assert c.post("/predict", content=photos[0]).status_code == 200


# -- operations ----------------------------------------------------------------------------------
def test_metrics_prometheus_format(classifier, photos):
    with TestClient(create_app(classifier)) as c:
        for p in photos[:3]:
            c.post("/predict", content=p)
        c.post("/predict", content=b"")
        c.get("/nope/x")
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'carclf_requests_total{endpoint="/predict",method="POST",status="200"} 3' in text
    assert 'carclf_errors_total{endpoint="/predict",error="empty_body"} 1' in text
    assert 'carclf_errors_total{endpoint="unmatched",error="not_found"} 1' in text
    assert 'carclf_request_duration_seconds_count{endpoint="/predict"} 4' in text
    assert 'carclf_request_duration_seconds_bucket{endpoint="/predict",le="+Inf"} 4' in text
    assert "carclf_model_ready 1" in text and 'carclf_images_total{result="ok"} 3' in text
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.e+-]+$')
    for line in text.strip().splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line


def test_ready_after_background_load(bundle):
    app = create_app(bundle, name="tiny")
    with TestClient(app) as c:
        assert c.get("/health").json()["status"] == "ok"
        for _ in range(200):
            r = c.get("/ready")
            if r.status_code == 200:
                break
            assert_error(r, 503, "model_loading")
            time.sleep(0.05)
        body = r.json()
        assert body["ready"] and body["model"]["name"] == "tiny"
        assert body["class_names"][0] == "Priora (Приора)"
        assert body["limits"]["accepted_formats"] == ["JPEG", "PNG", "WebP", "BMP"]


def test_model_that_fails_to_load_is_reported(tmp_path, bundle):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "model.onnx").write_bytes(b"garbage")
    with TestClient(create_app(broken)) as c:
        for _ in range(200):
            r = c.get("/ready")
            if r.json()["error"] == "model_failed":
                break
            time.sleep(0.05)
        assert_error(r, 503, "model_failed")
        assert "model.onnx" in r.json()["detail"]
        assert c.get("/health").status_code == 200
        assert_error(c.post("/predict", content=b"x"), 503, "model_failed")


def test_int8_backend(bundle, tmp_path, photos):
    import shutil

    from carclf.errors import ModelError
    from carclf.inference.loading import load_classifier

    clf = load_classifier(bundle, "int8")
    assert clf.backend.path.name == "model.int8.onnx"
    with TestClient(create_app(clf)) as c:
        r = c.post("/predict", content=photos[0])
        assert r.status_code == 200 and r.json()["model"]["backend"] == "onnx-int8"
    plain = tmp_path / "plain"
    shutil.copytree(bundle, plain)
    (plain / "model.int8.onnx").unlink()
    with pytest.raises(ModelError, match="--int8"):
        load_classifier(plain, "int8")


def test_wrong_model_path_fails_at_once(tmp_path):
    from carclf.errors import ModelError

    with pytest.raises(ModelError, match="no such model"):
        create_app(tmp_path / "missing")


def test_docs_openapi_and_page(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "image/jpeg" in body
    assert {"/predict/batch", "/health", "/ready", "/metrics"} <= set(spec["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(ref.startswith("/") for ref in refs), refs  # no CDN, nothing external
    for ref in refs:
        assert client.get(ref).status_code == 200, ref
    js = client.get("/static/app.js").text
    assert "http://" not in js and "https://" not in js and "innerHTML" not in js


# -- a real server -------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_server_survives_bad_input_and_binds_loopback(bundle, photos):
    server = ServerProcess(bundle)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for name, (kwargs, status, code) in bad_inputs(photos[0]).items():
                r = c.post("/predict", **kwargs)
                assert (r.status_code, r.json()["error"]) == (status, code), name
            assert c.get("/health").status_code == 200
            ok = c.post("/predict", files={"file": ("a.jpg", photos[0], "image/jpeg")})
            assert ok.status_code == 200 and ok.json()["top"][0]["name"]
        assert server.alive
    finally:
        server.stop()


def test_cli_bad_model_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "carclf.serve", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2  # bad input, as in every carclf command (1 before issue 21)
    assert r.stderr.startswith("error:") and "Traceback" not in r.stderr


# -- explanations (POST /explain) ------------------------------------------------------------------
def test_explain_returns_the_heat_map_of_the_answer(client, photos):
    import base64
    import io

    from PIL import Image

    assert client.get("/ready").json()["explain"] is True  # ONNX model, PyTorch weights beside it
    r = client.post("/explain", files={"file": ("a.jpg", photos[0], "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    top1 = client.post("/predict", content=photos[0]).json()["top"][0]
    assert body["explained"]["index"] == top1["index"] and body["explained"]["rank"] == 1
    assert body["explained"]["probability"] == pytest.approx(top1["probability"], abs=1e-3)
    assert body["method"] == "grad-cam" and body["image"]["format"] == "JPEG"
    head, data = body["overlay"].split(",", 1)
    assert head == "data:image/png;base64"
    png = Image.open(io.BytesIO(base64.b64decode(data)))
    assert png.format == "PNG" and png.size == (body["overlay_width"], body["overlay_height"])
    assert max(png.size) <= 448
    raw = client.post("/explain?format=png&class_index=3", content=photos[0])
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
    assert raw.headers["x-class-index"] == "3" and raw.content.startswith(b"\x89PNG")
    bad = client.post("/explain?class_index=10", content=photos[0])
    assert_error(bad, 422, "invalid_parameter")
    assert "/explain" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("case", list(bad_inputs(b"\xff\xd8\xff")))
def test_explain_refuses_bad_input_as_predict_does(client, photos, case):
    kwargs, status, code = bad_inputs(photos[0])[case]
    assert_error(client.post("/explain", **kwargs), status, code)


def test_onnx_only_service_answers_409(bundle, tmp_path, photos):
    import shutil

    from carclf.models.bundle import read_meta

    only = tmp_path / "onnx-only"
    shutil.copytree(bundle, only)
    (only / "model.safetensors").unlink()  # model.onnx and meta.json only
    clf = Classifier(None, read_meta(only), "cpu", backend=OnnxBackend(only / "model.onnx"))
    with TestClient(create_app(clf)) as c:
        assert c.get("/ready").json()["explain"] is False
        r = c.post("/explain", content=photos[0])
        assert_error(r, 409, "explain_unavailable")
        assert "PyTorch weights" in r.json()["detail"]
        assert c.post("/predict", content=photos[0]).status_code == 200  # predictions still work
