"""Micro-batching: the prediction requests of one pipeline that arrive together are scored
together.

A request handler awaits `MicroBatcher.submit`. One task per pipeline takes the requests
waiting (whole requests, up to `max_rows` rows; a larger request goes alone), optionally after
waiting `wait_seconds` for more once the first has arrived, and scores them in one call on its
own thread: one online store read for all their entities and one model call per answering
version, instead of one of each per request. The event loop goes on reading and answering
requests meanwhile, and the requests that arrive while a batch is scored form the next one, so
under load the batches grow by themselves and alone a request is scored at once.

Per request, the scoring returns its answer or the exception that refuses it (an unknown
entity refuses that request only); an error of the whole batch fails each of its requests.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Rows scored in one call at most (a request is never split; a larger one goes alone). 100:
# single-entity requests still form batches large enough to amortize the model's per-call
# cost, and a 100-entity request, already a batch, is not queued behind others (its p99 was
# 1.2-1.3x the plain script's with 1000, 0.5x with 100; docs/performance.md#online-inference).
DEFAULT_MAX_ROWS = 100
# How long the first request of a batch waits for others: 0, under load the batches fill up
# while the previous one is scored.
DEFAULT_WAIT_SECONDS = 0.0


@dataclass
class Pending:
    """One request waiting for its batch."""

    rows: list[dict[str, Any]]
    allow_missing: bool
    future: asyncio.Future[Any] | None = None  # None: scored directly, not through a batcher
    started: float = field(default_factory=time.perf_counter)
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class MicroBatcher:
    """Collects the requests of one pipeline and scores them in batches with `score`, which
    takes the batch and returns, per request, its answer or the exception that refuses it."""

    def __init__(
        self,
        name: str,
        score: Callable[[list[Pending]], list[Any]],
        max_rows: int = DEFAULT_MAX_ROWS,
        wait_seconds: float = DEFAULT_WAIT_SECONDS,
    ) -> None:
        self.name = name
        self.score = score
        self.max_rows = max_rows
        self.wait_seconds = wait_seconds
        self._waiting: deque[Pending] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.batches = 0
        self.requests = 0

    def start(self) -> None:
        """Start the batching task on the running event loop (the application's lifespan)."""
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"score-{self.name}")
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batch-{self.name}")

    async def stop(self) -> None:
        """Score what is waiting, then stop."""
        if self._task is None:
            return
        while self._waiting and self.running:
            await asyncio.sleep(0.01)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def submit(self, rows: list[dict[str, Any]], allow_missing: bool) -> Any:
        """The request's answer, scored in the next batch; raises what refuses it."""
        if self._arrived is None:
            raise RuntimeError(f"the batcher of {self.name} is not started")
        pending = Pending(rows, allow_missing, asyncio.get_running_loop().create_future())
        self._waiting.append(pending)
        self._arrived.set()
        return await pending.future

    def _take(self) -> list[Pending]:
        """The next batch: whole requests in arrival order, up to max_rows rows."""
        batch: list[Pending] = []
        rows = 0
        while self._waiting and (not batch or rows + len(self._waiting[0].rows) <= self.max_rows):
            pending = self._waiting.popleft()
            if pending.future is not None and pending.future.done():  # the client went away
                continue
            batch.append(pending)
            rows += len(pending.rows)
        return batch

    async def _run(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            if self.wait_seconds > 0:
                await asyncio.sleep(self.wait_seconds)
            batch = self._take()
            if not self._waiting:
                self._arrived.clear()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.score, batch)
            except Exception as exc:  # the whole batch failed: each request gets the error
                results = [exc] * len(batch)
            self.batches += 1
            self.requests += len(batch)
            for pending, result in zip(batch, results, strict=True):
                if pending.future is None or pending.future.done():
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)
