"""Reading uploads safely: bounded bodies, formats sniffed from bytes, sizes read from headers.

The declared content type is not trusted: the format is read from the file's first bytes, and the
dimensions from its header (PIL reads only the header on ``open``), so a 20000x20000 PNG of a
few kB is refused before a single pixel is decoded. Only JPEG, PNG, WebP and BMP are accepted:
the formats cameras and browsers produce for photos. GIF (animated, palette), TIFF and HEIC are
refused with a message that names the format.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from carclf.serve.errors import ApiError

ACCEPTED = ("JPEG", "PNG", "WEBP", "BMP")
ACCEPTED_TEXT = "JPEG, PNG, WebP or BMP"
# Bytes a multipart envelope (boundaries, part headers) may add around one file.
MULTIPART_SLACK = 64 * 1024
# How much of an over-limit body is still read (and discarded) so the client sees the 413
# instead of a reset connection; beyond this the connection is simply closed after the reply.
DRAIN_FACTOR = 4


@dataclass
class ImageInfo:
    format: str
    width: int
    height: int


def sniff_format(data: bytes) -> str | None:
    """The image format named by the first bytes of ``data``, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM":
        return "BMP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
        return "HEIC/AVIF"
    if data[:4] == b"%PDF":
        return "PDF"
    return None


def _describe(data: bytes) -> str:
    head = data[:16]
    try:
        text = head.decode("utf-8")
        if text.isprintable():
            return f"it looks like text ({text[:16]!r}...)"
    except UnicodeDecodeError:
        pass
    return f"it starts with bytes {head[:8].hex(' ')}"


def inspect_image(data: bytes, max_pixels: int) -> ImageInfo:
    """Format and size of an uploaded image, from its header only.

    Raises:
        ApiError: 400 empty, 415 not an accepted format, 413 too many pixels, 422 bad header.
    """
    if not data:
        raise ApiError(400, "empty_body", f"the upload is empty (0 bytes); send a {ACCEPTED_TEXT}")
    fmt = sniff_format(data)
    if fmt is None:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"not a {ACCEPTED_TEXT} image: {_describe(data)}",
        )
    if fmt not in ACCEPTED:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"{fmt} images are not accepted; send a {ACCEPTED_TEXT} image",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check below
            with Image.open(io.BytesIO(data), formats=list(ACCEPTED)) as img:
                width, height = img.size
    except Image.DecompressionBombError as e:
        # PIL refuses far-too-large images in open() already; its message has the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise ApiError(
            413,
            "too_many_pixels",
            f"image has {size}, over the limit of {max_pixels:,}; downscale it first",
        ) from None
    except Exception as e:  # PIL raises many types for a broken header
        raise ApiError(
            422, "undecodable_image", f"cannot read the {fmt} header ({type(e).__name__}: {e})"
        ) from None
    if width * height > max_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}; downscale it first",
        )
    if width < 1 or height < 1:
        raise ApiError(422, "undecodable_image", f"image has no pixels ({width}x{height})")
    return ImageInfo(fmt, width, height)


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body in chunks; 413 once it exceeds ``limit`` bytes.

    An over-limit body is still read (and dropped) up to ``DRAIN_FACTOR`` times the limit, so
    the client, still sending, gets to read the 413 instead of a reset connection.
    """
    declared = request.headers.get("content-length")
    chunks = request.stream()
    if declared is not None and declared.isdigit() and int(declared) > limit:
        if int(declared) <= DRAIN_FACTOR * limit:
            await _drain(chunks, DRAIN_FACTOR * limit)
        raise ApiError(
            413, "payload_too_large", f"upload of {int(declared):,} bytes, limit {limit:,}"
        )
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            await _drain(chunks, DRAIN_FACTOR * limit - total)
            raise ApiError(413, "payload_too_large", f"upload over the limit of {limit:,} bytes")
        yield chunk


async def _drain(chunks: AsyncIterator[bytes], at_most: int) -> None:
    dropped = 0
    async for chunk in chunks:
        dropped += len(chunk)
        if dropped > at_most:
            return


async def read_body(request: Request, limit: int) -> bytes:
    return b"".join([chunk async for chunk in _limited(request, limit)])


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def read_files(
    request: Request, limit: int, fields: tuple[str, ...], max_files: int
) -> list[tuple[str, bytes]]:
    """``(filename, bytes)`` of the files in multipart fields named ``fields``.

    Raises:
        ApiError: 400 malformed or no such field, 413 too large or too many files.
    """
    parser = MultiPartParser(
        request.headers, _limited(request, limit), max_files=max_files + 8, max_fields=64
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if e.message.startswith("Too many files"):  # the parser stops counting at its own cap
            raise ApiError(
                413,
                "too_many_files",
                f"more than {max_files} files in one request, limit {max_files}",
            ) from None
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {e.message}") from None
    try:
        if not form.multi_items():
            raise ApiError(
                400,
                "bad_multipart",
                "the multipart body has no complete part (truncated, or a wrong boundary?)",
            )
        wanted = [(k, v) for k, v in form.multi_items() if k in fields]
        if not wanted:
            got = sorted({k for k, _ in form.multi_items()}) or "none"
            raise ApiError(
                400,
                "missing_file",
                f"no multipart field named {' or '.join(map(repr, fields))} (fields sent: {got})",
            )
        if len(wanted) > max_files:
            raise ApiError(
                413, "too_many_files", f"{len(wanted)} files in one request, limit {max_files}"
            )
        files = []
        for key, value in wanted:
            if not isinstance(value, UploadFile):
                raise ApiError(
                    400,
                    "missing_file",
                    f"multipart field {key!r} is a text value, not a file upload",
                )
            files.append((value.filename or key, await value.read()))
        return files
    finally:
        await form.close()
