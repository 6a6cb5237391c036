"""Recording off the hot path: calls and turns go into a bounded buffer, and one writer task writes
them in batches, one transaction each.

`add` never waits and never raises: a call or a turn pays for appending to a deque. If the store is
unreachable, the writer keeps the batch and retries with backoff while new records wait in the
buffer; past its bound new records are dropped and counted (`switchboard_records_dropped_total`).
On shutdown the buffer is flushed for a bounded time.

Turns are redacted on their way in, and a turn that may be half of a secret is held back until the
next turn of its call (`app.records.held`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque

from sqlalchemy.ext.asyncio import AsyncEngine

from app.observability import Metrics, one_line
from app.records.events import CallEnded, RecordEvent, TurnDone
from app.records.gaps import GapGrouper
from app.records.held import HeldTurns
from app.records.outbox import Outbox
from app.records.writer import write

log = logging.getLogger("switchboard.records")

CAPACITY = 20_000  # records waiting; about 2 KB each at most
BATCH = 200
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 15.0
WRITE_TIMEOUT_S = 15.0
FLUSH_TIMEOUT_S = 5.0


class Recorder:
    def __init__(
        self,
        engine: AsyncEngine,
        metrics: Metrics,
        gaps: GapGrouper | None,
        outbox: Outbox,
        *,
        ready: asyncio.Event | None = None,
        capacity: int = CAPACITY,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.gaps = gaps
        self.outbox = outbox
        self.capacity = capacity
        self._ready = ready  # set once the schema is in place (the store retries until it is)
        self._pending: deque[RecordEvent] = deque()
        self.held = HeldTurns()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()  # set while nothing is waiting to be written
        self._drained.set()
        self._added = 0  # records queued so far, and of those, written (in the same order)
        self._written = 0
        self._wrote = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def add(self, event: RecordEvent) -> None:
        kind = type(event)
        if kind is TurnDone:
            self._queue(self.held.add(event, time.monotonic()))  # type: ignore[arg-type]
            return
        if kind is CallEnded:
            self._queue(self.held.call_ended(event.call_sid))  # type: ignore[union-attr]
        self._append(event)

    def _queue(self, events: list[TurnDone]) -> None:
        for event in events:
            self._append(event)
        self._wake.set()  # also when a turn was held: the writer's wait now has a deadline

    def _append(self, event: RecordEvent) -> None:
        if len(self._pending) >= self.capacity:
            self.metrics.records_dropped.labels("buffer_full").inc()
            return
        self._pending.append(event)
        self._added += 1
        self._drained.clear()
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="records-writer")

    async def stop(self) -> None:
        """Write what is buffered (bounded), then stop; what could not be written is counted."""
        self._queue(self.held.release_all())
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is not None:
            if self._ready is None or self._ready.is_set():  # a store that never came up cannot be flushed to
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FLUSH_TIMEOUT_S):
                        await asyncio.shield(task)
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pending:
            self.metrics.records_dropped.labels("shutdown").inc(len(self._pending))
            log.warning("%d record(s) not written before shutdown", len(self._pending))
            self._pending.clear()

    async def flushed(self, timeout: float = 10.0) -> None:
        """Wait until everything added so far is written, held turns too (tests)."""
        self._queue(self.held.release_all())
        async with asyncio.timeout(timeout):
            await self._drained.wait()

    async def written(self, timeout: float = 10.0) -> None:
        """Wait until every record queued so far is written; turns held back stay held (a call's
        are let go when it ends, so after its end this means the whole call is written)."""
        target = self._added
        async with asyncio.timeout(timeout):
            while self._written < target:
                self._wrote.clear()
                await self._wrote.wait()

    async def _run(self) -> None:
        if self._ready is not None:
            await self._ready.wait()
        delay = RETRY_FIRST_S
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._wake.clear()
                deadline = self.held.next_deadline
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if deadline is None else max(0.0, deadline - time.monotonic())):
                        await self._wake.wait()
                self._queue(self.held.expired(time.monotonic()))
                continue
            batch = [self._pending[i] for i in range(min(BATCH, len(self._pending)))]
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.records_write_errors.inc()
                if self.gaps is not None:
                    self.gaps.forget()
                log.warning("records not written, retrying in %.1f s: %s", delay, one_line(exc))
                if self._stopping:
                    return
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_FIRST_S
            for _ in batch:
                self._pending.popleft()
            self._written += len(batch)
            self._wrote.set()
            self.metrics.records_written.inc(len(batch))
            if not self._pending:
                self._drained.set()

    async def _write(self, batch: list[RecordEvent]) -> None:
        if self.gaps is not None:
            for event in batch:
                if type(event) is TurnDone and event.unanswered and event.gap_vector is None:
                    event.gap_vector = await asyncio.to_thread(self.gaps.encode, event.unanswered)
        async with asyncio.timeout(WRITE_TIMEOUT_S), self.engine.begin() as conn:
            for event in batch:
                await write(conn, event, self.gaps, self.outbox)
        self.outbox.committed()
