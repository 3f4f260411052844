"""opsflow.windows: change freezes, maintenance windows, time zones, DST days, time left."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from opsflow.inventory import ChangeFreeze, Environment, InventoryError, MaintenanceWindow
from opsflow.inventory.load import validated
from opsflow.windows import (
    active_freeze,
    change_allowed,
    current_window,
    next_window,
    time_left,
)

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def utc(value: datetime | None) -> datetime | None:
    """Compare instants in UTC: Python's == between zones is False in a repeated hour."""
    return None if value is None else value.astimezone(UTC)


def window(cron: str = "0 2 * * SUN", duration: str = "2h", tz: str = "UTC") -> MaintenanceWindow:
    return MaintenanceWindow.model_validate({"cron": cron, "duration": duration, "timezone": tz})


def env(**fields: object) -> Environment:
    return Environment.model_validate(fields)


YEAR_END = {
    "name": "year-end",
    "start": "2026-12-20T00:00:00Z",
    "end": "2027-01-02T00:00:00Z",
    "reason": "year-end closing",
}


# --- freezes --------------------------------------------------------------------------------


def test_active_freeze_refuses_with_its_name_end_and_reason() -> None:
    e = env(change_freezes=[YEAR_END])
    now = at("2026-12-24T12:00:00+00:00")
    freeze = active_freeze(e, now)
    assert freeze is not None and freeze.name == "year-end"
    verdict = change_allowed(e, now, needs_window=False)
    assert not verdict.allowed
    assert verdict.name == "year-end"
    assert (
        verdict.reason == "change freeze 'year-end' until 2027-01-02 00:00 UTC (year-end closing)"
    )
    assert verdict.ends_at == at("2027-01-02T00:00:00+00:00")


def test_freeze_bounds_start_inclusive_end_exclusive() -> None:
    e = env(change_freezes=[YEAR_END])
    assert active_freeze(e, at("2026-12-20T00:00:00+00:00")) is not None
    assert active_freeze(e, at("2026-12-19T23:59:59+00:00")) is None
    assert active_freeze(e, at("2027-01-02T00:00:00+00:00")) is None


def test_ended_freeze_allows() -> None:
    verdict = change_allowed(
        env(change_freezes=[YEAR_END]), at("2027-01-05T09:00:00+00:00"), needs_window=False
    )
    assert verdict.allowed and verdict.name is None and verdict.ends_at is None


def test_freeze_in_another_zone_is_compared_as_an_instant() -> None:
    e = env(
        change_freezes=[
            {
                "name": "launch",
                "start": "2026-06-01T09:00:00+02:00",
                "end": "2026-06-01T18:00:00+02:00",
            }
        ]
    )
    assert active_freeze(e, at("2026-06-01T07:00:00+00:00")) is not None  # 09:00 +02:00
    assert active_freeze(e, at("2026-06-01T06:59:59+00:00")) is None
    verdict = change_allowed(e, at("2026-06-01T12:00:00+00:00"), needs_window=False)
    assert verdict.reason == "change freeze 'launch' until 2026-06-01 16:00 UTC"


def test_chained_freezes_refuse_until_the_last_ends() -> None:
    second = {"name": "new-year", "start": "2027-01-01T00:00:00Z", "end": "2027-01-10T00:00:00Z"}
    e = env(change_freezes=[YEAR_END, second])
    verdict = change_allowed(e, at("2026-12-24T00:00:00+00:00"), needs_window=False)
    assert verdict.name == "year-end"
    assert verdict.ends_at == at("2027-01-10T00:00:00+00:00")
    assert "until 2027-01-10 00:00 UTC" in verdict.reason


def test_freeze_wins_over_an_open_window() -> None:
    e = env(change_freezes=[YEAR_END], maintenance_window={"cron": "0 2 * * SUN", "duration": "2h"})
    verdict = change_allowed(e, at("2026-12-20T02:30:00+00:00"), needs_window=True)  # a Sunday
    assert not verdict.allowed and verdict.name == "year-end"


@pytest.mark.parametrize("value", ["2026-12-20T00:00:00", "2026-12-20 00:00"])
def test_naive_freeze_time_is_refused_with_the_fix(value: str) -> None:
    with pytest.raises(InventoryError) as info:
        validated(ChangeFreeze, {"name": "x", "start": value, "end": "2027-01-02T00:00:00Z"}, "t")
    assert "start" in str(info.value)
    assert "write a date with its zone, e.g. 2026-12-20T00:00:00Z" in str(info.value)


def test_freeze_ending_before_it_starts_is_refused() -> None:
    with pytest.raises(InventoryError) as info:
        validated(
            ChangeFreeze,
            {"name": "x", "start": "2027-01-02T00:00:00Z", "end": "2026-12-20T00:00:00Z"},
            "t",
        )
    assert "make `end` later than `start`" in str(info.value)


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        change_allowed(env(), datetime(2026, 12, 1), needs_window=True)


# --- windows --------------------------------------------------------------------------------


def test_inside_a_weekly_window() -> None:
    w = window()
    now = at("2026-12-06T03:15:00+00:00")  # Sunday
    assert current_window(w, now) == (
        at("2026-12-06T02:00:00+00:00"),
        at("2026-12-06T04:00:00+00:00"),
    )
    assert time_left(w, now) == timedelta(minutes=45)
    verdict = change_allowed(env(maintenance_window=w.model_dump()), now, needs_window=True)
    assert verdict.allowed and "inside the maintenance window" in verdict.reason


def test_window_bounds_start_inclusive_end_exclusive() -> None:
    w = window()
    assert current_window(w, at("2026-12-06T02:00:00+00:00")) is not None
    assert time_left(w, at("2026-12-06T02:00:00+00:00")) == timedelta(hours=2)
    assert current_window(w, at("2026-12-06T01:59:59+00:00")) is None
    assert current_window(w, at("2026-12-06T04:00:00+00:00")) is None


def test_outside_names_the_next_window() -> None:
    e = env(
        maintenance_window={"cron": "0 2 * * SUN", "duration": "2h", "timezone": "Europe/Berlin"}
    )
    now = at("2026-12-01T14:00:00+00:00")  # Tuesday
    verdict = change_allowed(e, now, needs_window=True)
    assert not verdict.allowed and verdict.name == "maintenance_window"
    assert verdict.reason == (
        "outside the maintenance window; the next one is "
        "Sun 2026-12-06 02:00\u201304:00 Europe/Berlin"
    )
    assert verdict.ends_at == datetime(2026, 12, 6, 2, tzinfo=BERLIN)
    assert time_left(e.maintenance_window, now) is None  # type: ignore[arg-type]


def test_window_not_needed_or_absent_allows() -> None:
    now = at("2026-12-01T14:00:00+00:00")
    with_window = env(maintenance_window={"cron": "0 2 * * SUN", "duration": "2h"})
    assert change_allowed(with_window, now, needs_window=False).allowed
    assert change_allowed(env(), now, needs_window=True).allowed


def test_next_window_is_strictly_after_now() -> None:
    w = window()
    start, end = next_window(w, at("2026-12-06T02:00:00+00:00"))  # exactly at an opening
    assert start == at("2026-12-13T02:00:00+00:00") and end - start == timedelta(hours=2)


def test_window_crossing_midnight() -> None:
    w = window("0 22 * * SAT", "6h")
    now = at("2026-12-06T03:00:00+00:00")  # Sunday 03:00, opened Saturday 22:00
    assert current_window(w, now) == (
        at("2026-12-05T22:00:00+00:00"),
        at("2026-12-06T04:00:00+00:00"),
    )
    e = env(maintenance_window=w.model_dump())
    reason = change_allowed(e, at("2026-12-06T05:00:00+00:00"), needs_window=True).reason
    assert reason.endswith("Sat 2026-12-12 22:00\u2013Sun 04:00 UTC")


def test_monthly_first_sunday() -> None:
    w = window("0 2 * * SUN#1", "4h")
    start, _ = next_window(w, at("2026-12-01T00:00:00+00:00"))
    assert start == at("2026-12-06T02:00:00+00:00")  # first Sunday of December 2026
    start, _ = next_window(w, at("2026-12-07T00:00:00+00:00"))
    assert start == at("2027-01-03T02:00:00+00:00")
    assert current_window(w, at("2026-12-13T03:00:00+00:00")) is None  # second Sunday


def test_day_of_month_and_weekday_together_are_refused() -> None:
    # cron ORs them: '0 2 1-7 * SUN' would open on days 1-7 AND on every Sunday
    with pytest.raises(InventoryError) as info:
        validated(MaintenanceWindow, {"cron": "0 2 1-7 * SUN", "duration": "4h"}, "t")
    assert "cron" in str(info.value) and "'0 2 * * SUN#1'" in str(info.value)


def test_window_in_a_timezone() -> None:
    w = window(tz="America/New_York")
    # Sunday 02:00 in New York (EST, UTC-5) is 07:00 UTC
    now = at("2026-12-06T07:30:00+00:00")
    start, end = current_window(w, now)  # type: ignore[misc]
    assert start == at("2026-12-06T07:00:00+00:00") and start.tzinfo == ZoneInfo("America/New_York")
    assert (start.hour, end.hour) == (2, 4)
    assert current_window(w, at("2026-12-06T02:30:00+00:00")) is None  # 02:30 UTC: Saturday night


def test_spring_forward_window_opens_at_the_first_existing_minute() -> None:
    # 2026-03-29: Europe/Berlin skips from 02:00 to 03:00; the window opens at 03:00 CEST
    # (01:00 UTC) and still lasts 2 hours of elapsed time
    w = window(tz="Europe/Berlin")
    start, end = next_window(w, at("2026-03-28T12:00:00+00:00"))
    assert start == at("2026-03-29T01:00:00+00:00")
    assert (start.hour, end.hour) == (3, 5)
    assert current_window(w, at("2026-03-29T00:59:00+00:00")) is None
    assert time_left(w, at("2026-03-29T02:00:00+00:00")) == timedelta(hours=1)


def test_fall_back_window_opens_once_at_the_first_occurrence() -> None:
    # 2026-10-25: 02:00-03:00 happens twice in Europe/Berlin; the window opens at the first
    # 02:00 (CEST, 00:00 UTC) and lasts 2 hours of elapsed time: until 03:00 CET (02:00 UTC)
    w = window(tz="Europe/Berlin")
    start, end = next_window(w, at("2026-10-24T12:00:00+00:00"))
    assert utc(start) == at("2026-10-25T00:00:00+00:00") and start.hour == 2
    assert utc(end) == at("2026-10-25T02:00:00+00:00") and end.hour == 3
    assert current_window(w, at("2026-10-25T01:30:00+00:00")) is not None  # the second 02:30
    assert time_left(w, at("2026-10-25T01:30:00+00:00")) == timedelta(minutes=30)
    assert current_window(w, at("2026-10-25T02:00:00+00:00")) is None
    assert next_window(w, at("2026-10-25T01:00:00+00:00"))[0] == at("2026-11-01T01:00:00+00:00")


def test_overlapping_windows_report_the_latest_opening() -> None:
    w = window("0 * * * *", "90m")  # every hour, open 90 minutes
    now = at("2026-12-01T10:40:00+00:00")
    assert current_window(w, now) == (
        at("2026-12-01T10:00:00+00:00"),
        at("2026-12-01T11:30:00+00:00"),
    )
    assert time_left(w, now) == timedelta(minutes=50)


def test_now_in_another_zone_gives_the_same_answer() -> None:
    w = window(tz="Europe/Berlin")
    utc_now = at("2026-12-06T01:30:00+00:00")
    assert current_window(w, utc_now) == current_window(
        w, utc_now.astimezone(ZoneInfo("Asia/Tokyo"))
    )
    assert time_left(w, utc_now) == timedelta(minutes=90)
    assert datetime.now(UTC).tzinfo is UTC
