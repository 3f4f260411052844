"""May a change run now? Change freezes and maintenance windows from the inventory.

Pure: no I/O, no clock; every function takes ``now`` (a timezone-aware datetime). The deploy
and maintenance runbooks call ``change_allowed`` before they change anything, whatever
started them (a person, the API, a schedule).

Semantics (docs/inventory.md says the same for operators):

* A **change freeze** is active from ``start`` (inclusive) to ``end`` (exclusive). When
  freezes overlap or follow each other, the refusal lasts until the last of the chain ends.
* A **maintenance window** opens at every time its cron expression matches, read as wall-clock
  time in the window's ``timezone``, and stays open for ``duration`` of *elapsed* time.
* **DST days** follow cronsim (Debian cron): on the spring-forward day a window whose start
  does not exist (02:00 in Europe/Berlin on the last Sunday of March) opens at the first
  minute that exists (03:00 CEST) and still lasts ``duration`` (02:00-04:00 becomes
  03:00-05:00); on the fall-back day a start that happens twice (02:00 on the last Sunday of
  October) opens once, at the first occurrence (02:00 CEST), and lasts ``duration`` of real
  time (02:00 CEST + 2 h = 03:00 CET).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cronsim import CronSim

from opsflow.inventory.changes import ChangeFreeze, MaintenanceWindow
from opsflow.inventory.models import Environment

WINDOW_NAME = "maintenance_window"
EN_DASH = "\u2013"


@dataclass(frozen=True)
class WindowVerdict:
    """The answer of ``change_allowed``."""

    allowed: bool
    reason: str
    """One line an operator reads: why the change may or may not run now."""
    name: str | None
    """The freeze's name, ``"maintenance_window"``, or None when allowed."""
    ends_at: datetime | None
    """When the refusal ends (the freeze's end, the next window's start); None when allowed."""


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware, e.g. datetime.now(UTC)")
    return now


def _end(window: MaintenanceWindow, start: datetime) -> datetime:
    """``start`` + duration of elapsed time (not wall-clock time), in the window's zone."""
    return (start.astimezone(UTC) + window.duration).astimezone(window.zone)


def active_freeze(env: Environment, now: datetime) -> ChangeFreeze | None:
    """The change freeze in force at ``now`` (of several, the one that ends last), or None."""
    now = _aware(now)
    active = [f for f in env.change_freezes if f.start <= now < f.end]
    return max(active, key=lambda f: f.end, default=None)


def _freeze_chain_end(env: Environment, freeze: ChangeFreeze) -> datetime:
    """When the refusal that ``freeze`` starts ends: freezes that begin before the current
    end extend it."""
    end = freeze.end
    extended = True
    while extended:
        extended = False
        for other in env.change_freezes:
            if other.start <= end < other.end:
                end, extended = other.end, True
    return end


def current_window(window: MaintenanceWindow, now: datetime) -> tuple[datetime, datetime] | None:
    """The window ``now`` is in, as (start, end) in the window's zone; None when outside.

    The start is the latest time at or before ``now`` that the cron matches; with overlapping
    windows (a window longer than its cron's period) that is the one open longest."""
    instant = _aware(now).astimezone(UTC)
    local = instant.astimezone(window.zone)
    # cronsim's reverse iteration starts one second before its argument: start one second
    # after now so that a window opening exactly at now is found; skip matches after now.
    # Instants are compared in UTC: Python compares two times of one zone by their wall
    # clock, which is wrong in the hour that happens twice.
    for start in CronSim(window.cron, local + timedelta(seconds=1), reverse=True):
        if start.astimezone(UTC) > instant:
            continue
        if start.astimezone(UTC) + window.duration <= instant:
            return None  # the latest start's window is over: so are the earlier ones
        return start, _end(window, start)
    return None  # pragma: no cover - cron expressions are validated to match some day


def next_window(window: MaintenanceWindow, now: datetime) -> tuple[datetime, datetime]:
    """The next window that opens strictly after ``now``, as (start, end) in its zone."""
    instant = _aware(now).astimezone(UTC)
    start = next(CronSim(window.cron, instant.astimezone(window.zone)))
    while start.astimezone(UTC) <= instant:  # pragma: no cover - cronsim moves forward
        start = next(CronSim(window.cron, start))
    return start, _end(window, start)


def time_left(window: MaintenanceWindow, now: datetime) -> timedelta | None:
    """Elapsed time until the current window ends; None when ``now`` is outside a window."""
    current = current_window(window, now)
    if current is None:
        return None
    return current[1].astimezone(UTC) - now.astimezone(UTC)


def describe_window(window: MaintenanceWindow, start: datetime, end: datetime) -> str:
    """``Sun 2026-12-06 02:00-04:00 Europe/Berlin`` (an en dash between the times; the end's
    day named when it differs)."""
    end_text = end.strftime("%H:%M") if end.date() == start.date() else end.strftime("%a %H:%M")
    return f"{start.strftime('%a %Y-%m-%d %H:%M')}{EN_DASH}{end_text} {window.timezone}"


def change_allowed(env: Environment, now: datetime, *, needs_window: bool) -> WindowVerdict:
    """May a change run in ``env`` at ``now``?

    Refused while a change freeze is active (whatever ``needs_window`` says), and, when
    ``needs_window`` and the environment has a ``maintenance_window``, outside that window.
    An environment without a window has no window to wait for."""
    now = _aware(now)
    freeze = active_freeze(env, now)
    if freeze is not None:
        ends = _freeze_chain_end(env, freeze)
        why = f" ({freeze.reason})" if freeze.reason else ""
        return WindowVerdict(
            allowed=False,
            reason=f"change freeze {freeze.name!r} until "
            f"{ends.astimezone(UTC).strftime('%Y-%m-%d %H:%M')} UTC{why}",
            name=freeze.name,
            ends_at=ends,
        )
    window = env.maintenance_window
    if not needs_window or window is None:
        return WindowVerdict(True, "no change freeze is active", None, None)
    current = current_window(window, now)
    if current is not None:
        return WindowVerdict(
            True,
            "inside the maintenance window " + describe_window(window, *current),
            None,
            None,
        )
    start, end = next_window(window, now)
    return WindowVerdict(
        allowed=False,
        reason="outside the maintenance window; the next one is "
        + describe_window(window, start, end),
        name=WINDOW_NAME,
        ends_at=start,
    )
