"""When a change may happen: maintenance windows, change freezes, and how a change is verified
afterwards (the verification window of a deploy).

``opsflow.windows`` answers "may this change run now?" from these models; this module only
validates them. Times are checked here so that a window or freeze that could never be
evaluated is refused when the inventory is read, not when a deploy is already running.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError
from pydantic import Field, field_validator, model_validator

from opsflow.inventory.fields import Model, positive_duration

MAX_WINDOW = timedelta(hours=24)
AWARE_FIX = "write a date with its zone, e.g. 2026-12-20T00:00:00Z or 2026-12-20T01:00:00+01:00"


def check_cron(value: str) -> str:
    """A 5-field cron expression that cronsim can evaluate, whose day fields are unambiguous.

    Cron ORs day-of-month and day-of-week when both are restricted (``0 2 1-7 * SUN`` runs on
    days 1-7 *and* on every Sunday), which is almost never what a maintenance window means: such
    an expression is refused with the fix ``SUN#1`` (the first Sunday of the month)."""
    fields = value.split()
    if len(fields) != 5:
        raise ValueError(
            f"{value!r} is not a cron expression (fix: use 5 fields: minute hour day-of-month "
            "month day-of-week, e.g. '0 2 * * SUN')"
        )
    try:
        CronSim(value, datetime(2026, 1, 1))
    except (CronSimError, ValueError, IndexError) as exc:
        raise ValueError(
            f"{value!r} is not a valid cron expression ({exc}) (fix: use 5 fields, e.g. "
            "'0 2 * * SUN' for Sundays 02:00 or '0 2 * * SUN#1' for the first Sunday of a month)"
        ) from None
    if not fields[2].startswith("*") and not fields[4].startswith("*"):
        raise ValueError(
            f"{value!r} restricts both day-of-month and day-of-week, which cron ORs (every day "
            f"{fields[2]} and every {fields[4]}) (fix: keep one of them: for the first Sunday "
            f"of a month write '{fields[0]} {fields[1]} * {fields[3]} SUN#1')"
        )
    return value


def check_timezone(value: str) -> str:
    """An IANA time zone name (``Europe/Berlin``, ``UTC``)."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        lowered = value.lower()
        close = sorted(z for z in available_timezones() if z.lower().endswith(lowered))[:3]
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"{value!r} is not a known time zone (fix: {hint}write an IANA name such as "
            "UTC, Europe/Berlin or America/New_York)"
        ) from None
    return value


class MaintenanceWindow(Model):
    """A recurring window: it opens at each time ``cron`` matches, in ``timezone``, and stays
    open for ``duration`` of elapsed time (see docs/inventory.md for DST days)."""

    cron: str = Field(description="when the window opens, e.g. '0 2 * * SUN'")
    duration: timedelta = Field(description="how long it stays open (at most 24h)")
    timezone: str = Field("UTC", description="IANA time zone of the cron expression")

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        parsed = positive_duration(value)
        if parsed > MAX_WINDOW:
            raise ValueError("must be at most 24h (fix: write e.g. 2h or 4h)")
        return parsed

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class ChangeFreeze(Model):
    """A period in which no change runs (year-end, a launch): from ``start`` to ``end``."""

    name: str = Field(min_length=1)
    start: datetime
    end: datetime
    reason: str = ""

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"has no time zone, so it is ambiguous (fix: {AWARE_FIX})")
        return value

    @model_validator(mode="after")
    def _order(self) -> ChangeFreeze:
        if self.end <= self.start:
            raise ValueError(
                f"change freeze {self.name!r} ends before it starts (fix: make `end` later "
                "than `start`)"
            )
        return self


class Verification(Model):
    """The verification window after a change: every ``interval`` for ``duration``, sample the
    environment's metrics (error rate, p95 latency over the requests since the last sample)
    and health endpoints; ``failure_limit`` failed samples fail the change."""

    duration: timedelta = Field(default=timedelta(minutes=2))
    interval: timedelta = Field(default=timedelta(seconds=10))
    failure_limit: int = Field(3, description="failed samples that fail the change (total)")
    max_error_rate_pct: float = Field(5.0, description="5xx share of the requests, in %")
    max_p95_ms: float = Field(1000.0, description="95th percentile latency, in ms")
    metrics: list[str] = Field(
        default_factory=list, description="names of the environment's metrics sources; [] = all"
    )
    endpoints: bool = Field(True, description="also check the health endpoints every sample")

    @field_validator("duration", "interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return positive_duration(value)

    @field_validator("failure_limit")
    @classmethod
    def _limit(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"is {value}, must be at least 1 (fix: write e.g. failure_limit: 3)")
        return value

    @field_validator("max_error_rate_pct")
    @classmethod
    def _rate(cls, value: float) -> float:
        if not 0 < value <= 100:
            raise ValueError(
                f"is {value:g}, must be above 0 and at most 100 (fix: write a percentage, "
                "e.g. max_error_rate_pct: 5)"
            )
        return value

    @field_validator("max_p95_ms")
    @classmethod
    def _p95(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(
                f"is {value:g}, must be above 0 (fix: write milliseconds, e.g. max_p95_ms: 1000)"
            )
        return value

    @model_validator(mode="after")
    def _interval_fits(self) -> Verification:
        if self.interval > self.duration:
            raise ValueError(
                "interval is longer than duration, so no sample would be taken (fix: make "
                "interval at most duration, e.g. duration: 2m, interval: 10s)"
            )
        names = [n for n in self.metrics if self.metrics.count(n) > 1]
        if names:
            raise ValueError(f"metrics lists {sorted(set(names))} twice (fix: list each once)")
        return self

    @property
    def samples(self) -> int:
        """How many samples a full window takes (one every interval, after the baseline)."""
        return int(self.duration / self.interval)
