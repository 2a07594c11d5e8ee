"""The two transforms of the batch pipeline, as Ray Data runs them.

``decode`` runs in stateless CPU tasks: it reads each photo and applies the model's eval preset
(the same decode and preset as :meth:`carclf.Classifier.predict`, so the answers are the same).
A photo that cannot be read keeps its row, with the reason in ``error`` and a blank image.

``Predictor`` runs in an actor pool: each actor loads the model once (ONNX Runtime on the CPU,
or PyTorch on a GPU) and turns batches of preprocessed images into top-k rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from carclf.data.images import MAX_PIXELS, load_rgb
from carclf.data.presets import EvalPreset
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
    ]
)


def decode(batch: dict[str, np.ndarray], *, size: int, mean, std, resize: str) -> dict:
    """``id, path`` rows -> ``id, path, image (N, 3, size, size) float32, error`` rows."""
    preset = EvalPreset(size=size, mean=mean, std=std, resize=resize)
    images = np.zeros((len(batch["path"]), 3, size, size), dtype=np.float32)
    errors = np.full(len(batch["path"]), "", dtype=object)
    for i, path in enumerate(batch["path"]):
        try:
            images[i] = preset(load_rgb(str(path), max_pixels=MAX_PIXELS)).numpy()
        except ImageDecodeError as e:
            errors[i] = e.reason
        except OSError as e:  # a listed file that vanished or cannot be opened
            errors[i] = f"cannot read ({e.strerror or e})"
    return {"id": batch["id"], "path": batch["path"], "image": images, "error": errors}


class Predictor:
    """Top-k rows for batches of preprocessed images; one model per actor.

    Args:
        model: bundle, run folder or checkpoint (a path every node can read).
        backend: as :meth:`carclf.Classifier.load` (``auto``, ``onnx``, ``int8``, ``torch``).
        device: ``cpu`` or ``cuda``.
        threads: ONNX Runtime / PyTorch intra-op threads of this actor.
    """

    def __init__(self, model: str, backend: str, device: str, threads: int, top_k: int):
        import torch

        from carclf.inference.classifier import Classifier

        torch.set_num_threads(threads)
        self.classifier = Classifier.load(model, device=device, backend=backend, threads=threads)
        self.top_k = top_k
        meta = self.classifier.meta
        self.labels = np.array([str(v) for v in meta.label_values], dtype=object)
        self.names = np.array(self.classifier.display_names(), dtype=object)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        import torch

        n = len(batch["id"])
        errors = batch["error"]
        ok = np.flatnonzero(errors == "")
        k = min(self.top_k, self.classifier.num_classes)
        labels, names, probs = (
            [[] for _ in range(n)],
            [[] for _ in range(n)],
            [[] for _ in range(n)],
        )
        unknown, open_scores = [None] * n, [None] * n
        open_set = self.classifier.open_set
        if len(ok):
            p, scores = self.classifier.answer(
                torch.from_numpy(np.ascontiguousarray(batch["image"][ok]))
            )
            top = np.argsort(-p, axis=1)[:, :k]
            for row, i in enumerate(ok):
                labels[i] = self.labels[top[row]].tolist()
                names[i] = self.names[top[row]].tolist()
                probs[i] = p[row, top[row]].tolist()
                if scores is not None:
                    unknown[i] = bool(open_set.unknown(scores[row]))
                    open_scores[i] = float(scores[row])
        return pa.table(
            {
                "id": [str(x) for x in batch["id"]],
                "path": [str(x) for x in batch["path"]],
                "labels": labels,
                "names": names,
                "probabilities": probs,
                "unknown": unknown,
                "open_set_score": open_scores,
                "error": [e or None for e in errors],
            },
            schema=SCHEMA,
        )
