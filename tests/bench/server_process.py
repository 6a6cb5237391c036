"""`python -m app` in its own process, for benchmarks: the load generator must not share its loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from tests.support.servers import AppProcess


@contextmanager
def app_process(tmp: Path, env: dict[str, str], ready_path: str = "/readyz") -> Iterator[tuple[int, int]]:
    """Serve with `env` over the inherited environment; yields (port, pid) once ready. Waits in a
    thread of its own: a bench may call this from inside its event loop."""
    server = AppProcess(env, tmp)
    try:
        with ThreadPoolExecutor(1) as waiting:
            waiting.submit(asyncio.run, server.start(ready_path)).result()
        assert server.process is not None
        yield server.port, server.process.pid
    finally:
        server.stop()
