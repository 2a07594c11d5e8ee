"""What predicts one part of a batch job: decode photos, run the model, build the rows.

Both runners use it, the local one (:mod:`carclf.batch.local`, one process) and Ray's tasks
(:mod:`carclf.batch.cluster`), so their output files are the same.

* :class:`ModelSpec` is plain data the driver builds once from the bundle (preprocessing
  contract, temperature, class labels and names, open-set data, the model's id and version) and
  sends to every worker.
* :func:`decode` reads one photo (a path, or an ``s3://``/``gs://``/``file://`` URI read through
  pyarrow's file systems, what Ray Data reads) and returns it as uint8 pixels at the model's size:
  the JPEG decoder drafts it down to that size while decoding (``draft``), and uint8 is a quarter
  of float32 wherever the pixels travel.
* :class:`Engine` holds the model: ONNX Runtime without PyTorch (torch is ~400 MB per process
  and never needed to run ``model.onnx``), or a :class:`carclf.Classifier` for ``--backend
  torch``, ``--device cuda`` or a checkpoint. Its answers are :meth:`Classifier.answer`'s:
  softmax at the bundle's temperature, the open-set score of the plain view.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow as pa

from carclf.data.images import MAX_PIXELS, load_rgb
from carclf.errors import ImageDecodeError

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("path", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("names", pa.list_(pa.string())),
        ("probabilities", pa.list_(pa.float32())),
        # open set (carclf.inference.open_set): null for a model without open-set data
        ("unknown", pa.bool_()),
        ("open_set_score", pa.float32()),
        ("error", pa.string()),
        ("model_id", pa.string()),
        ("model_version", pa.string()),
    ]
)


@dataclass
class ModelSpec:
    """Everything a worker needs to answer like the bundle, without reading it again.

    ``onnx`` is the ONNX file the torch-free engine runs; None means a Classifier (PyTorch) built
    from ``model`` with ``backend`` and ``device``.
    """

    model: str
    onnx: str | None
    backend: str
    device: str
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str
    temperature: float
    labels: list[str]
    names: list[str]
    open_set: object | None  # carclf.inference.open_set.OpenSet (plain numpy)
    model_id: str
    model_version: str
    top_k: int
    draft: bool = True


# -- reading and decoding ---------------------------------------------------------------------------
def is_uri(path: str) -> bool:
    return "://" in path


def read_bytes(path: str) -> bytes:
    """The file's bytes: a local path, or a URI through pyarrow's file systems (s3, gs, hdfs,
    file), which take credentials from the environment as Ray Data does."""
    if not is_uri(path):
        with open(path, "rb") as f:
            return f.read()
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(path)
    with filesystem.open_input_stream(inner) as f:
        return f.read()


def fit(image: np.ndarray, size: int, resize: str) -> np.ndarray:
    """The eval preset's resize (:class:`carclf.data.presets.EvalPreset`) in OpenCV alone:
    ``squash`` to size x size, or ``crop`` (short side to size, centre crop); INTER_AREA."""
    h, w = image.shape[:2]
    if resize == "squash":
        if (h, w) == (size, size):
            return image
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    if resize != "crop":
        raise ValueError(f"unknown resize mode {resize!r}; choose squash or crop")
    scale = size / min(h, w)
    nh, nw = int(h * scale), int(w * scale)
    if (nh, nw) != (h, w):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    y, x = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(image[y : y + size, x : x + size])


def decode(path: str, size: int, resize: str, draft: bool = True) -> tuple[np.ndarray | None, str]:
    """``(size x size x 3 uint8 pixels, "")``, or ``(None, reason)`` for a photo that cannot be
    read (the reasons :func:`carclf.data.images.load_rgb` gives)."""
    try:
        data = read_bytes(path)
        rgb = load_rgb(data, max_pixels=MAX_PIXELS, draft_size=size if draft else None)
        return fit(rgb, size, resize), ""
    except ImageDecodeError as e:
        return None, e.reason
    except FileNotFoundError:
        return None, "file not found"
    except OSError as e:  # a listed file that cannot be opened (permissions, a folder, network)
        return None, f"cannot read ({e.strerror or e})"


def decode_stream(pool, paths: Iterable[str], spec: ModelSpec, window: int) -> Iterator[tuple]:
    """:func:`decode` of each path on ``pool`` (threads: Pillow and OpenCV release the GIL),
    in order, with at most ``window`` photos decoded ahead (bounded memory)."""
    pending: deque = deque()
    for p in paths:
        pending.append(pool.submit(decode, str(p), spec.size, spec.resize, spec.draft))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# -- the model --------------------------------------------------------------------------------------
def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits.astype(np.float32) / np.float32(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Engine:
    """Probabilities and open-set scores for batches of uint8 pixels (N, size, size, 3).

    Args:
        spec: the model.
        threads: ONNX Runtime / PyTorch intra-op threads (1 per Ray task: a task per CPU).
    """

    def __init__(self, spec: ModelSpec, threads: int):
        self.spec = spec
        self.mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
        self.inv_std = 1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)
        self.open_set = spec.open_set
        if spec.onnx is not None:
            from carclf.inference.onnx_backend import OnnxBackend

            self.onnx = OnnxBackend(spec.onnx, threads)
            self.classifier = None
            if self.open_set is not None and self.open_set.needs_features:
                if not self.onnx.has_features:  # an export from before open-set support
                    self.open_set = self.open_set.without_features()
        else:
            import torch

            from carclf.inference.classifier import Classifier

            torch.set_num_threads(threads)
            self.onnx = None
            self.classifier = Classifier.load(
                spec.model, device=spec.device, backend=spec.backend, threads=threads
            )
            self.open_set = self.classifier.open_set

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> the model's float32 (N, 3, H, W) input (mean/std as the preset)."""
        x = (pixels.astype(np.float32) - self.mean) * self.inv_std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def answer(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probabilities (N, K), open-set scores (N,) or None)`` for uint8 pixels."""
        x = self.normalize(pixels)
        if self.classifier is not None:
            import torch

            return self.classifier.answer(torch.from_numpy(x))
        feats = None
        names = [self.onnx.output_name]
        want_feats = self.open_set is not None and self.open_set.needs_features
        if want_feats:
            names.append(self.onnx.features_name)
        out = self.onnx.session.run(names, {self.onnx.input_name: x})
        logits = np.asarray(out[0], dtype=np.float32)
        if want_feats:
            feats = np.asarray(out[1], dtype=np.float32)
        probs = softmax(logits, self.spec.temperature)
        if self.open_set is None:
            return probs, None
        return probs, self.open_set.score_of(logits.astype(np.float64), feats)


# -- one part ---------------------------------------------------------------------------------------
def predict_rows(
    engine: Engine, ids: list, paths: list, pool, batch_size: int, window: int | None = None
) -> pa.Table:
    """The output rows (:data:`SCHEMA`) of ``ids``/``paths``: decoded on ``pool``, answered in
    batches of ``batch_size``; an unreadable photo keeps its row with ``error`` set."""
    spec = engine.spec
    n = len(ids)
    k = min(spec.top_k, len(spec.labels))
    labels, names, probs = [[] for _ in range(n)], [[] for _ in range(n)], [[] for _ in range(n)]
    unknown, scores, errors = [None] * n, [None] * n, [None] * n
    lab, nam = np.asarray(spec.labels, dtype=object), np.asarray(spec.names, dtype=object)
    batch, where = [], []

    def flush():
        p, s = engine.answer(np.stack(batch))
        top = np.argsort(-p, axis=1)[:, :k]
        for row, i in enumerate(where):
            labels[i], names[i] = lab[top[row]].tolist(), nam[top[row]].tolist()
            probs[i] = p[row, top[row]].tolist()
            if s is not None:
                unknown[i] = bool(engine.open_set.unknown(s[row]))
                scores[i] = float(s[row])
        batch.clear(), where.clear()

    stream = decode_stream(pool, paths, spec, window or 2 * batch_size)
    for i, (pixels, error) in enumerate(stream):
        if pixels is None:
            errors[i] = error
            continue
        batch.append(pixels)
        where.append(i)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    columns = {
        "id": [str(x) for x in ids],
        "path": [str(x) for x in paths],
        "labels": labels,
        "names": names,
        "probabilities": probs,
        "unknown": unknown,
        "open_set_score": scores,
        "error": errors,
        "model_id": [spec.model_id] * n,
        "model_version": [spec.model_version] * n,
    }
    return pa.table(columns, schema=SCHEMA)


_ENGINES: dict[tuple, Engine] = {}


def cached_engine(spec: ModelSpec, threads: int) -> Engine:
    """One engine per model in this process: a Ray worker process runs many parts, and loads the
    model for the first only."""
    key = (spec.model_id, spec.onnx, spec.backend, spec.device, threads, os.getpid())
    if key not in _ENGINES:
        _ENGINES.clear()
        _ENGINES[key] = Engine(spec, threads)
    return _ENGINES[key]
