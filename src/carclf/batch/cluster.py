"""The Ray runner: each part of the job is a Ray task, one per CPU of the cluster at a time.

A task reads its part's ``id, path`` rows, reads and decodes the photos itself (paths travel,
not pixels: nothing but a few hundred bytes per part crosses the object store), runs ONNX
Runtime on one thread (a task per CPU scales with the cores; threads inside one session do
not), and writes the part's file (:mod:`carclf.batch.output`). A worker process keeps its model
between tasks (:func:`carclf.batch.engine.cached_engine`), so a model loads once per CPU.

Failures: a task whose worker or node dies (an OOM kill, a node lost mid-job) is retried by Ray
on a live node (``max_retries``); its part is written once whatever happened to the first try,
because a part has one file name and is renamed into place whole. An error in our own code is
not retried: it stops the job with its message.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

from carclf.batch.engine import ModelSpec
from carclf.errors import CarclfError
from carclf.phases import bar

log = logging.getLogger(__name__)

TASK_RETRIES = 5  # system failures (a worker or node lost) per part
# A local Ray's object store: tasks exchange only a few hundred bytes per part and the model spec.
LOCAL_OBJECT_STORE_MB = 128


class ClusterError(CarclfError):
    """The Ray cluster cannot be reached or cannot run the job."""


def _probe(address: str, timeout: float = 5.0) -> None:
    """A ClusterError within ``timeout`` when nothing listens at ``host:port`` (Ray itself waits
    a minute and then prints a traceback)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(
            f"--address {address}: no Ray cluster answers there ({e.strerror or e}); start one "
            "with `ray start --head` or drop --address to run on this machine"
        ) from None


def start_ray(address: str | None, num_cpus: int | None, object_store_mb: int | None) -> bool:
    """Join ``address`` or start a local Ray; True when this call connected or started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        _probe(address)
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except Exception as e:  # ConnectionError, TimeoutError, RuntimeError...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ClusterError(
                f"--address {address}: cannot join the Ray cluster ({first})"
            ) from None
        return True
    from carclf.inference.onnx_backend import available_cpus

    ray.init(
        num_cpus=num_cpus or available_cpus(),
        object_store_memory=(object_store_mb or LOCAL_OBJECT_STORE_MB) * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    return True


def _task(spec: ModelSpec, part: str, out: str, threads: int, batch_size: int) -> tuple[int, int]:
    """One part, in a Ray worker: decode on one thread beside ONNX Runtime's."""
    from concurrent.futures import ThreadPoolExecutor

    from carclf.batch.engine import cached_engine
    from carclf.batch.local import predict_part

    engine = cached_engine(spec, threads)
    pool = _POOLS.get("pool") or _POOLS.setdefault("pool", ThreadPoolExecutor(1))
    return predict_part(engine, Path(part), Path(out), pool, batch_size)


_POOLS: dict = {}


def _cause(e: Exception) -> str:
    cause = getattr(e, "cause", None)
    if isinstance(cause, CarclfError):
        return str(cause)
    return str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__


def run_ray(
    spec: ModelSpec,
    parts: list[Path],
    out: Path,
    *,
    pending: int,
    workers: int | None,
    threads: int,
    batch_size: int,
    progress: bool,
) -> float:
    """Predict every part as Ray tasks, ``workers`` at a time (default: the cluster's CPUs, or
    its GPUs for ``--device cuda``); the seconds it took."""
    import ray

    kind, resources = "CPU", {"num_cpus": threads}
    if spec.device == "cuda":
        kind, resources = "GPU", {"num_cpus": 1, "num_gpus": 1}
    task = ray.remote(max_retries=TASK_RETRIES, retry_exceptions=False, **resources)(_task)
    total = ray.cluster_resources()
    slots = int(total.get(kind, 0) // (1 if kind == "GPU" else threads))
    if slots < 1:
        raise ClusterError(f"the Ray cluster has no {kind} for a task of {resources} ({total})")
    # --workers caps the tasks at a time; else each slot has a next part queued behind its own
    window = workers or 2 * slots
    start = time.perf_counter()
    spec_ref = ray.put(spec)
    todo = [str(p) for p in parts]
    running: list = []
    log.info("%d parts on %d slot(s) of the Ray cluster", len(todo), slots)
    with bar("batch (ray)", total=pending, unit="img", show=progress) as b:
        while todo or running:
            while todo and len(running) < window:
                running.append(task.remote(spec_ref, todo.pop(0), str(out), threads, batch_size))
            ready, running = ray.wait(running, num_returns=1)
            try:
                n, _ = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:
                raise ClusterError(f"a batch task failed: {_cause(e)}") from None
            b.update(n)
    return time.perf_counter() - start
