"""Response models: what /docs shows and what every response of the service looks like.

A class score is what :meth:`carclf.Classifier.scores` returns (:class:`carclf.inference.ClassScore`)
plus its rank; its fields, types and descriptions are read from that dataclass, so the library
and the service cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

from pydantic import BaseModel, Field, create_model

from carclf.inference import classifier


class ModelInfo(BaseModel):
    name: str = Field(description="model name (the bundle folder, or as given to the service)")
    version: str = Field(description="content hash of the model file: changes with the weights")
    backbone: str
    backend: str = Field(description="onnx, onnx-int8 or torch")
    num_classes: int
    image_size: int
    created: str = ""


def dataclass_fields(cls: type) -> dict[str, tuple[Any, Any]]:
    """``create_model`` field definitions for the dataclass ``cls``: type, default, description."""
    hints = get_type_hints(cls)
    return {
        f.name: (
            hints[f.name],
            Field(... if f.default is dataclasses.MISSING else f.default, **f.metadata),
        )
        for f in dataclasses.fields(cls)
    }


ClassScore = create_model(
    "ClassScore",
    rank=(int, Field(description="1 = most likely")),
    **dataclass_fields(classifier.ClassScore),
)


class ImageMeta(BaseModel):
    format: str
    width: int
    height: int


class Prediction(BaseModel):
    model: ModelInfo
    top: list[ClassScore]
    image: ImageMeta
    latency_ms: float = Field(description="server time from request start to response")


class BatchItem(BaseModel):
    filename: str
    top: list[ClassScore] | None = None
    image: ImageMeta | None = None
    error: str | None = Field(None, description="error code when this image was refused")
    detail: str | None = None


class BatchPrediction(BaseModel):
    model: ModelInfo
    results: list[BatchItem]
    latency_ms: float


class ErrorBody(BaseModel):
    error: str = Field(description="stable error code, e.g. unsupported_media_type")
    detail: str | list | dict | None = Field(description="what was wrong, in words")


class Health(BaseModel):
    status: str
    uptime_s: float


class UploadLimits(BaseModel):
    accepted_formats: list[str]
    max_upload_bytes: int
    max_pixels: int
    max_files: int


class Ready(BaseModel):
    ready: bool
    model: ModelInfo
    class_names: list[str]
    limits: UploadLimits
