"""What is written under DATA_DIR is readable by its owner only: callers' words are in it.

The commands that write there (`python -m app`, `make call`) create everything with mode 0600 (files)
and 0700 (directories), whatever library writes it. The records file and the call log are also
created so explicitly, for a server started any other way (tests, an embedding host's own process):
SQLite gives its -wal and -shm files the mode of the database file.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def owner_only() -> None:
    """Everything this process creates from now on: readable by its owner only."""
    os.umask(0o077)


def private_dir(path: Path) -> Path:
    """The directory, and any parent that does not exist yet, created 0700 (an existing one is left)."""
    for missing in reversed([p for p in (path, *path.parents) if not p.exists()]):
        missing.mkdir(mode=DIR_MODE, exist_ok=True)
    return path


def private_file(path: Path) -> Path:
    """The file created 0600 if missing, and made 0600 if it was not (a store from an older version)."""
    private_dir(path.parent)
    descriptor = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, FILE_MODE)
    try:
        os.fchmod(descriptor, FILE_MODE)
    finally:
        os.close(descriptor)
    return path
