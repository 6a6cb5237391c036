"""Serve an app with the real Hypercorn on 127.0.0.1 (or a socket bound elsewhere) and a free port, inside
the current event loop."""

from __future__ import annotations

import asyncio
import socket

import httpx
from quart import Quart

from app.serving.server import STARTUP_TIMEOUT_S, serve


def bound_socket() -> socket.socket:
    """A socket bound to 127.0.0.1 and a free port, held so nothing else takes the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


class LiveServer:
    def __init__(self, app: Quart, sock: socket.socket | None = None) -> None:
        """`sock`: an already bound socket, when the app must know its own address before it serves."""
        self.app = app
        self._sock = sock
        self.host = "127.0.0.1"
        self.port = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def __aenter__(self) -> LiveServer:
        sock = self._sock or bound_socket()
        self.host, self.port = sock.getsockname()[:2]
        # Hypercorn takes the bound socket over by file descriptor: no race for the port.
        self._task = asyncio.create_task(serve(self.app, f"fd://{sock.detach()}", self._stop.wait), name="live-server")
        await self._wait_ready()
        return self

    async def _wait_ready(self) -> None:
        async with httpx.AsyncClient() as client, asyncio.timeout(STARTUP_TIMEOUT_S):
            while True:
                if self._task is not None and self._task.done():
                    self._task.result()
                try:
                    if (await client.get(f"{self.http_url}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    await asyncio.sleep(0.02)

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
