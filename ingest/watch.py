"""`make ingest ARGS=--watch`: ingest, then ingest again each time the documents settle after a change.

watchfiles (inotify on Linux) groups the changes of a burst, a folder copied in or an editor saving
three files, until the folder has been quiet for SETTLE_MS (at most MAX_BATCH_MS), so a burst is one
ingest. An ingest that fails (a folder emptied, a busy index) is reported and the watch goes on; one
that finds nothing changed (a temporary file come and gone) says nothing.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from app.knowledge.embedding import ModelNotFound
from app.settings import Settings
from ingest.errors import IngestError
from ingest.pipeline import StrictRefused, run_ingest
from ingest.report import Report

SETTLE_MS = 400
MAX_BATCH_MS = 5_000
RUST_TIMEOUT_MS = 1_000


def watch(settings: Settings, source: Path | None, *, wait_seconds: float, as_json: bool, strict: bool) -> None:
    """Runs until interrupted: Ctrl-C, or SIGTERM from a service manager, stops it the same way."""
    import watchfiles

    signal.signal(signal.SIGTERM, _interrupt)
    root = source if source is not None else settings.knowledge_dir

    def ingest(quiet_if_unchanged: bool) -> None:
        _run(
            lambda: run_ingest(settings, source, wait_seconds=wait_seconds, progress=not as_json, strict=strict),
            as_json,
            quiet_if_unchanged,
        )

    try:
        ingest(quiet_if_unchanged=False)
        watching = False
        # An empty batch every RUST_TIMEOUT_MS when nothing changes: the first one says the watch is on.
        batches = watchfiles.watch(
            root,
            debounce=MAX_BATCH_MS,
            step=SETTLE_MS,
            rust_timeout=RUST_TIMEOUT_MS,
            yield_on_timeout=True,
            raise_interrupt=False,
        )
        for changes in batches:
            if not watching:  # catch up with what changed while the watch was starting
                watching = True
                ingest(quiet_if_unchanged=True)
                print(f"watching {root} for changes (Ctrl-C to stop)", file=sys.stderr, flush=True)
            elif changes:
                ingest(quiet_if_unchanged=True)
    except KeyboardInterrupt:  # an ingest cut short is undone by the next one
        return


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(ingest: Callable[[], Report], as_json: bool, quiet_if_unchanged: bool) -> None:
    try:
        report = ingest()
    except StrictRefused as exc:
        report = exc.report
        print(f"ingest: {exc}", file=sys.stderr, flush=True)
    except (IngestError, ModelNotFound) as exc:
        print(json.dumps({"error": str(exc)}) if as_json else f"ingest: {exc}", flush=True)
        return
    if not (report.noop and quiet_if_unchanged):
        print(json.dumps(report.to_json()) if as_json else report.human(), flush=True)
