"""Thumbnails for the HTML reports: draft-decoded JPEGs inlined as data URIs.

They decode images, so they live in the data layer; the pages that show them are built with
:mod:`carclf.html`.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

from carclf.data.images import open_image
from carclf.errors import ImageDecodeError
from carclf.html import jpeg_uri


def thumbnail_jpeg(path: str, size: int = 112, quality: int = 80) -> bytes | None:
    """A JPEG thumbnail whose longer side is ``size`` (draft-decoded), or None if unreadable."""
    try:
        img = open_image(path, draft_size=size)
    except ImageDecodeError:
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class Thumbnails:
    """Draft-decoded JPEG thumbnails as data URIs, made once per path, in a thread pool."""

    def __init__(self, size: int = 112, workers: int = 4):
        self.size, self.workers = size, workers
        self._uris: dict[str, str | None] = {}

    def want(self, paths) -> None:
        todo = [p for p in dict.fromkeys(paths) if p not in self._uris]
        with ThreadPoolExecutor(self.workers) as pool:
            for p, data in zip(todo, pool.map(self._one, todo), strict=True):
                self._uris[p] = jpeg_uri(data) if data else None

    def _one(self, path: str) -> bytes | None:
        return thumbnail_jpeg(path, self.size)

    def __getitem__(self, path: str) -> str | None:
        if path not in self._uris:
            self.want([path])
        return self._uris[path]
