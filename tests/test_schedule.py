"""Opening hours against a set clock: clock changes, holidays, ranges past midnight, other time zones,
and the next opening across a weekend and a holiday. Nothing here depends on when it runs."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from app.departments import spoken
from app.departments.config import DepartmentsError, parse_departments
from app.departments.schedule import ALWAYS, Department, is_open, next_opening, open_until
from tests.support.make_call import environment

NEW_YORK = ZoneInfo("America/New_York")


def department(hours: str, *, zone: str = "America/New_York", holidays: str = "[]") -> Department:
    text = f"""
[departments.desk]
number = "+12025550143"
time_zone = "{zone}"
holidays = {holidays}
hours = {{ {hours} }}
"""
    return parse_departments(text, {}, "departments.toml")["desk"]


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def new_york(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=NEW_YORK)  # type: ignore[misc]


# --- the spring and autumn clock changes in New York --------------------------------------------


def test_spring_forward_a_night_is_an_hour_shorter_and_a_skipped_time_opens_at_the_jump() -> None:
    # 8 March 2026: at 02:00 EST (07:00 UTC) New York's clocks jump to 03:00 EDT.
    night = department('sat = "22:00-04:00"')
    assert is_open(night, utc(2026, 3, 8, 3, 0))  # Saturday 22:00 EST
    assert is_open(night, utc(2026, 3, 8, 7, 59))  # 03:59 EDT
    assert not is_open(night, utc(2026, 3, 8, 8, 0))  # 04:00 EDT: four hours of clock, five real ones
    assert open_until(night, utc(2026, 3, 8, 4, 0)) == utc(2026, 3, 8, 8, 0)
    skipped = department('sun = "02:30-06:00"')  # 02:30 never shows on the clocks that night
    assert next_opening(skipped, utc(2026, 3, 8, 5, 0)) == utc(2026, 3, 8, 7, 0)  # when they jump to 03:00
    assert not is_open(skipped, utc(2026, 3, 8, 6, 59, 59))


def test_a_week_day_opens_at_nine_on_the_clocks_before_and_after_the_change() -> None:
    office = department('mon = "09:00-17:00", fri = "09:00-17:00"')
    assert next_opening(office, new_york(2026, 3, 6, 18, 0)) == utc(2026, 3, 9, 13, 0)  # 9:00 EDT
    assert next_opening(office, new_york(2026, 3, 2, 8, 0)) == utc(2026, 3, 2, 14, 0)  # 9:00 EST


def test_fall_back_a_night_is_an_hour_longer_and_a_time_shown_twice_is_its_first() -> None:
    # 1 November 2026: at 02:00 EDT (06:00 UTC) the clocks go back to 01:00 EST.
    night = department('sat = "22:00-02:00"')
    assert is_open(night, utc(2026, 11, 1, 2, 0))  # Saturday 22:00 EDT
    assert is_open(night, utc(2026, 11, 1, 6, 30))  # 01:30 EST, the second time the clocks show it
    assert not is_open(night, utc(2026, 11, 1, 7, 0))  # 02:00 EST: five real hours
    early = department('sun = "00:00-01:30"')
    assert open_until(early, utc(2026, 11, 1, 4, 30)) == utc(2026, 11, 1, 5, 30)  # the first 01:30 (EDT)
    assert not is_open(early, utc(2026, 11, 1, 6, 15))  # 01:15 again, now EST: already closed


# --- holidays -----------------------------------------------------------------------------------


def test_a_holiday_closes_the_whole_date_and_a_night_before_it_stops_at_midnight() -> None:
    desk = department(
        'thu = "22:00-02:00", fri = "09:00-17:00", sat = "10:00-14:00"', holidays='["2026-12-25"]'
    )  # Friday 25 December
    assert is_open(desk, new_york(2026, 12, 24, 23, 0))
    assert not is_open(desk, new_york(2026, 12, 25, 0, 30))  # the night stops where the holiday starts
    assert not is_open(desk, new_york(2026, 12, 25, 10, 0))
    assert open_until(desk, new_york(2026, 12, 24, 23, 0)) == new_york(2026, 12, 25, 0, 0)
    assert next_opening(desk, new_york(2026, 12, 25, 8, 0)) == new_york(2026, 12, 26, 10, 0)
    assert spoken.day_hours(desk, date(2026, 12, 25)) == "closed (a holiday)"


def test_a_night_that_starts_on_a_holiday_does_not_open() -> None:
    desk = department('fri = "22:00-02:00"', holidays="[2026-12-25]")  # a TOML date works too
    assert not is_open(desk, new_york(2026, 12, 25, 23, 0))
    assert not is_open(desk, new_york(2026, 12, 26, 1, 0))
    assert is_open(desk, new_york(2027, 1, 1, 23, 0))


# --- ranges past midnight ------------------------------------------------------------------------


def test_an_overnight_range_belongs_to_the_day_it_starts() -> None:
    desk = department('fri = "22:00-02:00"')
    assert not is_open(desk, new_york(2026, 11, 20, 21, 59))
    assert is_open(desk, new_york(2026, 11, 20, 22, 0))
    assert is_open(desk, new_york(2026, 11, 21, 1, 59))  # Saturday morning, on Friday's range
    assert not is_open(desk, new_york(2026, 11, 21, 2, 0))
    assert not is_open(desk, new_york(2026, 11, 21, 22, 30))  # Saturday has no range of its own
    assert spoken.weekly(desk) == "Monday to Thursday closed; Friday 10 pm to 2 am; Saturday and Sunday closed"


def test_around_the_clock_has_no_end() -> None:
    every_day = ", ".join(f'{day} = "00:00-24:00"' for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
    desk = department(every_day)
    now = new_york(2026, 11, 22, 3, 0)
    assert is_open(desk, now) and open_until(desk, now) is ALWAYS
    assert spoken.status(desk, now) == "open now, around the clock"


# --- a department in another time zone than the server's -----------------------------------------


@pytest.fixture
def server_in_auckland(monkeypatch: pytest.MonkeyPatch):
    """The server's own clock in another zone: nothing may read it."""
    monkeypatch.setenv("TZ", "Pacific/Auckland")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("server_in_auckland")
def test_hours_are_read_in_the_departments_zone_not_the_servers() -> None:
    tokyo = department('mon = "09:00-17:00"', zone="Asia/Tokyo")
    assert time.localtime(0).tm_gmtoff == 12 * 3600  # the server really is in Auckland now
    assert is_open(tokyo, utc(2026, 11, 23, 0, 0))  # Monday 9:00 in Tokyo
    assert not is_open(tokyo, utc(2026, 11, 23, 8, 0))  # 17:00 in Tokyo
    assert next_opening(tokyo, utc(2026, 11, 23, 8, 0)) == utc(2026, 11, 30, 0, 0)
    now = utc(2026, 11, 23, 8, 0)
    assert spoken.status(tokyo, now) == "closed now, opens on Monday 30 November at 9 am (Tokyo time)"


# --- the next opening ------------------------------------------------------------------------------


def test_next_opening_skips_a_weekend_and_the_holiday_after_it() -> None:
    weekdays = ", ".join(f'{day} = "09:00-17:00"' for day in ("mon", "tue", "wed", "thu", "fri"))
    desk = department(weekdays, holidays='["2027-01-18"]')  # Monday 18 January
    friday_evening = new_york(2027, 1, 15, 18, 0)
    assert next_opening(desk, friday_evening) == new_york(2027, 1, 19, 9, 0)
    assert spoken.status(desk, friday_evening) == "closed now, opens on Tuesday at 9 am (New York time)"
    assert next_opening(desk, new_york(2027, 1, 19, 10, 0)) == new_york(2027, 1, 19, 10, 0)  # open: now
    assert spoken.status(desk, new_york(2027, 1, 19, 10, 0)) == "open now, until 5 pm (New York time)"


def test_no_hours_in_two_weeks_is_no_next_opening() -> None:
    desk = department('mon = "09:00-10:00"', holidays='["2026-11-23", "2026-11-30"]')
    now = new_york(2026, 11, 20, 12, 0)
    assert next_opening(desk, now) is None
    assert spoken.status(desk, now) == "closed, with no opening hours in the next 14 days"
    assert next_opening(desk, now, days=30) == new_york(2026, 12, 7, 9, 0)


# --- the file as users write it -----------------------------------------------------------------

# The form the issue gives, verbatim: a contract users write against.
CONTRACT = """
[departments.sales]
number = "+12025550143"
handles = "new plans, upgrades and prices"   # one line, for the model
time_zone = "America/New_York"                # IANA
holidays = ["2026-12-25", "2027-01-01"]
screen = true                                 # warm transfer (the default)

[departments.sales.hours]                     # a day left out is closed
mon = "09:00-17:30"
tue = "09:00-17:30"
wed = "09:00-17:30"
thu = "09:00-17:30"
fri = "09:00-12:00,13:00-17:00"
sat = "10:00-14:00"

[departments.support]
number = "+12025550178"
handles = "outages, equipment and connection problems"
time_zone = "America/Chicago"
hours = { mon = "00:00-24:00", tue = "00:00-24:00", wed = "00:00-24:00", thu = "00:00-24:00", fri = "00:00-24:00", sat = "00:00-24:00", sun = "00:00-24:00" }
"""  # noqa: E501 (the long line as the issue writes it)


def test_the_documented_form_reads_as_written() -> None:
    found = parse_departments(CONTRACT, {}, "departments.toml")
    sales, support = found["sales"], found["support"]
    assert list(found) == ["sales", "support"]
    assert (sales.number, sales.handles, sales.screen) == ("+12025550143", "new plans, upgrades and prices", True)
    assert (support.number, support.screen, str(support.zone)) == ("+12025550178", True, "America/Chicago")
    assert sales.holidays == {date(2026, 12, 25), date(2027, 1, 1)}
    assert spoken.weekly(sales) == (
        "Monday to Thursday 9 am to 5:30 pm; Friday 9 am to noon and 1 pm to 5 pm; Saturday 10 am to 2 pm; "
        "Sunday closed"
    )
    assert spoken.weekly(support) == "around the clock, every day"
    friday_lunch = new_york(2026, 11, 27, 12, 30)
    assert not is_open(sales, friday_lunch) and next_opening(sales, friday_lunch) == new_york(2026, 11, 27, 13, 0)
    assert is_open(support, friday_lunch)


# --- the file: every mistake on a line of its own --------------------------------------------------


BROKEN = """
[departments.sales]
number = "+1202555014"
time_zone = "America/New_Yrok"
holidays = ["2026-12-32"]
colour = "blue"

[departments.sales.hours]
mon = "09:00-12:00,11:30-17:00"
tue = "17:00-09:00"
wed = "9-5"
fri = "22:00-03:00"
sat = "02:00-06:00"
funday = "09:00-10:00"

[departments.support]
number = "+12025550178"
time_zone = "America/Chicago"
hours = { sun = "10:00-10:00" }
"""
BROKEN_LINES = [
    "sales: colour: unknown key (known: number, handles, time_zone, holidays, screen, hours)",
    "sales: number: '+1202555014' is not a valid phone number in E.164 (write it like +12025550143)",
    "sales: time_zone: 'America/New_Yrok' is not a known IANA time zone (such as America/New_York)",
    "sales: holidays: '2026-12-32' is not a date (YYYY-MM-DD)",
    "sales: hours.tue: 17:00-09:00 is inverted: it would last 16 hours, past midnight (did you mean 09:00-17:00?)",
    "sales: hours.wed: '9-5' is not a range of HH:MM times, such as 09:00-17:30",
    "sales: hours.funday: unknown weekday (use mon, tue, wed, thu, fri, sat, sun)",
    "sales: hours.mon: 09:00-12:00 and 11:30-17:00 overlap",
    "sales: hours.fri: 22:00-03:00 runs past midnight into sat's 02:00-06:00",
    "support: hours.sun: 10:00-10:00 is empty: it ends where it starts",
    "support: in both departments.toml and TRANSFER_TARGETS; keep it in one of them",
]


def test_every_mistake_is_reported_on_its_own_line_with_the_department_and_key() -> None:
    with pytest.raises(DepartmentsError) as raised:
        parse_departments(BROKEN, {"support": "+15551230002"}, "departments.toml")
    assert raised.value.lines == BROKEN_LINES


async def test_python_m_app_refuses_to_start_with_a_broken_file_one_line_per_mistake(tmp_path: Path) -> None:
    (tmp_path / "departments.toml").write_text(BROKEN)
    (tmp_path / ".env").write_text("DATA_DIR=data\nTRANSFER_TARGETS=support=+15551230002\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "--host", "127.0.0.1",
        cwd=tmp_path, env=environment(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        _, err = await process.communicate()
    lines = err.decode().splitlines()
    assert process.returncode == 1
    assert lines[0] == "Switchboard cannot start; fix these mistakes in departments.toml:"
    assert lines[1:] == [f"  {line}" for line in BROKEN_LINES]


def test_a_file_that_is_not_toml_says_where() -> None:
    with pytest.raises(DepartmentsError) as raised:
        parse_departments('[departments.sales]\nnumber = "+12025550143\n', {}, "departments.toml")
    (line,) = raised.value.lines
    assert line.startswith("not valid TOML") and "line 2" in line


def test_transfer_targets_are_departments_open_around_the_clock_without_screening() -> None:
    found = parse_departments(None, {"sales": "+15551230001"}, "TRANSFER_TARGETS")
    sales = found["sales"]
    assert sales.number == "+15551230001" and not sales.screen
    assert is_open(sales, utc(2026, 12, 25, 3, 0)) and open_until(sales, utc(2026, 12, 25, 3, 0)) is ALWAYS
