"""The clock opening hours are read against: one object on `Services`, so a test, a benchmark or a
scenario can set the time the whole app sees (`app.testing.clock.SetClock`) without patching."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self, call_sid: str | None = None) -> datetime:
        """The current time, timezone-aware (`call_sid`: as that call sees it)."""


class SystemClock:
    def now(self, call_sid: str | None = None) -> datetime:
        return datetime.now(UTC)
