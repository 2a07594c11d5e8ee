"""Robust image decoding.

Listing photos come in every shape: rotated by EXIF, CMYK from print pipelines, PNG screenshots with
alpha, 16-bit scans, palette GIFs, truncated uploads. Everything here ends as an HxWx3 uint8 RGB
array or an :class:`ImageDecodeError` that names the file, so a caller can report and skip it.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from carclf.errors import ImageDecodeError

# Decompression-bomb guard: 64 MP is far above any photo we train on (a 20000x20000 PNG is 400 MP).
MAX_PIXELS = 64_000_000
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_image_name(name: str | os.PathLike) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB, compositing transparency on white (not black: car photos)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        scale = 255.0 / (65535.0 if hi > 255 else max(hi, 1.0))
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo if hi > lo else 1.0) * 255.0
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(source, max_pixels: int = MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Open and fully decode ``source`` (path, bytes or file object) as an upright RGB PIL image.

    Args:
        source: a path, raw bytes, or a binary file object.
        max_pixels: refuse images larger than this (decompression bombs) before decoding pixels.
        draft_size: if given, let the JPEG decoder downscale by a power of two while staying at
            least this large on the short side; decoding a 640x480 photo for a 224 px model is then
            about twice as fast.
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<bytes>"
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageDecodeError(name, "empty file (0 bytes)")
            fp = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)):
            if os.path.getsize(source) == 0:
                raise ImageDecodeError(name, "empty file (0 bytes)")
            fp = source
        else:
            fp = source
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageDecodeError(
                    name, f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}"
                )
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)  # animated GIF/WebP: first frame only
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()  # force full decode: truncated files fail here, not mid-epoch
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(name, "file not found") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(name, "not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(name, f"decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(name, f"cannot decode: {e}") from None


def load_rgb(source, max_pixels: int = MAX_PIXELS, draft_size: int | None = None) -> np.ndarray:
    """Decode ``source`` to an HxWx3 uint8 RGB array (see :func:`open_image`)."""
    return np.asarray(open_image(source, max_pixels=max_pixels, draft_size=draft_size))
