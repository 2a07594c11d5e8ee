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


class OpenSetAnswer(BaseModel):
    """Present only for a model with open-set data (carclf.inference.open_set)."""

    label: int | str | None = Field(
        None, description="the top class's label, or null when the photo is `unknown`"
    )
    unknown: bool | None = Field(
        None, description="true: the photo looks like none of the model's classes"
    )
    reason: str | None = Field(None, description="why the photo is unknown, in words")
    open_set_score: float | None = Field(
        None, description="higher = more like the known classes; unknown under the threshold"
    )


class Prediction(OpenSetAnswer):
    model: ModelInfo
    top: list[ClassScore] = Field(description="the ranked classes (the closest guesses if unknown)")
    image: ImageMeta
    latency_ms: float = Field(description="server time from request start to response")


class BatchItem(OpenSetAnswer):
    filename: str
    top: list[ClassScore] | None = None
    image: ImageMeta | None = None
    error: str | None = Field(None, description="error code when this image was refused")
    detail: str | None = None


class BatchPrediction(BaseModel):
    model: ModelInfo
    results: list[BatchItem]
    latency_ms: float


class Explanation(BaseModel):
    """What POST /explain answers (``?format=png``: the overlay PNG itself)."""

    model: ModelInfo
    explained: ClassScore = Field(description="the class the heat map is for (default: top-1)")
    image: ImageMeta
    method: str = Field(description="grad-cam: Grad-CAM on the backbone's last stage")
    overlay: str = Field(description="data:image/png;base64,... the photo with the heat map")
    overlay_width: int
    overlay_height: int
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


class OpenSetInfo(BaseModel):
    score: str = Field(description="msp, energy or knn")
    keep: float = Field(description="share of known validation photos the threshold accepts")
    threshold: float


class Ready(BaseModel):
    ready: bool
    model: ModelInfo
    class_names: list[str]
    limits: UploadLimits
    open_set: OpenSetInfo | None = Field(
        None, description="unknown-photo rejection; null for a model without open-set data"
    )
    explain: bool = Field(
        False, description="POST /explain works (the model's PyTorch weights are there)"
    )
