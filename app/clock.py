"""The clock opening hours are read against: one object on `Services`, so a test, a benchmark or a
scenario can set the time the app sees (`app.testing.clock.SetClock`) without patching.

It is asked with the call's SID whenever a decision is made during a call, so a clock can give each
call a time of its own (a scenario's `at:`); the system clock ignores it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self, call_sid: str | None = None) -> datetime:
        """The current time for this call (None: outside any call), timezone-aware."""
        ...


class SystemClock:
    def now(self, call_sid: str | None = None) -> datetime:
        return datetime.now(UTC)
