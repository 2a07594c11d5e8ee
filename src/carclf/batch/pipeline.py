"""``run_batch``: predict every input photo, resumably, exactly once, here or on a Ray cluster.

Steps, top to bottom::

    model spec   the bundle read once (contract, labels, open set, model id/version)
    listing      INPUT streamed into parts under OUTPUT/_inputs, ids already written skipped
    runner       local (one process, no Ray; the default) or Ray (``--ray``, ``--address``)
    summary      rows, unreadable, missing and duplicated ids against the listing

Both runners write the same part files (:mod:`carclf.batch.output`), so a job can be resumed by
either. On one machine the local runner is the fast one: Ray's daemons, its worker processes and
their start-up buy nothing there but the ability to lose a node (BENCHMARKS.md has the figures).
With ``address`` (``auto``, ``HOST:PORT``, ``ray://head:10001``) the job joins that cluster:
every node then needs carclf installed and must see MODEL, the photos and OUTPUT at the same
paths (a shared file system, or photo URIs such as ``s3://``).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from carclf.batch.engine import ModelSpec
from carclf.batch.inputs import CHUNK, iter_inputs
from carclf.batch.output import (
    Manifest,
    Summary,
    model_id,
    model_version,
    prepare,
    summarize,
    write_inputs,
)
from carclf.errors import CarclfError, ModelError
from carclf.inference.loading import find_model, int8_model, int8_open_set, model_meta
from carclf.inference.onnx_backend import ONNX_FILE, available_cpus

log = logging.getLogger(__name__)

MAX_PART_ROWS = 512  # inputs per part (one output file, one Ray task)


class BatchError(CarclfError):
    """The batch job cannot start or did not finish."""


@dataclass
class BatchReport:
    output: Path
    summary: Summary
    skipped: int  # inputs already written by an earlier run
    predicted: int  # rows written by this run
    seconds: float
    runner: str  # "local" or "ray (N CPUs)"
    backend: str

    @property
    def images_per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        return (
            f"{self.output}: {self.summary.format()}; this run wrote {self.predicted} in "
            f"{self.seconds:.1f} s ({self.images_per_second:.1f} images/s, {self.runner}, "
            f"{self.backend}), {self.skipped} were already done"
        )


def check_options(top_k: int, batch_size: int, rows_per_block, device: str, **counts) -> None:
    """A BatchError naming the first option that cannot work."""
    for name, value in (("top-k", top_k), ("batch-size", batch_size), *counts.items()):
        if value is not None and value < 1:
            raise BatchError(f"--{name.replace('_', '-')} {value}: need at least 1")
    if rows_per_block is not None and rows_per_block < 1:
        raise BatchError(f"--rows-per-block {rows_per_block}: need at least 1")
    if device not in ("cpu", "cuda"):
        raise BatchError(f"--device {device!r}: choose cpu or cuda")


def model_spec(model, backend: str, device: str, top_k: int, draft: bool) -> ModelSpec:
    """The worker's view of the model (fails here, once, for a missing model or int8 file)."""
    from carclf.data.classmaps import display_name
    from carclf.inference.open_set import load_open_set

    target = find_model(model)
    meta = model_meta(target)
    onnx, open_set = None, None
    if backend == "int8":
        onnx, open_set = int8_model(target), int8_open_set(target, meta)
    elif target.is_dir() and backend in ("auto", "onnx"):
        if (target / ONNX_FILE).is_file() and (backend == "onnx" or device == "cpu"):
            onnx, open_set = target / ONNX_FILE, load_open_set(target, meta)
        elif backend == "onnx":
            raise ModelError(f"{target}: no model.onnx; run: python -m carclf.export {target}")
    local = meta.class_names_local or [None] * meta.num_classes
    return ModelSpec(
        model=str(target),
        onnx=str(onnx) if onnx else None,
        backend=backend,
        device=device,
        size=meta.image_size,
        mean=tuple(meta.mean),
        std=tuple(meta.std),
        resize=meta.resize,
        temperature=float(meta.temperature),
        labels=[str(v) for v in meta.label_values],
        names=[display_name(n, lo) for n, lo in zip(meta.class_names, local, strict=True)],
        open_set=open_set,
        model_id=model_id(meta),
        model_version=model_version(meta),
        top_k=top_k,
        draft=draft,
    )


def part_rows(first_chunk: int, cpus: int, batch_size: int) -> int:
    """Inputs per part: about 4 parts per CPU for a small job (balanced across workers), at most
    :data:`MAX_PART_ROWS` (a part is the work lost and redone with a lost node)."""
    if first_chunk >= CHUNK:  # a long listing: its length is not known yet, nor needed
        return MAX_PART_ROWS
    return min(MAX_PART_ROWS, max(batch_size, -(-first_chunk // (4 * cpus))))


def run_batch(
    model: str | os.PathLike,
    inputs: list[str | os.PathLike],
    output: str | os.PathLike,
    *,
    address: str | None = None,
    ray: bool = False,
    workers: int | None = None,
    threads: int | None = None,
    decoders: int | None = None,
    backend: str = "auto",
    device: str = "cpu",
    top_k: int = 5,
    batch_size: int = 8,
    rows_per_block: int | None = None,
    num_cpus: int | None = None,
    object_store_mb: int | None = None,
    draft: bool = True,
    progress: bool = True,
) -> BatchReport:
    """Predict ``inputs`` with ``model`` into Parquet parts under ``output``.

    Raises:
        ModelError / DataError / OutputError / BatchError / ClusterError: a one-line reason.
    """
    check_options(top_k, batch_size, rows_per_block, device, workers=workers, threads=threads,
                  decoders=decoders, num_cpus=num_cpus)  # fmt: skip
    spec = model_spec(model, backend, device, top_k, draft)  # a missing model fails first
    out = Path(output).expanduser().resolve()
    chunks = iter_inputs(list(inputs))
    first = next(chunks)  # a missing or empty input fails before Ray starts
    prepare(out, Manifest(str(model), spec.model_id, backend, top_k))
    use_ray = ray or address is not None
    started = False
    if use_ray:
        from carclf.batch.cluster import start_ray

        started = start_ray(address, num_cpus, object_store_mb)
    try:
        cpus = _cpus(use_ray, num_cpus)
        per_part = rows_per_block or part_rows(len(first), cpus, batch_size)
        listing = write_inputs(out, itertools.chain([first], chunks), per_part)
        if listing.listed_twice:
            log.warning(
                "%d ids listed more than once; each is predicted once", listing.listed_twice
            )
        log.info("%d inputs, %d already done, %d parts of up to %d", listing.inputs,
                 listing.skipped, len(listing.parts), per_part)  # fmt: skip
        seconds, runner = _run(spec, listing, out, use_ray, cpus, workers, threads, decoders,
                               batch_size, progress)  # fmt: skip
    finally:
        if started:
            import ray as ray_module

            ray_module.shutdown()
    summary = summarize(out, listing.hashes)
    return BatchReport(out, summary, listing.skipped, listing.pending, seconds, runner, backend)


def _cpus(use_ray: bool, num_cpus: int | None) -> int:
    if use_ray:
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    return num_cpus or available_cpus()


def _run(spec, listing, out, use_ray, cpus, workers, threads, decoders, batch_size, progress):
    """(seconds, runner description) of predicting the listing's parts."""
    if not listing.parts:
        return 0.0, "nothing to do"
    if use_ray:
        from carclf.batch.cluster import run_ray

        start = time.perf_counter()
        run_ray(spec, listing.parts, out, pending=listing.pending, workers=workers,
                threads=threads or 1, batch_size=batch_size, progress=progress)  # fmt: skip
        return time.perf_counter() - start, f"ray, {cpus} CPUs"
    from carclf.batch.local import run_local

    seconds = run_local(spec, listing.parts, out, pending=listing.pending,
                        threads=threads or min(cpus, 8), decoders=decoders or cpus,
                        batch_size=batch_size, progress=progress)  # fmt: skip
    return seconds, f"local, {threads or min(cpus, 8)} ORT threads, {decoders or cpus} decoders"
