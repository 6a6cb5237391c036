"""When a call-back may be placed: the callee's calling window in their own time zone (from the number),
the department's opening hours, and the numbers never dialled. Pure: the tests give the time."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from app.callbacks.rules import next_allowed, time_zones, why_not_callable
from app.departments.config import parse_departments
from app.settings import Settings

WINDOW = (8 * 60, 21 * 60)  # the default CALLBACK_HOURS
CHICAGO = "+13125550147"
LOS_ANGELES = "+13105550100"
SYDNEY = "+61299999999"
SALES = parse_departments(
    """
    [departments.sales]
    number = "+12025550143"
    time_zone = "America/New_York"
    holidays = ["2026-12-25"]
    [departments.sales.hours]
    mon = "09:00-17:00"
    tue = "09:00-17:00"
    wed = "09:00-17:00"
    thu = "09:00-17:00"
    fri = "09:00-17:00"
    """,
    {},
    "departments.toml",
)["sales"]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("number", "at", "allowed"),
    [
        (CHICAGO, utc(2026, 12, 7, 9, 0), utc(2026, 12, 7, 14, 0)),  # 03:00 in Chicago: at 08:00 there
        (CHICAGO, utc(2026, 12, 7, 16, 0), utc(2026, 12, 7, 16, 0)),  # 10:00 there: now
        (CHICAGO, utc(2026, 12, 8, 3, 0), utc(2026, 12, 8, 14, 0)),  # 21:00 there: the window has closed
        (LOS_ANGELES, utc(2026, 7, 7, 14, 0), utc(2026, 7, 7, 15, 0)),  # 07:00 in summer (UTC-7): 08:00
        (LOS_ANGELES, utc(2026, 3, 8, 9, 0), utc(2026, 3, 8, 15, 0)),  # the day the clocks go forward
        (SYDNEY, utc(2026, 12, 7, 12, 0), utc(2026, 12, 7, 21, 0)),  # 23:00 in Sydney (UTC+11): next morning
    ],
)
def test_a_callee_is_called_only_inside_the_window_on_their_own_clocks(number, at, allowed) -> None:
    assert next_allowed(number, WINDOW, None, at) == allowed


def test_the_callees_zone_is_read_from_the_number() -> None:
    assert time_zones(CHICAGO) == [ZoneInfo("America/Chicago")]
    assert time_zones(SYDNEY) == [ZoneInfo("Australia/Sydney")]


def test_a_number_in_two_zones_must_be_inside_the_window_in_both() -> None:
    north_dakota = "+17015551234"  # America/Denver and America/North_Dakota/Center (an hour apart)
    assert {z.key for z in time_zones(north_dakota)} == {"America/Denver", "America/North_Dakota/Center"}
    # 08:00 in Chicago's zone is 07:00 in Denver's: the window opens at 08:00 Denver time.
    assert next_allowed(north_dakota, WINDOW, None, utc(2026, 12, 7, 14, 0)) == utc(2026, 12, 7, 15, 0)


def test_zones_too_far_apart_to_fit_fall_back_to_the_departments_zone() -> None:
    toll_free = "+18005550199"  # from Guam to Newfoundland
    assert len(time_zones(toll_free)) > 10
    # Monday 06:00 in New York: sales opens at 09:00 there, inside the window on its clocks.
    assert next_allowed(toll_free, WINDOW, SALES, utc(2026, 12, 7, 11, 0)) == utc(2026, 12, 7, 14, 0)


@pytest.mark.parametrize(
    ("at", "allowed"),
    [
        (utc(2026, 12, 5, 16, 0), utc(2026, 12, 7, 14, 0)),  # Saturday: Monday 09:00 New York (08:00 Chicago)
        (utc(2026, 12, 24, 23, 0), utc(2026, 12, 28, 14, 0)),  # Christmas Eve: after the holiday and weekend
        (utc(2026, 12, 7, 13, 0), utc(2026, 12, 7, 14, 0)),  # Monday 07:00 Chicago, 08:00 New York: at 09:00
        (utc(2026, 12, 7, 14, 30), utc(2026, 12, 7, 14, 30)),  # Monday 08:30 Chicago is 09:30 New York: now
    ],
)
def test_a_call_back_waits_for_its_department_to_open(at, allowed) -> None:
    assert next_allowed(CHICAGO, WINDOW, SALES, at) == allowed


def test_a_department_and_a_callee_that_never_overlap_give_no_moment() -> None:
    night = (0, 6 * 60)  # CALLBACK_HOURS=00:00-06:00: sales is never open then on New York's clocks
    assert next_allowed(CHICAGO, night, SALES, utc(2026, 12, 7, 16, 0)) is None


@pytest.mark.parametrize(
    ("number", "why"),
    [
        ("+19005550199", "it is a premium-rate number"),
        ("+448450000000", "it is a premium-rate number"),
        ("+1555", "it is not a valid phone number"),
        ("call me", "it is not a phone number"),
        (CHICAGO, None),
        (SYDNEY, None),
    ],
)
def test_numbers_that_cannot_be_called_say_why(number, why) -> None:
    assert why_not_callable(number) == why


def test_callback_hours_must_be_a_window_of_real_times() -> None:
    assert Settings(_env_file=None, callback_hours="09:30-24:00").callback_window == (570, 1440)
    for wrong in ("21:00-08:00", "8-21", "08:00-25:00", "08:60-21:00", "08:00-08:00"):
        with pytest.raises(ValidationError, match="must be a window like 08:00-21:00"):
            Settings(_env_file=None, callback_hours=wrong)
    with pytest.raises(ValidationError):
        Settings(_env_file=None, callback_retry_minutes=30)  # tries are at least an hour apart
    assert Settings(_env_file=None, callback="AUTO").callback == "auto"
