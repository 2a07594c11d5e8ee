"""OpenAPI documentation of request bodies and error responses (what /docs shows).

The prediction routes read their bodies themselves (to bound sizes and accept raw bytes as well
as multipart), so FastAPI cannot infer these; they are declared here instead.
"""

from __future__ import annotations

from carclf.serve.schemas import ErrorBody
from carclf.serve.uploads import ACCEPTED_TEXT

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
