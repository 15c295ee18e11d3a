"""Concurrent requests scored together: a :class:`MicroBatcher` runs one model call per batch on a worker thread.

N queued single-photo requests become one model call (a GPU's throughput comes from such batches; on a CPU it mainly
keeps queued requests served in arrival order). A full queue refuses new requests with :class:`QueueFullError`
(503 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import PhototagError

if TYPE_CHECKING:
    from ..model import TagModel
    from ..runtime import RunOptions
    from .uploads import DecodedImage


class QueueFullError(PhototagError):
    """The batcher already holds ``max_queue`` requests; ``retry_after`` is a guess in seconds."""

    http_status = 503
    code = "busy"

    def __init__(self, retry_after: int):
        super().__init__(f"the model queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


def make_scorer(model: TagModel, options: RunOptions | None = None) -> Callable[[Sequence[DecodedImage]], np.ndarray]:
    """A function scoring decoded uploads with ``model`` through the method interface: ``(n, n_tags)`` scores.

    The uploads were decoded once when they arrived; the model builds exactly the inputs its method declares from
    those pictures (the same preprocessing as ``predict``) and the request's user tags. Nothing is cached: neither
    on disk nor in memory, so a long-running server neither fills the cache nor grows.
    """

    def score(items: Sequence[DecodedImage]) -> np.ndarray:
        return model.score_pictures(
            [item.image for item in items], user_tags=[list(item.user_tags) for item in items], options=options
        )

    return score


class MicroBatcher:
    """Collects concurrent scoring requests into batches and runs them one batch at a time on a worker thread.

    Once a request is queued, the batcher waits at most ``max_wait_ms`` for more (or until ``max_batch`` images),
    then scores them in one call. While a batch runs, new requests queue up and form the next batch, so under load
    the batch size grows by itself.

    Args:
        score: Scores a list of items: ``(n_items, n_tags)``.
        max_batch: Most items per call (a request larger than this is one batch of its own).
        max_wait_ms: Extra wait for company once the first request of a batch has arrived.
    """

    def __init__(
        self,
        score: Callable[[Sequence[Any]], np.ndarray],
        *,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        max_queue: int | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1. Got {max_batch} instead.")
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue must be >= 1. Got {max_queue} instead.")
        self.score = score
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.batches = 0
        self.items = 0
        self.pending = 0  # requests submitted and not yet answered
        self.refused = 0  # requests refused because the queue was full
        self._seconds_per_item = 0.05  # running estimate, for Retry-After
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phototag-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="phototag-batcher")

    def retry_after(self) -> int:
        """Seconds a refused client should wait: about the time to score what is queued (1 to 60)."""
        return int(min(60, max(1, math.ceil(self.pending * self.max_batch * self._seconds_per_item))))

    def check_room(self) -> None:
        """Raise :class:`QueueFullError` when ``max_queue`` requests are already waiting."""
        if self.max_queue is not None and self.pending >= self.max_queue:
            self.refused += 1
            raise QueueFullError(self.retry_after())

    async def submit(self, items: Sequence[Any]) -> np.ndarray:
        """Score ``items`` (with whatever else is queued); returns their ``(len(items), n_tags)`` rows.

        Raises:
            QueueFullError: ``max_queue`` requests are already waiting.
            Exception: Whatever scoring this request alone raised (other requests of its batch are unaffected).
        """
        if self._queue is None or self._task is None or self._task.done():
            raise RuntimeError("The batcher is not running (server starting up or shutting down).")
        self.check_room()
        future = asyncio.get_running_loop().create_future()
        self.pending += 1
        try:
            self._queue.put_nowait((list(items), future))
            return await future
        finally:
            self.pending -= 1

    async def close(self) -> None:
        """Finish every queued request, then stop (graceful shutdown)."""
        if self._queue is not None and self._task is not None:
            self._queue.put_nowait(None)
            await self._task
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        held = None  # a request that would have overflowed the previous batch: it starts the next one
        stopping = False
        while not stopping:
            first = held if held is not None else await self._queue.get()
            held = None
            if first is None:
                break
            batch = [first]
            size = len(first[0])
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                try:
                    if self._queue.empty():
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        nxt = await asyncio.wait_for(self._queue.get(), remaining)
                    else:
                        nxt = self._queue.get_nowait()
                except TimeoutError:
                    break
                if nxt is None:
                    stopping = True
                    break
                if size + len(nxt[0]) > self.max_batch:
                    held = nxt
                    break
                batch.append(nxt)
                size += len(nxt[0])
            await self._score_batch(loop, batch)
        # Requests queued behind the stop marker still get their answer.
        rest = [held] if held is not None else []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                rest.append(item)
        for start in range(0, len(rest), self.max_batch):
            await self._score_batch(loop, rest[start : start + self.max_batch])

    async def _score_batch(self, loop: asyncio.AbstractEventLoop, batch: list) -> None:
        items = [item for request, _ in batch for item in request]
        started = time.monotonic()
        try:
            scores = await loop.run_in_executor(self._executor, self.score, items)
        except Exception as err:
            if len(batch) > 1:
                # One request's bad input must not fail the others: score each request of the batch alone.
                for one in batch:
                    await self._score_batch(loop, [one])
                return
            _, future = batch[0]
            if not future.done():
                future.set_exception(err)
            return
        elapsed = time.monotonic() - started
        self._seconds_per_item = 0.8 * self._seconds_per_item + 0.2 * elapsed / max(1, len(items))
        self.batches += 1
        self.items += len(items)
        start = 0
        for request, future in batch:
            if not future.done():
                future.set_result(scores[start : start + len(request)])
            start += len(request)
