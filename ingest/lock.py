"""One ingest at a time per index, never two writers.

Embedded: an exclusive flock on INDEX_DIR/ingest.lock; the kernel drops it when its holder dies,
even by SIGKILL. On a Chroma server, ingests may run on different machines, so the lock is a lease
kept in Chroma (`ingest.lease`). Either way a second ingest waits a bounded time, then refuses with
a message naming the holder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from app.knowledge.store import flocked, http_client
from app.settings import Settings
from ingest.errors import IngestBusy
from ingest.lease import Lease

LOCK_FILE = "ingest.lock"


@contextmanager
def ingest_lock(
    settings: Settings, wait_seconds: float, waiting: Callable[[], None] | None = None
) -> Iterator[Lease | None]:
    """Held for the whole ingest; yields the lease on a Chroma server (check it before switching).
    `waiting()` is called once if another ingest holds it, before waiting for that one to finish."""
    if not settings.chroma_server:
        with _flock(settings.index_dir, wait_seconds, waiting):
            yield None
        return
    lease = Lease(
        http_client(settings),
        f"Chroma server {settings.chroma_host}:{settings.chroma_port}",
        settings.ingest_lease_seconds,
    )
    lease.acquire(wait_seconds, waiting)
    try:
        yield lease
    finally:
        lease.release()


@contextmanager
def _flock(index_dir: Path, wait_seconds: float, waiting: Callable[[], None] | None) -> Iterator[None]:
    path = index_dir / LOCK_FILE

    def busy() -> IngestBusy:
        holder = path.read_text().strip() or "unknown"
        return IngestBusy(
            f"another ingest (pid {holder}) is writing this index ({path} is locked); "
            f"waited {wait_seconds:g} s; run again when it has finished"
        )

    with flocked(path, exclusive=True, wait_seconds=wait_seconds, busy=busy, waiting=waiting) as handle:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
