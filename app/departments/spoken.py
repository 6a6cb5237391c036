"""Opening hours in words: what the model is told each turn, and what the agent says without one.

The arithmetic is done here, never by the model: "open now, until 5:30 pm", "closed now, opens on
Monday at 9 am (New York time)". Times are said the way people say them on the phone, in the
department's own zone, named after its city.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta

from app.departments.schedule import (
    ALWAYS,
    DAY_MINUTES,
    NEXT_OPENING_DAYS,
    Department,
    Range,
    is_open,
    next_opening,
    open_until,
)

DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
AROUND_THE_CLOCK = (Range(0, DAY_MINUTES),)
HOLIDAYS_AHEAD_DAYS = 60
HOLIDAYS_SHOWN = 3
MESSAGE_FOR = "I can take a message for {department}, and they'll call you back."
BLOCK_OPEN = "<departments>"
BLOCK_CLOSE = "</departments>"


def clock_time(minutes: int) -> str:
    """9 am, 5:30 pm, noon, midnight."""
    minutes %= DAY_MINUTES
    if minutes == 0:
        return "midnight"
    if minutes == 12 * 60:
        return "noon"
    hour, minute = divmod(minutes, 60)
    suffix = "am" if hour < 12 else "pm"
    hour = hour % 12 or 12
    return f"{hour}:{minute:02d} {suffix}" if minute else f"{hour} {suffix}"


def zone_name(department: Department) -> str:
    """America/New_York is "New York time"."""
    key = department.zone.key
    return f"{key.rsplit('/', 1)[-1].replace('_', ' ')} time" if "/" in key else key


def day_name(day: date) -> str:
    return DAY_NAMES[day.weekday()]


def when(moment: datetime, now: datetime, department: Department) -> str:
    """ "today at 1 pm", "tomorrow at 9 am", "on Monday at 9 am", "on Friday 25 December at 9 am"."""
    zone = department.zone
    local, today = moment.astimezone(zone), now.astimezone(zone).date()
    at = clock_time(local.hour * 60 + local.minute)
    days = (local.date() - today).days
    if days == 0:
        return f"today at {at}"
    if days == 1:
        return f"tomorrow at {at}"
    if days < 7:
        return f"on {day_name(local.date())} at {at}"
    return f"on {day_name(local.date())} {local.day} {local:%B} at {at}"


def ranges_text(ranges: Iterable[Range]) -> str:
    """ "9 am to noon and 1 pm to 5 pm", "around the clock", "closed"."""
    ranges = tuple(ranges)
    if not ranges:
        return "closed"
    if ranges == AROUND_THE_CLOCK:
        return "around the clock"
    return " and ".join(f"{clock_time(r.start)} to {clock_time(r.end)}" for r in ranges)


def day_hours(department: Department, day: date) -> str:
    """Its hours on one date, holidays included."""
    if day in department.holidays:
        return "closed (a holiday)"
    return ranges_text(department.ranges_on(day))


def weekly(department: Department) -> str:
    """ "Monday to Friday 8 am to 8 pm; Saturday 9 am to 5 pm; Sunday closed"; "around the clock,
    every day"."""
    days = [ranges_text(day) for day in department.hours]
    if len(set(days)) == 1:
        return f"{days[0]}, every day" if days[0] != "closed" else "no opening hours"
    parts, first = [], 0
    for n in range(1, 8):
        if n == 7 or days[n] != days[first]:
            joined = " and " if n - 1 == first + 1 else " to "  # "Saturday and Sunday", "Monday to Friday"
            names = DAY_NAMES[first] if n - 1 == first else f"{DAY_NAMES[first]}{joined}{DAY_NAMES[n - 1]}"
            parts.append(f"{names} {days[first]}")
            first = n
    return "; ".join(parts)


def status(department: Department, now: datetime) -> str:
    """ "open now, until 5:30 pm", "open now, around the clock", "closed now, opens on Monday at 9
    am (New York time)", "closed, with no opening hours in the next 14 days"."""
    if is_open(department, now):
        until = open_until(department, now)
        if until is ALWAYS:
            return "open now, around the clock"
        assert until is not None
        return f"open now, until {_until(until, now, department)} ({zone_name(department)})"
    opens = next_opening(department, now)
    if opens is None:
        return f"closed, with no opening hours in the next {NEXT_OPENING_DAYS} days"
    return f"closed now, opens {when(opens, now, department)} ({zone_name(department)})"


def _until(moment: datetime, now: datetime, department: Department) -> str:
    spoken = when(moment, now, department)
    return spoken.removeprefix("today at ")


def upcoming_holidays(department: Department, now: datetime) -> list[date]:
    today = now.astimezone(department.zone).date()
    ahead = today + timedelta(days=HOLIDAYS_AHEAD_DAYS)
    return sorted(d for d in department.holidays if today <= d <= ahead)[:HOLIDAYS_SHOWN]


def line(department: Department, now: datetime) -> str:
    """One department for the model: name, what it handles, open or not, its week and holidays."""
    handles = f" ({department.handles})" if department.handles else ""
    text = f"- {department.name}{handles}: {status(department, now)}."
    hours = weekly(department)
    if hours != "around the clock, every day":
        text += f" Hours ({zone_name(department)}): {hours}."
    holidays = upcoming_holidays(department, now)
    if holidays:
        text += " Closed all day on " + ", ".join(f"{day_name(d)} {d.day} {d:%B}" for d in holidays) + "."
    return text


def block(departments: Iterable[Department], now: datetime) -> str:
    """What the model is told each turn: the time where each department is, and each one's state."""
    departments = list(departments)
    zones: dict[str, Department] = {}
    for department in departments:
        zones.setdefault(department.zone.key, department)
    clocks, shown = [], None
    for department in zones.values():
        local = now.astimezone(department.zone)
        day = f"{day_name(local.date())} {local.day} {local:%B} {local.year}, " if local.date() != shown else ""
        shown = local.date()
        clocks.append(f"{day}{clock_time(local.hour * 60 + local.minute)} {zone_name(department)}")
    body = "\n".join(line(d, now) for d in departments)
    return f"{BLOCK_OPEN}\nNow: {'; '.join(clocks)}.\n{body}\n{BLOCK_CLOSE}"
