"""The deadline a maintenance step must finish by (the end of the window, less a margin): one
timezone-aware instant, checked before a step starts and between its batches. Pure."""

from __future__ import annotations

from datetime import UTC, datetime

from opsflow.errors import InputError


def aware_deadline(deadline: datetime | None) -> datetime | None:
    """``deadline`` in UTC; a naive datetime is refused (its time zone would be a guess)."""
    if deadline is None:
        return None
    if deadline.tzinfo is None or deadline.utcoffset() is None:
        raise InputError(
            "deadline",
            f"{deadline.isoformat()} has no time zone",
            "pass a timezone-aware instant, e.g. datetime.now(UTC) + timedelta(minutes=30)",
        )
    return deadline.astimezone(UTC)


def seconds_left(deadline: datetime | None, now: datetime) -> float | None:
    """Seconds from ``now`` to ``deadline`` (negative once passed); None without a deadline."""
    if deadline is None:
        return None
    return (deadline - now.astimezone(UTC)).total_seconds()


def deadline_passed(deadline: datetime | None, now: datetime) -> bool:
    left = seconds_left(deadline, now)
    return left is not None and left <= 0


def skipped_reason(deadline: datetime, now: datetime) -> str:
    late = -(seconds_left(deadline, now) or 0.0)
    return (
        f"not started: the deadline {deadline:%Y-%m-%d %H:%M:%S} UTC passed {late:.0f}s ago "
        "(fix: run it in the next maintenance window, or give the window more time)"
    )
