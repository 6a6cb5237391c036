"""One ingest at a time per index: an exclusive flock on INDEX_DIR/ingest.lock.

The second ingest waits a bounded time, then refuses with a message naming the holder. The kernel
drops the lock when its holder dies, even by SIGKILL, so a crashed ingest never blocks the next one.
In server mode the lock still lives in the local INDEX_DIR: it covers ingests run from this machine.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ingest.errors import IngestBusy

LOCK_FILE = "ingest.lock"
_POLL_SECONDS = 0.1


@contextmanager
def ingest_lock(index_dir: Path, wait_seconds: float) -> Iterator[None]:
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
