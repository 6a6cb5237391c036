"""What Hypercorn's WebSocket layer alone costs at the bridge's load, for comparison with the bridge.

An echo server with no product logic and no upstream, served by Hypercorn on uvloop as the product
is, twice: as a bare ASGI app and as a Quart route. N clients send Twilio-sized media frames at 50
frames/s each, each on its own phase, and read the echoes, as the bridge bench's callers do. The
server's CPU per call is the floor under the bridge's own figure: one receive and one send per frame,
which is exactly the Twilio side of a relay.

    python -m tests.bench.bench_bridge_floor --serve raw|quart FD    (what the bench starts, on a listening socket)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import aiohttp
import httpx
import uvloop

from tests.support.paths import REPO
from tests.support.ports import listening_socket
from tests.support.processes import cpu_seconds

CALLS = 50
SECONDS = float(os.environ.get("BENCH_BRIDGE_SECONDS", "20"))
FRAME_S = 0.02
MEDIA = json.dumps(
    {
        "event": "media",
        "streamSid": "MZ" + "0" * 32,
        "media": {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": "f" * 216},
    }
)


def _serve(kind: str, fd: int) -> None:
    from hypercorn.asyncio import serve
    from quart import Quart, websocket

    from app.serving.server import hypercorn_config

    quart = Quart(__name__)

    @quart.get("/healthz")
    async def healthz() -> str:
        return "ok"

    @quart.websocket("/media-stream")
    async def echo_route() -> None:
        await websocket.accept()
        while True:
            await websocket.send(await websocket.receive())

    async def bare(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "websocket":
            return await quart(scope, receive, send)
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message.get("text")})

    uvloop.run(serve(bare if kind == "raw" else quart, hypercorn_config(f"fd://{fd}")))


async def _call(session: aiohttp.ClientSession, url: str, index: int, stop: asyncio.Event) -> None:
    async with session.ws_connect(url, compress=0, autoping=False) as ws:

        async def drain() -> None:
            async for _ in ws:
                pass

        reader = asyncio.create_task(drain())
        next_at = time.perf_counter() + FRAME_S * index / CALLS
        while not stop.is_set():
            await ws.send_str(MEDIA)
            next_at += FRAME_S
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        reader.cancel()


async def _load(url: str, pid: int) -> float:
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        calls = [asyncio.create_task(_call(session, url, n, stop)) for n in range(CALLS)]
        await asyncio.sleep(2.0)
        cpu0, wall0 = sum(cpu_seconds(pid)), time.perf_counter()
        await asyncio.sleep(SECONDS)
        cpu1, wall1 = sum(cpu_seconds(pid)), time.perf_counter()
        stop.set()
        await asyncio.gather(*calls, return_exceptions=True)
    return (cpu1 - cpu0) / (wall1 - wall0) / CALLS * 100


def test_hypercorn_echo_floor() -> None:
    for kind in ("raw", "quart"):
        with listening_socket() as sock:
            port = sock.getsockname()[1]
            serve = [sys.executable, "-m", "tests.bench.bench_bridge_floor", "--serve", kind, str(sock.fileno())]
            server = subprocess.Popen(serve, cwd=REPO, pass_fds=(sock.fileno(),))
        try:
            # The socket listens already: this waits in its backlog until the server takes it.
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
            per_call = uvloop.run(_load(f"ws://127.0.0.1:{port}/media-stream", server.pid))
        finally:
            server.terminate()
            server.wait(timeout=30)
        what = "bare ASGI" if kind == "raw" else "Quart route"
        print(f"\nHypercorn echo floor ({what}), {CALLS} calls at 50 frames/s: server CPU {per_call:.2f} %/call")
        assert per_call > 0


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    _serve(sys.argv[2], int(sys.argv[3]))
