"""`python -m app call-back MESSAGE_ID [--at "2026-12-07 10:00"]`: schedule a message's call-back.

It is written to the records store, where the running server's dialer finds it; it is placed at the
first moment at or after `--at` (default now) that the rules allow, which this prints.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TextIO

from app.callbacks.dialer import Planner
from app.callbacks.store import OPEN
from app.clock import CallClock
from app.departments.config import DepartmentsError
from app.departments.directory import Directory
from app.records.store import open_for_reading
from app.settings import Settings


def parse_at(text: str) -> datetime:
    """`2026-12-07 10:00` (UTC unless it says otherwise, like `--since`)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f'--at {text!r}: give a time like "2026-12-07 10:00" (UTC unless it says +01:00)') from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


async def call_back(settings: Settings, message_id: int, at: str | None, out: TextIO) -> int:
    try:
        not_before = parse_at(at) if at else None
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    directory = Directory(settings, CallClock())
    try:
        directory.load()
    except DepartmentsError as exc:
        print(f"{exc.source} has mistakes:", *exc.lines, sep="\n  ", file=sys.stderr)
        return 2
    store = await open_for_reading(settings)
    try:
        now = datetime.now(UTC)
        callback = await store.callbacks.schedule(message_id, not_before or now, Planner(settings, directory).plan, now)
    finally:
        await store.stop()
    if callback is None:
        print(f"There is no message {message_id}.", file=sys.stderr)
        return 1
    print(f"Message {message_id}: call-back {callback.shown()}.", file=out)
    return 0 if callback.state in OPEN else 1
