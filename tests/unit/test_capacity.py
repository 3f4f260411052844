"""opsflow.capacity: growth per week, days until full, the table rows, percentiles and the
earlier months' baseline of the performance comparison; the chart markdown of reports."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest

from opsflow.capacity import (
    Point,
    Series,
    capacity_rows,
    days_until_full,
    full_soon,
    growth_per_week,
    monthly_baseline,
    percentile,
    regressions,
)
from opsflow.reports import chart_markdown

GIB = 1024**3
START = datetime(2026, 9, 1, 12, 0)


def linear(days: int, start_value: float, per_day: float, every_hours: int = 24) -> list[Point]:
    steps = days * 24 // every_hours
    return [
        Point(
            START + timedelta(hours=i * every_hours), start_value + per_day * i * every_hours / 24
        )
        for i in range(steps + 1)
    ]


def test_growth_of_a_linear_series_is_its_slope() -> None:
    points = linear(28, 10 * GIB, GIB / 7)  # 1 GiB a week
    assert growth_per_week(points) == pytest.approx(GIB, rel=1e-9)
    # the order of the points does not matter
    assert growth_per_week(list(reversed(points))) == pytest.approx(GIB, rel=1e-9)


def test_growth_needs_two_points_over_a_day() -> None:
    assert growth_per_week([Point(START, 5.0)]) is None
    assert growth_per_week([]) is None
    within_hours = [Point(START, 1.0), Point(START + timedelta(hours=20), 9.0)]
    assert growth_per_week(within_hours) is None
    two_days = [Point(START, 1.0), Point(START + timedelta(days=2), 3.0)]
    assert growth_per_week(two_days) == pytest.approx(7.0)


def test_growth_of_a_noisy_series_is_the_least_squares_slope() -> None:
    # y = 2x + noise uncorrelated with x: slope exactly 2 per day
    values = [0.0, 1.0, 6.0, 5.0, 8.0]  # 0+0, 2-1, 4+2, 6-1, 8+0
    points = [Point(START + timedelta(days=i), v) for i, v in enumerate(values)]
    assert growth_per_week(points) == pytest.approx(14.0)


def test_days_until_full_of_a_linear_disk() -> None:
    points = linear(28, 10 * GIB, GIB / 7)  # reaches 14 GiB on day 28
    disk = Series(name="disk", target="/data", points=points, capacity=20 * GIB)
    latest = points[-1].at
    # 6 GiB left at 1 GiB a week: 42 days from the latest point
    assert days_until_full(disk, latest) == pytest.approx(42.0)
    # two days later, two days fewer (the rate does not know about those days' figures)
    assert days_until_full(disk, latest + timedelta(days=2)) == pytest.approx(40.0)
    # an aware now is the same moment
    assert days_until_full(disk, latest.replace(tzinfo=UTC)) == pytest.approx(42.0)


def test_days_until_full_none_when_shrinking_flat_or_without_capacity() -> None:
    shrinking = Series(
        name="disk", target="/d", points=linear(14, 8 * GIB, -GIB / 10), capacity=GIB * 20
    )
    flat = Series(name="disk", target="/d", points=linear(14, 8 * GIB, 0.0), capacity=GIB * 20)
    unbounded = Series(name="database", target="app", points=linear(14, GIB, GIB))
    single = Series(name="disk", target="/d", points=[Point(START, GIB)], capacity=2 * GIB)
    for series in (shrinking, flat, unbounded, single):
        assert days_until_full(series, START + timedelta(days=14)) is None


def test_a_full_series_has_zero_days() -> None:
    full = Series(name="disk", target="/d", points=linear(7, 19 * GIB, GIB / 7), capacity=20 * GIB)
    assert days_until_full(full, START + timedelta(days=7)) == 0.0
    overdue = Series(name="disk", target="/d", points=linear(7, 10 * GIB, GIB), capacity=30 * GIB)
    # 13 GiB left at 7 GiB/week: 13 days; 20 days later it is past full, never negative
    assert days_until_full(overdue, START + timedelta(days=27)) == 0.0


def test_rows_soonest_full_first_with_figures() -> None:
    now = START + timedelta(days=28)
    disk = Series(
        name="disk", target="/data", points=linear(28, 10 * GIB, GIB / 7), capacity=20 * GIB
    )
    fast = Series(
        name="disk", target="/logs", points=linear(28, 2 * GIB, GIB / 7), capacity=5 * GIB
    )
    db = Series(name="database", target="app", points=linear(28, GIB, -GIB / 70))
    empty = Series(name="memory", target="api", points=[], capacity=GIB)
    rows = capacity_rows([db, disk, empty, fast], now)
    assert [(r["metric"], r["target"]) for r in rows] == [
        ("disk", "/logs"),  # full already (6 GiB > 5 GiB): 0 days
        ("disk", "/data"),
        ("database", "app"),
    ]
    logs, data, app = rows
    assert logs["days_until_full"] == 0.0
    assert data["days_until_full"] == pytest.approx(42.0)
    assert data["points"] == 29
    assert data["latest"] == "14.0 GiB"
    assert data["capacity"] == "20.0 GiB"
    assert data["used_pct"] == pytest.approx(70.0)
    assert data["growth_per_week"] == "+1.0 GiB"
    assert data["first"] == "2026-09-01"
    assert app["days_until_full"] is None
    assert app["capacity"] == "-"
    assert app["growth_per_week"] == "-102.4 MiB"
    assert [s.target for s, _ in full_soon([db, disk, fast], now)] == ["/logs"]
    assert [s.target for s, _ in full_soon([db, disk, fast], now, within=60)] == ["/logs", "/data"]


def test_a_series_since_keeps_its_window() -> None:
    disk = Series(name="disk", target="/d", points=linear(60, GIB, GIB), capacity=100 * GIB)
    recent = disk.since(START + timedelta(days=30))
    assert len(recent.points) == 31
    assert min(p.at for p in recent.points) == START + timedelta(days=30)
    assert len(disk.points) == 61


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile([7.0], 95) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_monthly_baseline_one_figure_per_earlier_month() -> None:
    now = datetime(2026, 12, 10)
    history = [  # newest first, as the ledger gives them
        (datetime(2026, 12, 2), {"p50_ms": 500.0, "p95_ms": 900.0}),  # this month: never
        (datetime(2026, 11, 20), {"p50_ms": 12.0, "p95_ms": 30.0}),  # November's newest
        (datetime(2026, 11, 3), {"p50_ms": 99.0, "p95_ms": 99.0}),  # older in November
        (datetime(2026, 10, 5), {"p50_ms": None, "p95_ms": None}),  # a failed run
        (datetime(2026, 10, 1), {"p50_ms": 10.0, "p95_ms": 20.0}),
        (datetime(2026, 9, 1), {"p50_ms": 14.0, "p95_ms": 40.0}),
        (datetime(2026, 8, 1), {"p50_ms": 1000.0, "p95_ms": 1000.0}),  # beyond 3 months
    ]
    baseline, months = monthly_baseline(history, now, ("p50_ms", "p95_ms"), months=3)
    assert [m.month for m in months] == ["2026-11", "2026-10", "2026-09"]
    assert baseline == {"p50_ms": 12.0, "p95_ms": 30.0}
    assert monthly_baseline(history[:1], now, ("p50_ms",)) == ({}, [])


def test_regressions_name_the_slower_figure() -> None:
    base = {"p50_ms": 10.0, "p95_ms": 20.0}
    assert regressions({"p50_ms": 11.9, "p95_ms": 23.0}, base, 20.0) == []
    found = regressions({"p50_ms": 11.0, "p95_ms": 30.0}, base, 20.0)
    assert len(found) == 1
    assert found[0].startswith("p95 30.0 ms is 50% above")
    assert "20.0 ms" in found[0]
    assert regressions({"p50_ms": 5.0}, {}, 20.0) == []


def test_chart_markdown_embeds_the_svg() -> None:
    svg = '<svg xmlns="http://www.w3.org/2000/svg"><text>disk /data</text></svg>'
    markdown = chart_markdown(svg, "Capacity [30 days]")
    match = re.search(r"!\[([^\]]*)\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match is not None
    assert match.group(1) == "Capacity (30 days)"
    decoded = base64.b64decode(match.group(2)).decode()
    assert ET.fromstring(decoded).find("{http://www.w3.org/2000/svg}text") is not None
    assert decoded == svg
