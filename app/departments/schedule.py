"""Opening hours: whether a department is open at a moment, and when it next opens.

A department's hours are ranges of wall-clock time per weekday, in its own time zone (IANA, read
with `zoneinfo`). A range belongs to the day it starts: "22:00-02:00" on Friday runs into Saturday
morning; "24:00" ends a range at midnight. A holiday (a date in the department's zone) closes that
whole date: no range that starts on it applies, and a range that runs past midnight into it from
the evening before stops at midnight.

Wall times become instants by the zone's rules on that date: a time the clocks skip in spring
(02:30 in New York on the second Sunday of March) means the moment they jump past it, and a time
they show twice in autumn means its first occurrence. So a range covers exactly what the
department's own clocks show, and "09:00-17:00" is eight hours on a normal day.

Everything here is pure: the caller passes the time (see `app.clock`), so tests set it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_MINUTES = 24 * 60
# How far ahead "next opening" looks: past two weeks of weekends and holidays, a department is closed.
NEXT_OPENING_DAYS = 14
ALWAYS = None  # `open_until` of a department open past the horizon


@dataclass(frozen=True, order=True)
class Range:
    """Minutes after the midnight of the day it starts; `end` past 24:00 runs into the next day."""

    start: int
    end: int

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end % DAY_MINUTES if self.end > DAY_MINUTES else self.end)}"


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True)
class Department:
    """Somewhere a transfer can go: its number, what it handles, and when someone is there."""

    name: str
    number: str
    zone: ZoneInfo
    hours: tuple[tuple[Range, ...], ...]  # one tuple per weekday, Monday first, sorted
    holidays: frozenset[date] = frozenset()
    handles: str = ""
    screen: bool = True  # a warm transfer: the person who answers hears who is calling, and presses 1
    source: str = field(default="departments.toml", compare=False)

    def ranges_on(self, day: date) -> tuple[Range, ...]:
        """The ranges that start on this date in the department's zone (none on a holiday)."""
        return () if day in self.holidays else self.hours[day.weekday()]


def always_open(name: str, number: str, source: str = "TRANSFER_TARGETS") -> Department:
    """A department open around the clock, every day, without screening (TRANSFER_TARGETS)."""
    day = (Range(0, DAY_MINUTES),)
    return Department(name, number, ZoneInfo("UTC"), (day,) * 7, screen=False, source=source)


def is_open(department: Department, at: datetime) -> bool:
    return any(start <= at < end for start, end in _periods_around(department, at, 0))


def next_opening(department: Department, after: datetime, days: int = NEXT_OPENING_DAYS) -> datetime | None:
    """The first moment at or after `after` when the department is open (`after` itself when it is
    open then); None when it does not open within `days` days."""
    for start, end in _periods_around(department, after, days):
        if end > after:
            return max(start, after)
    return None


def open_until(department: Department, at: datetime, days: int = NEXT_OPENING_DAYS) -> datetime | None:
    """When the opening that `at` falls in ends; None (ALWAYS) when it lasts past `days` days, and
    `at` itself when the department is closed then."""
    periods = _periods_around(department, at, days)
    horizon = _instant(department.zone, at.astimezone(department.zone).date() + timedelta(days=days), 0)
    for start, end in periods:
        if start <= at < end:
            return ALWAYS if end >= horizon else end
    return at


def _periods_around(department: Department, at: datetime, days: int) -> list[tuple[datetime, datetime]]:
    """Open periods, merged where they touch, from the day before `at` (a range running past
    midnight) to `days` days after it, all in the department's zone."""
    today = at.astimezone(department.zone).date()
    return list(_merged(_periods(department, today - timedelta(days=1), today + timedelta(days=days))))


def _periods(department: Department, first: date, last: date) -> Iterator[tuple[datetime, datetime]]:
    zone = department.zone
    day = first
    while day <= last:
        for r in department.ranges_on(day):
            start = _instant(zone, day, r.start)
            end = _instant(zone, day, r.end)
            if r.end > DAY_MINUTES and day + timedelta(days=1) in department.holidays:
                end = _instant(zone, day, DAY_MINUTES)  # the holiday after it closes at midnight
            if start < end:
                yield start, end
        day += timedelta(days=1)


def _merged(periods: Iterator[tuple[datetime, datetime]]) -> Iterator[tuple[datetime, datetime]]:
    current: tuple[datetime, datetime] | None = None
    for start, end in sorted(periods):
        if current is not None and start <= current[1]:
            current = (current[0], max(current[1], end))
            continue
        if current is not None:
            yield current
        current = (start, end)
    if current is not None:
        yield current


def _instant(zone: ZoneInfo, day: date, minutes: int) -> datetime:
    """`minutes` after the midnight of `day` on the zone's clocks, as a moment (UTC)."""
    extra_days, minute = divmod(minutes, DAY_MINUTES)
    wall = datetime.combine(day + timedelta(days=extra_days), time(minute // 60, minute % 60))
    return wall_to_instant(wall, zone)


def wall_to_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """A naive wall-clock time in `zone` as a moment (UTC): its first occurrence when the clocks show
    it twice, and the moment they jump past it when they skip it."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # Skipped: fold=1 reads it with the offset after the change (earlier), fold=0 with the one before
    # (later); the jump lies between them. Halve the gap down to a second.
    low, high = wall.replace(tzinfo=zone, fold=1).astimezone(UTC), first
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)
