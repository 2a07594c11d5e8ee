"""What the service accepts and how much work it takes on: one object, set once per app.

Memory stays bounded under any load: at most ``max_pending`` requests are admitted at a time
(later ones get 503 at once, before their bodies are read), each holds at most its body
(``max_upload_bytes``, or ``max_batch_bytes`` for a batch), only ``decode_threads`` images are
decoded at once (each at most ``max_pixels``), and at most ``max_queue`` preprocessed images wait
for the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from carclf.inference.onnx_backend import available_cpus

MiB = 2**20


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 10 * MiB  # one image (the body of /predict)
    max_batch_bytes: int = 32 * MiB  # the whole body of /predict/batch
    max_files: int = 16  # images in one /predict/batch request
    max_pixels: int = 40_000_000  # width x height, checked from the header before decoding
    max_pending: int = 64  # requests admitted at once; more get 503 + Retry-After
    max_queue: int = 128  # preprocessed images waiting for the model; more get 503
    # Images per model call (the micro-batch). Measured on 2 cores, Lite0 224 px, 32 clients:
    # 1 gives 52 req/s (every call pays a hop between threads and the GIL), 4 gives 150, 8 gives
    # 145; ONNX Runtime itself is fastest per image at batch 1-4 and slowest at 32 on such a CPU
    # (activations outgrow the cache). On a GPU raise it (--max-batch 32).
    max_batch: int = 4
    max_wait_ms: float = 5.0  # how long a micro-batch waits for requests still being decoded
    request_timeout_s: float = 10.0  # read + decode + inference; over it: 504
    decode_threads: int = max(1, min(4, available_cpus()))
    retry_after_s: int = 1  # the Retry-After header of a 503
    max_top_k: int = 100

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"limit {f.name}={value!r}: expected a positive number")

    @classmethod
    def from_kwargs(cls, **kwargs) -> Limits:
        """Limits from keyword arguments, naming any unknown one (a typo must not be ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown service limit(s) {unknown}; known: {sorted(known)}")
        return cls(**kwargs)
