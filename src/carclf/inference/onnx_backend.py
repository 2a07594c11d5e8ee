"""``OnnxBackend``: logits from an exported ``model.onnx`` with ONNX Runtime on the CPU.

:class:`carclf.Classifier` uses it automatically when a bundle holds ``model.onnx`` and the device
is the CPU: on a small CPU box ONNX Runtime runs Lite0 about 1.5-2x faster than PyTorch eager and
needs no autograd machinery.

Threads: ONNX Runtime defaults to one intra-op thread per physical core and lets idle threads
spin-wait for work. On a shared 2-core box (and inside the web service, where the event loop and
the image decoders need the same cores) spinning burns CPU that others need, so spinning is off and
the intra-op pool is the CPUs this process may use, capped at 8 (more threads than that do not
speed up a Lite-sized network). ``CARCLF_ORT_THREADS`` overrides the count.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from carclf.errors import ModelError

if TYPE_CHECKING:  # torch is imported where a batch is run: importing this module stays cheap
    import torch

ONNX_FILE = "model.onnx"  # the fp32 export inside a bundle
INT8_FILE = "model.int8.onnx"  # its int8 version, when one was kept
INT8_CHECK_FILE = "int8_check.json"  # int8 vs fp32 on held-out photos: kept or refused, and why
FEATURES_OUTPUT = "features"  # the penultimate features, the ONNX model's second output
SIZED_FILE = re.compile(r"^(?P<stem>.+)\.(?P<size>\d+)px\.onnx$")  # model.258px.onnx
THREADS_ENV = "CARCLF_ORT_THREADS"
MAX_DEFAULT_THREADS = 8


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ModelError(f"{THREADS_ENV}={env!r}: expected a whole number of threads") from None
        if n < 1:
            raise ModelError(f"{THREADS_ENV}={env!r}: expected at least 1 thread")
        return n
    return min(available_cpus(), MAX_DEFAULT_THREADS)


def sized_onnx(path: str | os.PathLike, size: int) -> Path:
    """The file beside ``model.onnx`` exported for ``size`` px input (a TTA view's size):
    ``model.<size>px.onnx``. An export writes one per size of the default TTA policy."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{size}px{path.suffix}")


def sized_onnx_files(path: str | os.PathLike) -> dict[tuple[int, int], Path]:
    """``(size, size) -> file`` of the exports beside ``path`` for other input sizes."""
    path = Path(path)
    out = {}
    for f in path.parent.glob(f"{path.stem}.*px.onnx"):
        m = SIZED_FILE.match(f.name)
        if m and m["stem"] == path.stem:
            out[(int(m["size"]), int(m["size"]))] = f
    return out


def session_options(threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise
    return so


class OnnxBackend:
    """Logits (float32, CPU) for a preprocessed batch (N, 3, H, W), from an ONNX model file.

    An ONNX model takes the one input size it was exported for; the exporter writes a file per
    size of the default TTA policy beside it (``model.258px.onnx``, see :func:`sized_onnx`), and a
    batch of such a size runs on that file's session (loaded on first use), so multiscale TTA
    runs on ONNX Runtime too.

    Args:
        onnx_path: an ONNX model written by ``carclf.export.export_onnx`` (fp32 or int8).
        threads: intra-op threads; default: see the module docstring.
    """

    name = "onnx"

    def __init__(self, onnx_path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such ONNX model")
        try:
            self.session = ort.InferenceSession(
                str(self.path), session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own exception types for corrupt files
            raise ModelError(f"{self.path}: ONNX Runtime cannot load this model ({e})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelError(f"{self.path}: expected one NCHW image input, got {inputs}")
        self.input_name = inputs[0].name
        self.input_size = tuple(inputs[0].shape[2:])  # (H, W): fixed at export
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = outputs[0]
        # exports since open-set support also give the penultimate features (second output)
        self.features_name = FEATURES_OUTPUT if FEATURES_OUTPUT in outputs[1:] else None
        self.threads = threads or default_threads()
        self._sized = sized_onnx_files(self.path)  # other input sizes: their files
        self._sessions = {self.input_size: self.session}

    @property
    def input_sizes(self) -> list[tuple[int, int]]:
        """Every (H, W) this model runs: its own and those of the files exported beside it."""
        return sorted({self.input_size, *self._sized})

    def _session(self, size: tuple[int, int]):
        if size not in self._sessions:
            import onnxruntime as ort

            path = self._sized[size]
            try:
                self._sessions[size] = ort.InferenceSession(
                    str(path), session_options(self.threads), providers=["CPUExecutionProvider"]
                )
            except Exception as e:
                raise ModelError(f"{path}: ONNX Runtime cannot load this model ({e})") from None
        return self._sessions[size]

    @property
    def metadata(self) -> dict:
        """The model's metadata_props, JSON values decoded (see ``carclf.export.onnx``)."""
        raw = self.session.get_modelmeta().custom_metadata_map
        out = {}
        for key, value in raw.items():
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = value
        return out

    def _input(self, batch: torch.Tensor) -> np.ndarray:
        size = tuple(batch.shape[2:])
        if size != self.input_size and size not in self._sized:
            raise ModelError(
                f"{self.path}: exported for {self.input_size[0]}x{self.input_size[1]} px input, "
                f"got {size} (meta.json and model.onnx disagree? re-export)"
            )
        return np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        x = self._input(batch)
        (logits,) = self._session(tuple(batch.shape[2:])).run(
            [self.output_name], {self.input_name: x}
        )
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))

    @property
    def has_features(self) -> bool:
        return self.features_name is not None

    def with_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and penultimate features from one run (a file exported with both outputs)."""
        if self.features_name is None:
            raise ModelError(f"{self.path}: no {FEATURES_OUTPUT!r} output; re-export the model")
        import torch

        names = [self.output_name, self.features_name]
        session = self._session(tuple(batch.shape[2:]))
        logits, feats = session.run(names, {self.input_name: self._input(batch)})
        as_tensor = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
        return as_tensor(logits), as_tensor(feats)
