"""Running `make call` as a new user does: the real command in its own process, in a checkout whose
settings come only from its own `.env`."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tomllib
from pathlib import Path

from app.departments.schedule import WEEKDAYS
from app.settings import Settings
from tests.support.paths import DEPARTMENTS, ENV_EXAMPLE, KNOWLEDGE

COMMAND = [sys.executable, "-m", "app.testing.phone"]  # what `make call` runs


def checkout(root: Path, data_dir: Path, index: Path, *, always_open: bool = False) -> Path:
    """A fresh clone after `make run` at `root`: .env.example, the sample departments, the sample
    documents, and the index built from them (and the embedding model exported into `data_dir`, when
    it is there). `always_open`: the departments open around the clock, for a call whose course must
    not depend on when it runs."""
    root.mkdir()
    shutil.copy(ENV_EXAMPLE, root / ".env.example")
    if always_open:
        departments = tomllib.loads(DEPARTMENTS.read_text())["departments"]
        always = ", ".join(f'{day} = "00:00-24:00"' for day in WEEKDAYS)
        (root / "departments.toml").write_text(
            "".join(
                f'[departments.{name}]\nnumber = "{d["number"]}"\nhandles = "{d["handles"]}"\n'
                f'time_zone = "{d["time_zone"]}"\nhours = {{ {always} }}\n\n'
                for name, d in departments.items()
            )
        )
    else:
        shutil.copy(DEPARTMENTS, root / "departments.toml")
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
