"""Dynamic batching: concurrent requests' texts merged into batches by tokens and a short wait, split back to callers.

    batcher = Batcher(run, max_batch_tokens=16384, max_batch_size=128, max_wait=0.005, max_queue=1024)
    await batcher.start()
    vectors = await batcher.submit(("embed", True), texts, costs=token_counts)   # one result per text, in order

Each text is one item with a `key` (what to run: items of one key batch together) and a `cost` (its tokens). One
worker coroutine takes the oldest item's key, waits up to `max_wait` from that item's arrival for more of the same
key (unless the batch is already full), takes items in arrival order while their tokens fit in `max_batch_tokens`
(at least one) and their count in `max_batch_size`, sorts them longest first and runs `run(key, payloads)` on one
inference thread, so the event loop keeps accepting requests meanwhile; the next batch forms while this one runs.
A batch that raises is run again one item at a time, so only the culprit's caller gets the error. `max_queue`
bounds the items waiting or running: `submit` raises `QueueFull` at once beyond it (the server answers 429).

LitServe's batching (0.2.19) was not used: it batches a fixed number of requests, not tokens, and runs the model in
worker processes of its own behind its own routes, where one request here is several texts and every route of
Text Embeddings Inference has to answer in TEI's shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """More items would wait than `max_queue` allows."""


class ShuttingDown(Exception):
    """The batcher is closed: no new work."""


@dataclass(eq=False)
class _Item:
    key: Hashable
    payload: Any
    cost: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """What one batch was: its key, number of items, tokens, seconds in `run`, and how long its oldest item waited."""

    key: Hashable
    size: int
    tokens: int
    seconds: float
    waited: float


class Batcher:
    """See the module docstring. `on_batch(stats)` is called after each batch (metrics); `run` must return one
    result per payload, in order."""

    def __init__(self, run: Callable[[Hashable, list[Any]], Sequence[Any]], max_batch_tokens: int = 16384,
                 max_batch_size: int = 128, max_wait: float = 0.005, max_queue: int = 1024,
                 on_batch: Callable[[BatchStats], None] | None = None):
        if max_batch_tokens < 1 or max_batch_size < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch_tokens, max_batch_size and max_queue must be at least 1, max_wait >= 0.")
        self.run = run
        self.max_batch_tokens, self.max_batch_size = int(max_batch_tokens), int(max_batch_size)
        self.max_wait, self.max_queue = float(max_wait), int(max_queue)
        self.on_batch = on_batch
        self.in_flight = 0  # items waiting or running
        self._pending: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtl-inference")
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name="mtl-batcher")

    async def close(self) -> None:
        """Refuse new work, finish every item already submitted, stop the worker."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._worker is not None:
            await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ submitting
    async def submit(self, key: Hashable, payloads: Sequence[Any], costs: Sequence[int]) -> list[Any]:
        """Run `payloads` (one request's texts) under `key`; their results, in order. Raises `QueueFull` when they
        do not fit in the queue (none of them is queued), `ShuttingDown` once closed, or an item's own exception."""
        if self._closed or self._worker is None:
            raise ShuttingDown("The server is shutting down.")
        if self.in_flight + len(payloads) > self.max_queue:
            raise QueueFull(f"The server is overloaded: {self.in_flight} inputs are queued (at most "
                            f"{self.max_queue}); retry later.")
        loop = asyncio.get_running_loop()
        items = [_Item(key, payload, max(int(cost), 1), loop.create_future()) for payload, cost in zip(payloads, costs)]
        self._pending.extend(items)
        self.in_flight += len(items)
        self._wakeup.set()
        return list(await asyncio.gather(*(item.future for item in items)))

    # ------------------------------------------------------------------ the worker
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._pending:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            first = self._pending[0]
            deadline = first.arrived + self.max_wait
            while not self._closed and not self._full(first.key):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take(first.key)
            if not batch:
                continue
            batch.sort(key=lambda item: -item.cost)  # longest first: sorted by length, so batches pad little
            started = time.monotonic()
            outcomes = await loop.run_in_executor(self._executor, self._run_isolated, first.key,
                                                  [item.payload for item in batch])
            for item, (ok, value) in zip(batch, outcomes):
                if not item.future.done():
                    item.future.set_result(value) if ok else item.future.set_exception(value)
            self.in_flight -= len(batch)
            if self.on_batch is not None:
                self.on_batch(BatchStats(first.key, len(batch), sum(item.cost for item in batch),
                                         time.monotonic() - started, started - min(item.arrived for item in batch)))

    def _drop_cancelled(self) -> None:
        """Forget items whose caller went away (a closed connection cancels its request)."""
        if any(item.future.done() for item in self._pending):
            kept = [item for item in self._pending if not item.future.done()]
            self.in_flight -= len(self._pending) - len(kept)
            self._pending = deque(kept)

    def _full(self, key: Hashable) -> bool:
        tokens = count = 0
        for item in self._pending:
            if item.key == key:
                tokens, count = tokens + item.cost, count + 1
                if tokens >= self.max_batch_tokens or count >= self.max_batch_size:
                    return True
        return False

    def _take(self, key: Hashable) -> list[_Item]:
        """Items of `key` in arrival order while they fit (at least one); the others stay queued in order."""
        batch, kept, tokens = [], deque(), 0
        for item in self._pending:
            fits = not batch or (tokens + item.cost <= self.max_batch_tokens and len(batch) < self.max_batch_size)
            if item.key == key and fits and not item.future.done():
                batch.append(item)
                tokens += item.cost
            elif item.future.done():
                self.in_flight -= 1
            else:
                kept.append(item)
        self._pending = kept
        return batch

    def _run_isolated(self, key: Hashable, payloads: list[Any]) -> list[tuple[bool, Any]]:
        """`run` on the batch; when it fails, on each payload alone, so one bad input fails only its own caller."""
        try:
            results = list(self.run(key, payloads))
            if len(results) != len(payloads):
                raise RuntimeError(f"run returned {len(results)} results for {len(payloads)} inputs")
            return [(True, result) for result in results]
        except Exception as error:  # noqa: BLE001 - isolated below, item by item
            if len(payloads) == 1:
                return [(False, error)]
            logger.warning(f"A batch of {len(payloads)} failed ({type(error).__name__}: {error}); "
                           "running its inputs one by one")
            outcomes = []
            for payload in payloads:
                try:
                    outcomes.append((True, self.run(key, [payload])[0]))
                except Exception as single:  # noqa: BLE001 - the caller of this input gets it
                    outcomes.append((False, single))
            return outcomes


__all__ = ["Batcher", "BatchStats", "QueueFull", "ShuttingDown"]
