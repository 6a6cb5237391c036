"""What a running ingest says about itself on stderr: the stage it is in, and for the long stages a bar
with the time left.

Each stage also has a checkpoint a little way into it (after its first file, batch or step). An
ingest asked to `--pause-at` a stage stops itself there with SIGSTOP, so a test (or a curious
operator) can kill it at a known point and see what a crash there leaves behind.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

STAGES = ("parsing", "embedding", "writing", "switching")


class Stages:
    def __init__(self, show: bool, pause_at: str | None = None) -> None:
        if pause_at is not None and pause_at not in STAGES:
            raise ValueError(f"--pause-at takes one of {', '.join(STAGES)}")
        self.show = show
        self._pause_at = pause_at

    def start(self, name: str, detail: str = "") -> None:
        if self.show:
            print(f"[ingest] {name}{': ' + detail if detail else ''}", file=sys.stderr, flush=True)

    def bar(self, name: str, total: int, unit: str) -> Any:
        """A progress bar with rate and time left (tqdm), shown only when the ingest shows progress."""
        from tqdm import tqdm

        return tqdm(total=total, desc=name, unit=unit, file=sys.stderr, disable=not self.show, leave=False)

    def checkpoint(self, name: str) -> None:
        if name == self._pause_at:
            self._pause_at = None
            print(f"[ingest] paused at {name} (pid {os.getpid()})", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
