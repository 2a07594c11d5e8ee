"""``run_batch``: predict every input photo with Ray Data, resumably, exactly once.

The pipeline is Ray Data's own streaming engine, not a scheduler of ours::

    read_parquet(_inputs)  ->  map_batches(decode)      CPU tasks: read, decode, eval preset
                           ->  map_batches(Predictor)   actor pool: ONNX Runtime / PyTorch
                           ->  write_parquet(predictions)

with Ray Data's checkpointing on the ``id`` column (see :mod:`carclf.batch.output`), so a rerun
after any crash writes only the rows still missing. Ray retries the tasks of a worker process that
died and restarts its actors; the rows of the write tasks it lost are written once, by the retry.

Without ``address`` the command starts a local Ray on this machine, sized to it (or to
``num_cpus``), and stops it at the end. With ``address`` (``auto``, ``ray://head:10001``) it joins
that cluster: every node then needs carclf installed and must see MODEL, the photos and OUTPUT at
the same paths (a shared file system).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from carclf.batch.inputs import list_inputs
from carclf.batch.output import (
    CHECKPOINT,
    PREDICTIONS,
    Manifest,
    Summary,
    done_ids,
    model_id,
    prepare,
    summarize,
    write_inputs,
)
from carclf.errors import CarclfError
from carclf.inference.loading import find_model, int8_model, model_meta
from carclf.models.bundle import BundleMeta

log = logging.getLogger(__name__)


class BatchError(CarclfError):
    """The batch job cannot start or did not finish."""


@dataclass
class BatchReport:
    output: Path
    summary: Summary
    skipped: int  # inputs already written by an earlier run
    predicted: int  # rows written by this run
    seconds: float
    workers: int
    backend: str

    @property
    def images_per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        return (
            f"{self.output}: {self.summary.format()}; this run wrote {self.predicted} in "
            f"{self.seconds:.1f} s ({self.images_per_second:.1f} images/s, {self.workers} "
            f"{self.backend} worker(s)), {self.skipped} were already done"
        )


# An actor holds PyTorch, the model, its ONNX Runtime session and a few batches: measured 555 MiB
# for Lite0 (Ray Data's memory report). Asking for it also keeps decoding in its own CPU tasks: Ray Data fuses a task stage
# into the next actor stage when their resource requests are the same.
ACTOR_MEMORY = 768 * 2**20
INPUT_ROWS_PER_FILE = 100_000  # of the input list under OUTPUT/_inputs


def start_ray(address: str | None, num_cpus: int | None, object_store_mb: int | None) -> bool:
    """Connect to ``address`` or start a local Ray; True when this call started it.

    A local Ray gets one logical CPU more than the cores it may use: a rerun adds Ray Data's
    checkpoint filter actor, which asks for a whole CPU yet idles (it drops done ids from each
    input block), and without that CPU the decode tasks would wait behind it forever.
    """
    import ray

    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except Exception as e:  # ConnectionError, TimeoutError, RuntimeError...
            raise BatchError(f"--address {address}: cannot join the Ray cluster ({e})") from None
        return True
    from carclf.inference.onnx_backend import available_cpus

    ray.init(
        num_cpus=(num_cpus or available_cpus()) + 1,
        object_store_memory=object_store_mb * 2**20 if object_store_mb else None,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    return True


def plan_resources(workers: int, device: str, local: bool) -> tuple[dict, int]:
    """(Ray resources of each model actor, threads per actor) for ``workers`` actors.

    Actors ask for at most one CPU each and leave at least one for the decode tasks (and, on a
    local Ray, the checkpoint filter's), which would otherwise wait behind them forever.
    """
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1)) - (1 if local else 0)
    threads = max(1, int(cpus) // workers)
    if device == "cuda":
        return {"num_gpus": 1, "num_cpus": 1, "memory": ACTOR_MEMORY}, threads
    per_actor = min(1.0, max(cpus - 1, 0.5) / workers)
    return {"num_cpus": per_actor, "memory": ACTOR_MEMORY}, threads


def check_options(workers: int, top_k: int, batch_size: int, rows_per_block, device: str) -> None:
    """A BatchError naming the first option that cannot work."""
    for name, value in (("workers", workers), ("top-k", top_k), ("batch-size", batch_size)):
        if value < 1:
            raise BatchError(f"--{name} {value}: need at least 1")
    if rows_per_block is not None and rows_per_block < 1:
        raise BatchError(f"--rows-per-block {rows_per_block}: need at least 1")
    if device not in ("cpu", "cuda"):
        raise BatchError(f"--device {device!r}: choose cpu or cuda")


def use_checkpoint(out: Path, progress: bool) -> None:
    """Ray Data's exactly-once checkpoint on the ``id`` column, kept after success."""
    import ray.data
    from ray.data.checkpoint import CheckpointConfig

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.checkpoint_config = CheckpointConfig(
        id_column="id",
        checkpoint_path=str(out / CHECKPOINT),
        delete_checkpoint_on_success=False,  # a rerun after success must skip everything
    )


def predict_files(
    files: list[str],
    out: Path,
    target: Path,
    meta: BundleMeta,
    *,
    per_block: int,
    batch_size: int,
    workers: int,
    actor: dict,
    predictor: dict,
) -> None:
    """Read the input list, decode, predict and write Parquet: the one Ray Data pipeline."""
    import ray.data

    from carclf.batch.stages import Predictor, decode

    preset = {"size": meta.image_size, "mean": list(meta.mean), "std": list(meta.std)}
    (
        ray.data.read_parquet(files)
        # Ray reads small files into one block; blocks of ``per_block`` rows let decoding,
        # prediction and writing overlap, and make each output file (and commit) small.
        .repartition(target_num_rows_per_block=per_block)
        .map_batches(
            decode,
            batch_size=batch_size,
            batch_format="numpy",
            num_cpus=1,
            fn_kwargs={**preset, "resize": meta.resize},
        )
        .map_batches(
            Predictor,
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            fn_constructor_kwargs={"model": str(target), **predictor},
            **actor,
        )
        # Writing a Parquet file is mostly I/O: a small CPU share lets each block be written
        # (and committed) as soon as it is predicted, not after all decoding is done.
        .write_parquet(str(out / PREDICTIONS), ray_remote_args={"num_cpus": 0.1})
    )


def run_batch(
    model: str | os.PathLike,
    inputs: list[str | os.PathLike],
    output: str | os.PathLike,
    *,
    address: str | None = None,
    workers: int = 1,
    backend: str = "auto",
    device: str = "cpu",
    top_k: int = 5,
    batch_size: int = 16,
    rows_per_block: int | None = None,
    num_cpus: int | None = None,
    object_store_mb: int | None = None,
    progress: bool = True,
) -> BatchReport:
    """Predict ``inputs`` with ``model`` into Parquet files under ``output``.

    Raises:
        ModelError / DataError / OutputError / BatchError: a clear one-line reason.
    """
    check_options(workers, top_k, batch_size, rows_per_block, device)
    target = find_model(model)  # a missing model fails before Ray starts
    meta = model_meta(target)
    if backend == "int8":  # fails now, not in every actor
        int8_model(target)
    out = Path(output).expanduser().resolve()
    rows = list_inputs(list(inputs))
    prepare(out, Manifest(str(model), model_id(meta), backend, top_k))
    skipped = len(done_ids(out) & set(rows["id"]))

    started = start_ray(address, num_cpus, object_store_mb)
    try:
        import ray

        use_checkpoint(out, progress)
        actor, threads = plan_resources(workers, device, local=started and not address)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        per_block = rows_per_block or min(1024, max(batch_size, len(rows) // (4 * cpus) or 1))
        files = write_inputs(out, rows, INPUT_ROWS_PER_FILE)
        log.info("%d inputs, %d already done; %d worker(s)", len(rows), skipped, workers)
        start = time.perf_counter()
        predict_files(
            files,
            out,
            target,
            meta,
            per_block=per_block,
            batch_size=batch_size,
            workers=workers,
            actor=actor,
            predictor={"backend": backend, "device": device, "threads": threads, "top_k": top_k},
        )
        seconds = time.perf_counter() - start
    finally:
        if started:
            import ray

            ray.shutdown()
    summary = summarize(out, rows["id"])
    return BatchReport(out, summary, skipped, summary.rows - skipped, seconds, workers, backend)
