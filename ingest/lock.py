"""One ingest at a time per index, never two writers.

Embedded: an exclusive flock on INDEX_DIR/ingest.lock; the kernel drops it when its holder dies,
even by SIGKILL. On a Chroma server, ingests may run on different machines, so the lock is a lease
kept in Chroma (`ingest.lease`). Either way a second ingest waits a bounded time, then refuses with
a message naming the holder.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.knowledge.store import http_client
from app.settings import Settings
from ingest.errors import IngestBusy
from ingest.lease import Lease

LOCK_FILE = "ingest.lock"
_POLL_SECONDS = 0.1


@contextmanager
def ingest_lock(settings: Settings, wait_seconds: float) -> Iterator[Lease | None]:
    """Held for the whole ingest; yields the lease on a Chroma server (check it before switching)."""
    if not settings.chroma_server:
        with _flock(settings.index_dir, wait_seconds):
            yield None
        return
    lease = Lease(
        http_client(settings),
        f"Chroma server {settings.chroma_host}:{settings.chroma_port}",
        settings.ingest_lease_seconds,
    )
    lease.acquire(wait_seconds)
    try:
        yield lease
    finally:
        lease.release()


@contextmanager
def _flock(index_dir: Path, wait_seconds: float) -> Iterator[None]:
    index_dir.mkdir(parents=True, exist_ok=True)
    path = index_dir / LOCK_FILE
    with path.open("a+") as handle:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
                    raise IngestBusy(
                        f"another ingest (pid {holder}) is writing this index ({path} is locked); "
                        f"waited {wait_seconds:g} s; run again when it has finished"
                    ) from None
                time.sleep(_POLL_SECONDS)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
