"""`chroma run` on a free local port with its data in a directory of the bench's, as .ci/run starts it.
`chroma run` binds the port itself and takes no socket: the port is free when it is picked."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from app.testing.live_server import bound_socket


@contextmanager
def chroma_server(data: Path) -> Iterator[tuple[str, int]]:
    with bound_socket() as sock:
        port = sock.getsockname()[1]
    chroma = Path(sys.executable).parent / "chroma"
    log = (data.parent / "chroma.log").open("w")
    server = subprocess.Popen(
        [str(chroma), "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 60
        while server.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError("chroma run did not become ready")
        yield "127.0.0.1", port
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
