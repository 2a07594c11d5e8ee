"""Shared helpers for test_export, test_serve*, test_browser: a tiny bundle, photos, bad inputs,
and a real server process. No tests here; other modules import these.

The bundle is built once per session (module-level cache): an untrained head on Lite0 at 96 px is
enough for plumbing tests, and its outputs are deterministic.
"""

from __future__ import annotations

import functools
import io
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import torch
from PIL import Image

from carclf.data.classmaps import SFDL_CLASSES
from carclf.export.pipeline import export_model
from carclf.models import build_net
from carclf.models.bundle import BundleMeta, save_bundle

# as tests/conftest.py: ../shared beside the repo, or CARCLF_SHARED
SHARED = Path(os.environ.get("CARCLF_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SHARED = SHARED / "data"
PHOTOS = SHARED / "sfdl-photos" / "train"
IMAGE_SIZE = 96

_cache: dict[str, object] = {}


def photo_paths() -> list[Path]:
    paths = sorted(PHOTOS.glob("*/*.jpg"))
    assert len(paths) >= 10, f"expected the sfdl photos in {PHOTOS}"
    return paths


def tiny_meta() -> BundleMeta:
    return BundleMeta(
        backbone="tf_efficientnet_lite0",
        class_names=[en for en, _ in SFDL_CLASSES],
        class_names_local=[ru for _, ru in SFDL_CLASSES],
        image_size=IMAGE_SIZE,
        mean=[0.5, 0.5, 0.5],
        std=[0.5, 0.5, 0.5],
    )


def tiny_net():
    torch.manual_seed(0)
    return build_net("tf_efficientnet_lite0", len(SFDL_CLASSES), weights="offline").eval()


def tiny_bundle(tmp_path_factory, onnx: bool = True) -> Path:
    """A 10-class Lite0 bundle at 96 px, with model.onnx (and model.int8.onnx) when ``onnx``."""
    key = f"onnx={onnx}"
    if key not in _cache:
        folder = tmp_path_factory.mktemp("bundles") / "tiny-sfdl"
        save_bundle(tiny_net(), tiny_meta(), folder)
        if onnx:
            _cache["report"] = export_model(folder, int8=True, images=[PHOTOS], num_images=16)
        _cache[key] = folder
    return _cache[key]


def tiny_export_report(tmp_path_factory):
    """The ExportReport of the session bundle's export (16 real photos, fp32 and int8)."""
    tiny_bundle(tmp_path_factory)
    return _cache["report"]


# -- inputs --------------------------------------------------------------------------------------
def image_bytes(fmt: str, size=(64, 48), frames: int = 1, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    images = [Image.new(mode, size, (40 * i % 255, 90, 160)) for i in range(frames)]
    kwargs = {"save_all": True, "append_images": images[1:]} if frames > 1 else {}
    images[0].save(buf, fmt, **kwargs)
    return buf.getvalue()


@functools.cache
def bomb_png(side: int = 20000) -> bytes:
    """A 20000x20000 PNG of a few kB: decoding it would need 400 MP (1.2 GB as RGB)."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def bad_inputs(photo: bytes) -> dict[str, tuple[dict, int, str]]:
    """name -> (httpx request kwargs for POST /predict, expected status, expected error code)."""
    jpeg = {"content-type": "image/jpeg"}
    return {
        "empty body": ({"content": b""}, 400, "empty_body"),
        "random bytes": ({"content": os.urandom(4096)}, 415, "unsupported_media_type"),
        "truncated jpeg": (
            {"content": photo[: len(photo) // 2], "headers": jpeg},
            422,
            "undecodable_image",
        ),
        "text as image/jpeg": (
            {"content": b"this is not a photo", "headers": jpeg},
            415,
            "unsupported_media_type",
        ),
        "20000x20000 png": ({"content": bomb_png()}, 413, "too_many_pixels"),
        "animated gif": (
            {"files": {"file": ("a.gif", image_bytes("GIF", frames=3), "image/gif")}},
            415,
            "unsupported_media_type",
        ),
        "tiff": ({"content": image_bytes("TIFF")}, 415, "unsupported_media_type"),
        "huge upload": (
            {"content": b"\xff\xd8\xff" + b"\0" * (11 * 2**20)},
            413,
            "payload_too_large",
        ),
        "wrong field name": (
            {"files": {"image": ("p.jpg", photo, "image/jpeg")}},
            400,
            "missing_file",
        ),
        "text field instead of file": (
            {"data": {"file": "hello"}, "files": {"x": ("x", b"1")}},
            400,
            "missing_file",
        ),
        "malformed multipart": (
            {
                "content": b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
                "headers": {"content-type": "multipart/form-data; boundary=xyz"},
            },
            400,
            "bad_multipart",
        ),
        "header only jpeg": (
            {"content": b"\xff\xd8\xff\xe0" + b"\0" * 20},
            422,
            "undecodable_image",
        ),
    }


# -- a real server -------------------------------------------------------------------------------
class ServerProcess:
    """``python -m carclf.serve MODEL --port 0`` in a subprocess; ``url`` once it is ready."""

    def __init__(self, model: Path, *args: str, timeout: float = 90.0, threads: str | None = "1"):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if threads is not None:  # one ONNX Runtime thread: tests share the CPU with each other
            env["CARCLF_ORT_THREADS"] = threads
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "carclf.serve", str(model), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._found = threading.Event()
        self.url: str | None = None
        threading.Thread(target=self._read, daemon=True).start()
        if not self._found.wait(timeout) or self.url is None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.lines[-30:]))
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server never became ready:\n" + "".join(self.lines[-30:]))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            found = re.search(r"serving .*? on (http://[\d.]+:\d+)", line)
            if found:
                self.url = found.group(1)
                self._found.set()
        self._found.set()  # process ended: stop waiting

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
