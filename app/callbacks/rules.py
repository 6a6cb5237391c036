"""When a call-back may be placed: rules kept in code, never left to the model.

- The number must be callable: a valid number that is not premium rate or shared cost.
- Only inside the callee's calling window (CALLBACK_HOURS, default 08:00-21:00) in their own time
  zone, which `phonenumbers` reads from the number. A number that spans several zones (a mobile in a
  country whose numbers do not say where) must be inside the window in every one of them; where the
  zones are too far apart for any moment to fit them all (a toll-free number across North America
  and the Pacific), the department's zone stands in for the callee's, or else the first zone listed.
- Only while the message's department is open, so that a transfer can reach someone.

Everything here is pure: the caller passes the time (tests set the clock).
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import PhoneNumberType, timezone

from app.departments.schedule import Department, next_opening, wall_to_instant

# How far ahead the next allowed moment is looked for: past this, the call-back is not placed.
HORIZON_DAYS = 14
_NOT_CALLABLE = {
    PhoneNumberType.PREMIUM_RATE: "it is a premium-rate number",
    PhoneNumberType.SHARED_COST: "it is a shared-cost number",
}
Window = tuple[int, int]  # minutes after midnight, start and end, in the callee's zone


def why_not_callable(number: str) -> str | None:
    """None when the number may be called back; else why not, for people."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return "it is not a phone number"
    if not phonenumbers.is_valid_number(parsed):
        return "it is not a valid phone number"
    return _NOT_CALLABLE.get(phonenumbers.number_type(parsed))


def time_zones(number: str) -> list[ZoneInfo]:
    """The callee's time zones, from the number (UTC when `phonenumbers` cannot say)."""
    try:
        names = timezone.time_zones_for_number(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        names = ()
    zones = []
    for name in names:
        try:
            zones.append(ZoneInfo(name))
        except (ZoneInfoNotFoundError, ValueError):
            continue  # "Etc/Unknown"
    return zones or [ZoneInfo("UTC")]


def next_allowed(number: str, window: Window, department: Department | None, after: datetime) -> datetime | None:
    """The first moment at or after `after` inside the callee's window (in each of their zones) while
    the department is open; None when there is none within HORIZON_DAYS."""
    zones = time_zones(number)
    found = _first_fit(zones, window, department, after)
    if found is None and len(zones) > 1:
        found = _first_fit([department.zone if department is not None else zones[0]], window, department, after)
    return found


def _first_fit(
    zones: list[ZoneInfo], window: Window, department: Department | None, after: datetime
) -> datetime | None:
    limit = after + timedelta(days=HORIZON_DAYS)
    at = after
    while at <= limit:
        later = at
        for zone in zones:
            start = _window_from(zone, window, later)
            if start is None:
                return None
            later = max(later, start)
        if department is not None:
            opens = next_opening(department, later)
            if opens is None:
                return None
            later = max(later, opens)
        if later == at:
            return at
        at = later
    return None


def _window_from(zone: ZoneInfo, window: Window, at: datetime) -> datetime | None:
    """The first moment at or after `at` inside the window on the zone's clocks."""
    day = at.astimezone(zone).date()
    for offset in range(HORIZON_DAYS + 1):
        date = day + timedelta(days=offset)
        start = wall_to_instant(datetime.combine(date, time()) + timedelta(minutes=window[0]), zone)
        end = wall_to_instant(datetime.combine(date, time()) + timedelta(minutes=window[1]), zone)
        if end > at:
            return max(start, at)
    return None


def local_time(number: str, at: datetime) -> datetime:
    """`at` on the callee's clocks (their first zone), for people."""
    return at.astimezone(time_zones(number)[0])
