"""`departments.toml` (DEPARTMENTS_FILE), read with the standard library's `tomllib`, checked whole.

The format is a contract users write against:

    [departments.sales]
    number = "+12025550143"
    handles = "new plans, upgrades and prices"   # one line, for the model
    time_zone = "America/New_York"                # IANA
    holidays = ["2026-12-25", "2027-01-01"]
    screen = true                                 # warm transfer (the default)

    [departments.sales.hours]                     # a day left out is closed
    mon = "09:00-17:30"
    fri = "09:00-12:00,13:00-17:00"

Every mistake is reported, one line each, naming the department and the key: an unknown key or
weekday, a time that is not HH:MM, a range that ends where it starts or overlaps another (also one
running past midnight into the next day's), a number that is not a valid phone number in E.164, an
unknown time zone, a holiday that is not a date. A range that ends before it starts runs past
midnight, for at most 12 hours ("22:00-02:00"); a longer one is taken for one written backwards
("17:00-09:00"): split a real longer night into "17:00-24:00" and the next day's "00:00-09:00".
TRANSFER_TARGETS entries join as departments open around the clock without screening; a name in
both places is a mistake.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from app.departments.schedule import DAY_MINUTES, WEEKDAYS, Department, Range, always_open
from app.settings import DEPARTMENT_NAME, Settings

KEYS = ("number", "handles", "time_zone", "holidays", "screen", "hours")
MAX_OVERNIGHT_MINUTES = 12 * 60
MAX_HANDLES_CHARS = 200
MAX_DEPARTMENTS = 50
MAX_FILE_BYTES = 256 * 1024
_TIME = re.compile(r"^(\d{2}):(\d{2})$")


class DepartmentsError(Exception):
    """The departments cannot be used; `lines` says every mistake, one per line."""

    def __init__(self, source: str, lines: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(lines))
        self.source = source
        self.lines = lines


def load_departments(settings: Settings) -> dict[str, Department]:
    """The departments these settings give (DEPARTMENTS_FILE, then TRANSFER_TARGETS)."""
    path = settings.departments_file
    source = str(path) if path is not None else "TRANSFER_TARGETS"
    return parse_departments(read_file(path), settings.transfer_targets, source)


def refusal(exc: DepartmentsError) -> str:
    """What the start-up says when the departments cannot be used: every mistake on its own line."""
    head = f"Switchboard cannot start; fix these mistakes in {exc.source}:"
    return "\n".join([head, *(f"  {line}" for line in exc.lines)])


def read_file(path: Path | None) -> str | None:
    """The file's text; None when there is no file (no departments from it)."""
    if path is None:
        return None
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise DepartmentsError(str(path), [f"larger than {MAX_FILE_BYTES // 1024} KiB"])
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise DepartmentsError(str(path), [f"cannot be read: {exc}"]) from None


def parse_departments(text: str | None, targets: Mapping[str, str], source: str) -> dict[str, Department]:
    """The departments in the file's `text` (None: no file), then TRANSFER_TARGETS'. Raises
    DepartmentsError with every mistake."""
    errors: list[str] = []
    found: dict[str, Department] = {}
    named: set[str] = set()
    if text is not None:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise DepartmentsError(source, [f"not valid TOML: {exc}"]) from None
        found = _departments(document, errors)
        tables = document.get("departments")
        named = set(tables) if isinstance(tables, dict) else set()
    for name in targets:
        if name in named:
            errors.append(f"{name}: in both {source} and TRANSFER_TARGETS; keep it in one of them")
    if errors:
        raise DepartmentsError(source, errors)
    return found | {name: always_open(name, number) for name, number in targets.items()}


def _departments(document: dict[str, Any], errors: list[str]) -> dict[str, Department]:
    for key in document:
        if key != "departments":
            errors.append(f"{key}: unknown key (the file holds [departments.<name>] tables)")
    tables = document.get("departments", {})
    if not isinstance(tables, dict):
        errors.append("departments: must be tables, [departments.<name>]")
        return {}
    if len(tables) > MAX_DEPARTMENTS:
        errors.append(f"departments: at most {MAX_DEPARTMENTS}")
        return {}
    found = {}
    for name, table in tables.items():
        department = _department(name, table, errors)
        if department is not None:
            found[name] = department
    return found


def _department(name: str, table: object, errors: list[str]) -> Department | None:
    before = len(errors)

    def mistake(key: str, text: str) -> None:
        errors.append(f"{name}: {key}: {text}")

    if not DEPARTMENT_NAME.match(name):
        errors.append(f"{name!r}: a department name is lower-case letters, digits, - or _ (at most 32)")
        return None
    if not isinstance(table, dict):
        errors.append(f"{name}: must be a table, [departments.{name}]")
        return None
    for key in table:
        if key not in KEYS:
            mistake(key, f"unknown key (known: {', '.join(KEYS)})")
    number = _number(table.get("number"), mistake)
    zone = _zone(table.get("time_zone"), mistake)
    handles = table.get("handles", "")
    if not isinstance(handles, str) or "\n" in handles or len(handles) > MAX_HANDLES_CHARS:
        mistake("handles", f"one line of text, at most {MAX_HANDLES_CHARS} characters")
        handles = ""
    screen = table.get("screen", True)
    if not isinstance(screen, bool):
        mistake("screen", "true or false")
    holidays = _holidays(table.get("holidays", []), mistake)
    hours = _hours(table.get("hours", {}), mistake)
    if len(errors) > before or number is None or zone is None:
        return None
    return Department(name, number, zone, hours, holidays, handles.strip(), screen is not False)


def _number(value: object, mistake: Any) -> str | None:
    if value is None:
        mistake("number", "missing (the department's phone number, +E.164)")
        return None
    text = value if isinstance(value, str) else ""
    try:
        parsed = phonenumbers.parse(text, None) if text.startswith("+") else None
    except phonenumbers.NumberParseException:
        parsed = None
    if parsed is None or not phonenumbers.is_valid_number(parsed):
        mistake("number", f"{value!r} is not a valid phone number in E.164 (write it like +12025550143)")
        return None
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if e164 != text:
        mistake("number", f"{value!r}: write it in E.164, {e164}")
        return None
    return e164


def _zone(value: object, mistake: Any) -> ZoneInfo | None:
    if value is None:
        mistake("time_zone", "missing (an IANA time zone, such as America/New_York)")
        return None
    try:
        if not isinstance(value, str) or not value:
            raise ValueError
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        mistake("time_zone", f"{value!r} is not a known IANA time zone (such as America/New_York)")
        return None


def _holidays(value: object, mistake: Any) -> frozenset[date]:
    if not isinstance(value, list):
        mistake("holidays", 'a list of dates, such as ["2026-12-25", "2027-01-01"]')
        return frozenset()
    days = set()
    for item in value:
        if isinstance(item, date) and not hasattr(item, "hour"):
            days.add(item)
            continue
        try:
            if not isinstance(item, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", item):
                raise ValueError
            days.add(date.fromisoformat(item))
        except ValueError:
            mistake("holidays", f"{item!r} is not a date (YYYY-MM-DD)")
    return frozenset(days)


def _hours(value: object, mistake: Any) -> tuple[tuple[Range, ...], ...]:
    week: list[list[Range]] = [[] for _ in WEEKDAYS]
    if not isinstance(value, dict):
        mistake("hours", 'a table of weekdays, such as { mon = "09:00-17:30" }')
        return tuple(tuple(day) for day in week)
    for key, text in value.items():
        if key not in WEEKDAYS:
            mistake(f"hours.{key}", f"unknown weekday (use {', '.join(WEEKDAYS)})")
            continue
        week[WEEKDAYS.index(key)] = _ranges(f"hours.{key}", text, mistake)
    for n, day in enumerate(week):
        for earlier, later in itertools.pairwise(day):
            if later.start < earlier.end:
                mistake(f"hours.{WEEKDAYS[n]}", f"{earlier} and {later} overlap")
        # A range past midnight must not run into the next day's first one.
        following = week[(n + 1) % 7]
        if day and following and day[-1].end > DAY_MINUTES and following[0].start < day[-1].end - DAY_MINUTES:
            nxt = WEEKDAYS[(n + 1) % 7]
            mistake(f"hours.{WEEKDAYS[n]}", f"{day[-1]} runs past midnight into {nxt}'s {following[0]}")
    return tuple(tuple(day) for day in week)


def _ranges(key: str, text: object, mistake: Any) -> list[Range]:
    if not isinstance(text, str):
        mistake(key, 'a string of ranges, such as "09:00-12:00,13:00-17:00"')
        return []
    ranges = []
    for part in text.split(","):
        start_text, sep, end_text = part.strip().partition("-")
        start, end = _minute(start_text.strip()), _minute(end_text.strip())
        if not sep or start is None or end is None or start == DAY_MINUTES:
            mistake(key, f"{part.strip()!r} is not a range of HH:MM times, such as 09:00-17:30")
            continue
        if end == start:
            mistake(key, f"{part.strip()} is empty: it ends where it starts")
            continue
        if end < start:  # runs past midnight into the next day
            end += DAY_MINUTES
            if end - start > MAX_OVERNIGHT_MINUTES:
                mistake(
                    key,
                    f"{part.strip()} is inverted: it would last {(end - start) / 60:g} hours, past midnight "
                    f"(did you mean {end_text.strip()}-{start_text.strip()}?)",
                )
                continue
        ranges.append(Range(start, end))
    return sorted(ranges)


def _minute(text: str) -> int | None:
    match = _TIME.match(text)
    if match is None:
        return None
    hours, minutes = int(match[1]), int(match[2])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        return None
    return hours * 60 + minutes
