"""`python -m app` in its own process, for benchmarks: the load generator must not share its loop."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def app_process(tmp: Path, env: dict[str, str], ready_path: str = "/readyz") -> Iterator[tuple[int, int]]:
    """Serve on a free port with `env` over the inherited environment; yields (port, pid) once ready."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "--host", "127.0.0.1"], env={**os.environ, **env, "PORT": str(port)}, cwd=tmp
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}{ready_path}").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the server did not become ready ({ready_path})")
        yield port, server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)
