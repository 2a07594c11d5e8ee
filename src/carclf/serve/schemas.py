"""Response models: what /docs shows and what every response of the service looks like."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ModelInfo(BaseModel):
    name: str = Field(description="model name (the bundle folder, or as given to the service)")
    version: str = Field(description="content hash of the model file: changes with the weights")
    backbone: str
    backend: str = Field(description="onnx, onnx-int8 or torch")
    num_classes: int
    image_size: int
    created: str = ""


class ClassScore(BaseModel):
    rank: int = Field(description="1 = most likely")
    index: int = Field(description="class index in the model's output")
    label: int | str = Field(description="the class label as written in the training data")
    name: str
    name_local: str | None = Field(None, description="name in the data's own language, if any")
    display: str = Field(description="name with the local name in brackets, for showing")
    probability: float


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
