"""A webhook receiver for tests: a real aiohttp server on 127.0.0.1 that records every request, answers
from a script (then 200), and can be told to hold requests without answering, as a slow receiver does,
or to take `delay` seconds over each answer. With `body`, a 2xx answer carries it as JSON (a caller
lookup's answer)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

HOLD_S = 30.0  # a slow receiver: 30 s to answer, unless released sooner


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int | None = None  # what it was answered; None while held
    at: float = field(default_factory=time.perf_counter)  # when it arrived

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    statuses: list[int] = field(default_factory=list)  # answered in turn, then 200
    hold: bool = False
    requests: list[Received] = field(default_factory=list)
    body: bytes | None = None  # what a 2xx answer carries (application/json)
    delay: float = 0.0  # how long the receiver takes over each answer

    def __post_init__(self) -> None:
        self.changed = asyncio.Event()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/switchboard?token=abc"

    @property
    def held(self) -> int:
        return sum(1 for r in self.requests if r.status is None)

    def release(self) -> None:
        """Answer every held request (and every later one) at once."""
        self.hold = False
        self._release.set()

    def delivered(self) -> list[dict[str, Any]]:
        """The events answered with a 2xx."""
        return [r.event for r in self.requests if r.status is not None and 200 <= r.status < 300]

    async def wait(self, check: Callable[[Receiver], bool], timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not check(self):
                self.changed.clear()
                await self.changed.wait()

    async def _handle(self, request: web.Request) -> web.Response:
        seen = Received(dict(request.headers), await request.read())
        self.requests.append(seen)
        self.changed.set()
        if self.hold:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HOLD_S):
                    await self._release.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        seen.status = self.statuses.pop(0) if self.statuses else 200
        self.changed.set()
        if self.body is not None and seen.status < 300:
            return web.Response(status=seen.status, body=self.body, content_type="application/json")
        return web.Response(status=seen.status, text="thanks" if seen.status < 300 else "try again later")

    async def start(self, sock: socket.socket | None = None) -> Receiver:
        """Serve on `sock` (bound earlier, so its port was known and refused connections until now)."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        if sock is None:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
