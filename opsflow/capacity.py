"""Capacity and trends, the pure parts (no I/O, no Prefect): series of figures read back from
the ledger (disk, memory, database and backup sizes), their growth per week, the days until a
disk or volume is full at that rate, and the rows of the capacity table; and for the monthly
performance comparison, percentiles and the earlier months' baseline.

Times are naive UTC, like every ledger time (an aware ``now`` is converted).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field

from opsflow.units import format_bytes

DAY = timedelta(days=1)
FULL_WITHIN_DAYS = 30.0
"""A series that is full within this many days (at its growth rate) degrades the report."""

Unit = Literal["bytes", "pct"]


class Point(NamedTuple):
    at: datetime
    value: float


class Series(BaseModel):
    """One figure of one target over time, e.g. ``disk`` of ``/var/lib/postgresql``.
    ``capacity``: the value at which it is full (a disk's size, a memory limit), if any."""

    name: str
    target: str
    unit: Unit = "bytes"
    points: list[Point] = Field(default_factory=list)
    capacity: float | None = None

    @property
    def label(self) -> str:
        return f"{self.name} {self.target}"

    def ordered(self) -> list[Point]:
        return sorted(self.points, key=lambda p: p.at)

    def latest(self) -> Point | None:
        return max(self.points, key=lambda p: p.at, default=None)

    def since(self, start: datetime) -> Series:
        """The same series with only its points at or after ``start``."""
        start = naive_utc(start)
        return self.model_copy(update={"points": [p for p in self.points if p.at >= start]})


def naive_utc(moment: datetime) -> datetime:
    """``moment`` as naive UTC (ledger times are naive UTC; an aware time is converted)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def growth_per_week(points: Sequence[Point]) -> float | None:
    """The least-squares slope of ``points`` in value per week; None with fewer than two
    points or when they span less than a day (too little to call a trend)."""
    if len(points) < 2:
        return None
    origin = min(p.at for p in points)
    days = [(p.at - origin) / DAY for p in points]
    if max(days) < 1.0:
        return None
    mean_x = statistics.fmean(days)
    mean_y = statistics.fmean(p.value for p in points)
    spread = sum((x - mean_x) ** 2 for x in days)
    slope = sum((x - mean_x) * (p.value - mean_y) for x, p in zip(days, points, strict=True))
    return slope / spread * 7.0


def days_until_full(series: Series, now: datetime) -> float | None:
    """Days from ``now`` until ``series`` reaches its capacity, growing from its latest value
    at its weekly growth rate (the time since the latest point already counts); 0 when it is
    full; None when it has no capacity or is not growing."""
    latest = series.latest()
    if series.capacity is None or latest is None:
        return None
    if latest.value >= series.capacity:
        return 0.0
    weekly = growth_per_week(series.points)
    if weekly is None or weekly <= 0:
        return None
    elapsed = (naive_utc(now) - latest.at) / DAY
    return max(0.0, (series.capacity - latest.value) / (weekly / 7.0) - elapsed)


def format_value(value: float | None, unit: Unit) -> str:
    if value is None:
        return "-"
    return format_bytes(value) if unit == "bytes" else f"{value:.1f}%"


def _tidy(value: float, unit: Unit) -> float:
    """A computed figure without float noise (1073741823.9999 bytes is 1 GiB)."""
    return float(round(value)) if unit == "bytes" else round(value, 3)


def capacity_rows(series: Iterable[Series], now: datetime) -> list[dict[str, Any]]:
    """The capacity table: one row per series with points, soonest full first, then by name."""
    rows: list[tuple[float, str, dict[str, Any]]] = []
    for s in series:
        ordered = s.ordered()
        if not ordered:
            continue
        latest = ordered[-1]
        weekly = growth_per_week(ordered)
        full_in = days_until_full(s, now)
        used_pct = (
            round(100.0 * latest.value / s.capacity, 1)
            if s.capacity and s.unit == "bytes"
            else None
        )
        weekly_text = "-" if weekly is None else format_value(_tidy(weekly, s.unit), s.unit)
        if weekly is not None and weekly > 0:
            weekly_text = "+" + weekly_text
        row = {
            "metric": s.name,
            "target": s.target,
            "points": len(ordered),
            "first": f"{ordered[0].at:%Y-%m-%d}",
            "latest": format_value(latest.value, s.unit),
            "latest_at": f"{latest.at:%Y-%m-%d %H:%M}",
            "capacity": format_value(s.capacity, s.unit),
            "used_pct": used_pct,
            "growth_per_week": weekly_text,
            "days_until_full": None if full_in is None else round(full_in, 1),
        }
        rows.append((full_in if full_in is not None else float("inf"), s.label, row))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [row for _, _, row in rows]


def full_soon(
    series: Iterable[Series], now: datetime, within: float = FULL_WITHIN_DAYS
) -> list[tuple[Series, float]]:
    """The series that are full within ``within`` days, soonest first, with their days."""
    found = [(s, days_until_full(s, now)) for s in series]
    soon = [(s, d) for s, d in found if d is not None and d <= within]
    return sorted(soon, key=lambda item: item[1])


# ----- performance -------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile of ``values`` (linear between the closest ranks, like numpy's
    default); ``values`` must not be empty."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class MonthFigures(NamedTuple):
    month: str
    """``YYYY-MM``"""
    figures: dict[str, float]


def monthly_baseline(
    history: Iterable[tuple[datetime, dict[str, Any]]],
    now: datetime,
    names: Sequence[str],
    months: int = 6,
) -> tuple[dict[str, float], list[MonthFigures]]:
    """The median of each figure in ``names`` over the earlier months: ``history`` is
    (recorded at, figures) newest first; each month counts once (its newest figures that hold
    every name as a number), the current month of ``now`` never, at most ``months`` months."""
    current = f"{naive_utc(now):%Y-%m}"
    chosen: dict[str, dict[str, float]] = {}
    for at, figures in history:
        month = f"{at:%Y-%m}"
        if month >= current or month in chosen:
            continue
        values = {name: figures.get(name) for name in names}
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values.values()):
            chosen[month] = {k: float(v) for k, v in values.items() if v is not None}
    kept = sorted(chosen.items(), reverse=True)[:months]
    baseline = {name: statistics.median(f[name] for _, f in kept) for name in names} if kept else {}
    return baseline, [MonthFigures(m, f) for m, f in kept]


def regressions(
    measured: dict[str, float], baseline: dict[str, float], threshold_pct: float
) -> list[str]:
    """One line per figure slower than its baseline by more than ``threshold_pct``."""
    found: list[str] = []
    for name, value in measured.items():
        base = baseline.get(name)
        if base is None or base <= 0:
            continue
        change = 100.0 * (value - base) / base
        if change > threshold_pct:
            found.append(
                f"{name.removesuffix('_ms')} {value:.1f} ms is {change:.0f}% above the "
                f"earlier months' median {base:.1f} ms (threshold {threshold_pct:g}%)"
            )
    return found
