"""What time it is on a call: the wall clock, unless the call's clock was set.

Opening hours are read against one object on `Services`, asked with the call's SID whenever a
decision is made during a call. Call scenarios (`python -m app test-calls`, a scenario's `at:`) set
the time of the calls they place, so what depends on the time of day can be tried at any hour; the
time then runs on from there. Tests and benchmarks may pass a clock of their own
(`app.testing.clock.SetClock`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self, call_sid: str | None = None) -> datetime:
        """The current time for this call (None: outside any call), timezone-aware."""
        ...


class CallClock:
    def __init__(self) -> None:
        self._set: dict[str, tuple[datetime, float]] = {}  # call SID -> (its time, monotonic when set)

    def now(self, call_sid: str | None = None) -> datetime:
        """The time on this call (timezone-aware)."""
        start = self._set.get(call_sid) if call_sid else None
        if start is None:
            return datetime.now(UTC)
        at, since = start
        return at + timedelta(seconds=time.monotonic() - since)

    def set(self, call_sid: str, at: datetime) -> None:
        """From now on, this call's time runs on from `at` (timezone-aware)."""
        if at.tzinfo is None:
            raise ValueError("a call's clock needs a time with its UTC offset")
        self._set[call_sid] = (at, time.monotonic())

    def forget(self, call_sid: str) -> None:
        self._set.pop(call_sid, None)
