"""The local runner: one process, no Ray. What ``carclf batch`` runs on one machine.

One ONNX Runtime session with a thread per CPU answers batches while a pool of decode threads
(Pillow and OpenCV release the GIL) reads and drafts the next photos: the shape of
``predict.py``'s loop (a DataLoader's workers decoding for the model), without the processes,
the float tensors between them or PyTorch. It writes the same part files as the Ray runner
(:mod:`carclf.batch.output`), so a job started here can be finished on a cluster and back.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from carclf.batch.engine import Engine, ModelSpec, predict_rows
from carclf.batch.output import PREDICTIONS, write_part
from carclf.phases import bar


def predict_part(engine: Engine, part: Path, out: Path, pool, batch_size: int) -> tuple[int, int]:
    """Predict one ``_inputs`` part into its ``predictions`` file; ``(rows, unreadable)``."""
    import pyarrow.parquet as pq

    rows = pq.read_table(part)
    table = predict_rows(
        engine, rows.column("id").to_pylist(), rows.column("path").to_pylist(), pool, batch_size
    )
    write_part(table, out / PREDICTIONS / part.name)
    return len(table), len(table) - table.column("error").null_count


def run_local(
    spec: ModelSpec,
    parts: list[Path],
    out: Path,
    *,
    pending: int,
    threads: int,
    decoders: int,
    batch_size: int,
    progress: bool,
) -> float:
    """Predict every part here; the seconds it took (model load included)."""
    start = time.perf_counter()
    engine = Engine(spec, threads)
    with ThreadPoolExecutor(decoders, thread_name_prefix="decode") as pool:
        with bar("batch (local)", total=pending, unit="img", show=progress) as b:
            for part in parts:
                n, _ = predict_part(engine, part, out, pool, batch_size)
                b.update(n)
    return time.perf_counter() - start
