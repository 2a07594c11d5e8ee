"""A micro-batcher: concurrent requests share one model call.

On a GPU a batch of 8 costs little more than one image. On a small CPU the gain is different
but as real: each model call pays a hop from the event loop to the model thread and back (and
the GIL on the way), and batching pays it once per batch: at 32 clients on 2 cores, batches of up
to 4 serve 150 req/s where batches of 1 serve 52 (BENCHMARKS.md). Requests put preprocessed
images into a bounded asyncio queue; one worker takes whatever is waiting (up to
``max_batch``), runs the model in a dedicated thread so the event loop keeps accepting and
decoding requests meanwhile, and resolves each request's future.

The worker waits up to ``max_wait`` for more images only while other requests are still being
decoded (``incoming()`` > 0): a lone request is never delayed by the batching window.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch


class QueueFull(Exception):
    """The model queue has no room for this request's images."""


@dataclass
class _Item:
    tensor: torch.Tensor
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Batch preprocessed images for ``run`` (a (N, 3, H, W) tensor -> (N, K) array).

    Args:
        run: the model call; runs in a single dedicated thread.
        max_batch: images per call.
        max_wait_s: longest wait for more images while requests are still being decoded.
        max_queue: images allowed to wait; ``submit`` raises :class:`QueueFull` beyond it.
        incoming: how many requests are being decoded now (0 when unknown).
        on_batch: called with (batch size, seconds) after every model call (metrics).
    """

    def __init__(
        self,
        run: Callable[[torch.Tensor], np.ndarray],
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        max_queue: int = 128,
        incoming: Callable[[], int] = lambda: 0,
        on_batch: Callable[[int, float], None] = lambda n, s: None,
    ):
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._incoming = incoming
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="carclf-model")

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        """Start the worker on the running event loop (again, if the old loop is gone)."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return
        self._queue = asyncio.Queue()
        self._task = loop.create_task(self._work(), name="carclf-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.cancel()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, tensors: list[torch.Tensor]) -> list[np.ndarray]:
        """Model outputs for ``tensors``, in order. Raises :class:`QueueFull` when no room."""
        self.start()
        if self.depth + len(tensors) > self.max_queue:
            raise QueueFull(f"{self.depth} images already waiting (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        items = [_Item(t, loop.create_future()) for t in tensors]
        for item in items:
            self._queue.put_nowait(item)
        try:
            return list(await asyncio.gather(*(i.future for i in items)))
        except BaseException:
            for i in items:  # timed out or failed: the worker skips what is already done
                i.future.cancel()
            raise

    async def _collect(self) -> list[_Item]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if len(batch) >= self.max_batch or self._incoming() == 0:
                break
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.0005)
        return [item for item in batch if not item.future.done()]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            start = time.perf_counter()
            try:
                stacked = torch.stack([item.tensor for item in batch])
                out = await loop.run_in_executor(self._executor, self._run, stacked)
            except asyncio.CancelledError:
                for item in batch:
                    item.future.cancel()
                raise
            except Exception as e:  # a model failure fails this batch, not the worker
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            self._on_batch(len(batch), time.perf_counter() - start)
            for item, row in zip(batch, out, strict=True):
                if not item.future.done():
                    item.future.set_result(row)
