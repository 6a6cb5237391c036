"""Running `make call` as a new user does: the real command in its own process, in a checkout whose
settings come only from its own `.env`."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

from app.settings import Settings
from tests.support.paths import ENV_EXAMPLE, KNOWLEDGE

COMMAND = [sys.executable, "-m", "app.testing.phone"]  # what `make call` runs


def checkout(root: Path, data_dir: Path, index: Path) -> Path:
    """A fresh clone after `make run` at `root`: .env.example, the sample documents, and the index
    built from them (and the embedding model exported into `data_dir`, when it is there)."""
    root.mkdir()
    shutil.copy(ENV_EXAMPLE, root / ".env.example")
    (root / "knowledge").symlink_to(KNOWLEDGE)
    shutil.copytree(index, root / "data" / "index")
    if (data_dir / "models").is_dir():
        shutil.copytree(data_dir / "models", root / "data" / "models")
    return root


def environment() -> dict[str, str]:
    """This machine's environment without any Switchboard setting: only the generated .env counts."""
    return {name: value for name, value in os.environ.items() if name.lower() not in Settings.model_fields}


async def run(root: Path, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *args, cwd=root, env=environment(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(timeout):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
