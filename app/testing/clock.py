"""A clock that says what it is told: tests, benchmarks and `make call --at` set the time the app reads
opening hours against (`create_app(settings, clock=...)`)."""

from __future__ import annotations

from datetime import UTC, datetime


class SetClock:
    def __init__(self, at: datetime) -> None:
        self.set(at)

    def set(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("set the clock to an aware datetime")
        self._at = at.astimezone(UTC)

    def now(self, call_sid: str | None = None) -> datetime:
        return self._at
