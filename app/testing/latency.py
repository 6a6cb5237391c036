"""A network leg's one-way delay, for the stand-ins in benchmarks: every message arrives `delay`
seconds after it was sent, in order. `Outbox` delays what a stand-in sends, `arrivals` what it
receives, so a stand-in given a delay puts it on both directions of its leg.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_END = object()


class Outbox(Generic[T]):
    """Sends each item through `send` `delay` seconds after it was put, in order, from its own task."""

    def __init__(self, send: Callable[[T], Awaitable[Any]], delay: float, name: str) -> None:
        self._send = send
        self.delay = delay
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()
        self._task = self._loop.create_task(self._run(), name=name)

    def put(self, item: T) -> None:
        self._queue.put_nowait((self._loop.time() + self.delay, item))

    async def _run(self) -> None:
        while True:
            due, item = await self._queue.get()
            await asyncio.sleep(max(0.0, due - self._loop.time()))
            if item is _END:
                return
            try:
                await self._send(item)
            except Exception:
                return  # the peer has gone: what is still in flight is lost, as on a network

    async def aclose(self) -> None:
        """Deliver what was put so far (each after its delay), then stop."""
        self._queue.put_nowait((self._loop.time(), _END))
        await asyncio.gather(self._task, return_exceptions=True)


async def arrivals(source: AsyncIterable[T], delay: float) -> AsyncIterator[T]:
    """`source`'s items, each `delay` seconds after it came in (read as soon as it is there, so the
    delays do not add up); `source`'s own error, if it ends with one, comes last."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()

    async def read() -> None:
        try:
            async for item in source:
                queue.put_nowait((loop.time() + delay, item))
        finally:
            queue.put_nowait((loop.time() + delay, _END))

    reader = loop.create_task(read(), name="delayed-arrivals")
    try:
        while True:
            due, item = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if item is _END:
                await reader  # its error, if it ended with one
                return
            yield item
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
