"""Capacity and trends from the ledger (the maintenance runbook's ``capacity_report``): the
figures the health checks and maintenance steps recorded — disk used (capacity: used + free,
as ``df`` counts it), container / pod / Redis / scraped memory (capacity: the limit or
maxmemory), database sizes (PostgreSQL and SQLite checks, ``measure_postgres``) and backup
sizes — over the last ``days`` days, their growth per week and the days until full, as table
rows and an SVG chart. The arithmetic is ``opsflow.capacity``; this module reads the ledger.

Which step rows hold which figures (``details``):

    disk           used_bytes, free_bytes                       (tasks/system.py check_disk)
    container      memory_bytes, memory_limit_bytes             (tasks/docker/checks.py)
    pod_resources  containers.<name>.memory_bytes, memory_limit_bytes (tasks/kubernetes/checks.py)
    metrics        memory.used_bytes / limit_bytes, or memory.pct (tasks/http/metrics.py)
    redis          used_memory, maxmemory (0: none)             (tasks/redis.py)
    postgres       size_bytes                                   (tasks/postgres/checks.py)
    sqlite         size_bytes                                   (tasks/sqlite.py)
    measure_postgres  after.database_bytes                      (the maintenance runbook)
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from opsflow.capacity import (
    FULL_WITHIN_DAYS,
    Point,
    Series,
    Unit,
    capacity_rows,
    full_soon,
    growth_per_week,
    monthly_baseline,
    naive_utc,
    percentile,
    regressions,
)
from opsflow.errors import InputError, TransientError
from opsflow.inventory.maintenance import BenchmarkProbe
from opsflow.ledger import Ledger, StepRow, utcnow
from opsflow.maintenance import RUNBOOK, MaintenanceStep
from opsflow.redaction import redact
from tasks.http.client import TLSVerificationError, http_request, resolved, tls_verify
from tasks.policy import api_task, probe_task

MAX_DAYS = 3660
HISTORY_LIMIT = 20_000
"""Step rows read per figure (a check every 5 minutes for 60 days is ~17 000)."""
CHART_SERIES = 12
"""At most this many series are drawn (the soonest full first); the table holds them all."""

Figure = tuple[str, str, Unit, float, float | None]
"""(series name, target, unit, value, capacity) read from one step row."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _limit(value: Any) -> float | None:
    number = _number(value)
    return number if number is not None and number > 0 else None


def _disk(row: StepRow) -> Iterator[Figure]:
    used, free = _number(row.details.get("used_bytes")), _number(row.details.get("free_bytes"))
    if used is not None and free is not None:
        yield "disk", row.target, "bytes", used, used + free


def _container(row: StepRow) -> Iterator[Figure]:
    used = _number(row.details.get("memory_bytes"))
    if used is not None:
        yield "memory", row.target, "bytes", used, _limit(row.details.get("memory_limit_bytes"))


def _pod_resources(row: StepRow) -> Iterator[Figure]:
    """Pods come and go under new names: a series per namespace and container."""
    namespace = row.target.split("/", 1)[0]
    containers = row.details.get("containers")
    for name, info in (containers or {}).items() if isinstance(containers, dict) else ():
        used = _number(info.get("memory_bytes")) if isinstance(info, dict) else None
        if used is not None:
            limit = _limit(info.get("memory_limit_bytes"))
            yield "memory", f"{namespace}/{name}", "bytes", used, limit


def _metrics(row: StepRow) -> Iterator[Figure]:
    memory = row.details.get("memory")
    if not isinstance(memory, dict):
        return
    used = _number(memory.get("used_bytes"))
    if used is not None:
        yield "memory", row.target, "bytes", used, _limit(memory.get("limit_bytes"))
        return
    pct = _number(memory.get("pct"))
    if pct is not None:
        yield "memory", row.target, "pct", pct, 100.0


def _redis(row: StepRow) -> Iterator[Figure]:
    used = _number(row.details.get("used_memory"))
    if used is not None:
        yield "redis_memory", row.target, "bytes", used, _limit(row.details.get("maxmemory"))


def _database(row: StepRow) -> Iterator[Figure]:
    size = _number(row.details.get("size_bytes"))
    if size is not None:
        yield "database", row.target, "bytes", size, None


def _measured_postgres(row: StepRow) -> Iterator[Figure]:
    after = row.details.get("after")
    size = _number(after.get("database_bytes")) if isinstance(after, dict) else None
    if size is not None:
        yield "database", row.target, "bytes", size, None


READERS: dict[str, Callable[[StepRow], Iterator[Figure]]] = {
    "disk": _disk,
    "container": _container,
    "pod_resources": _pod_resources,
    "metrics": _metrics,
    "redis": _redis,
    "postgres": _database,
    "sqlite": _database,
    "measure_postgres": _measured_postgres,
}
"""Step name -> the figures one of its rows holds."""


def read_series(env_name: str, ledger: Ledger, since: datetime) -> list[Series]:
    """Every series of ``env_name`` recorded at or after ``since`` (naive UTC): the step
    figures of ``READERS`` and the backup sizes (one point per backup, at its creation)."""
    since = naive_utc(since)
    points: dict[tuple[str, str, Unit], list[Point]] = {}
    capacity: dict[tuple[str, str, Unit], float | None] = {}
    for step, read in READERS.items():
        rows = ledger.step_history(env_name, step, since=since, limit=HISTORY_LIMIT)
        for row in reversed(rows):  # oldest first: the newest capacity wins
            if row.status == "failed":
                continue
            for name, target, unit, value, limit in read(row):
                key = (name, target, unit)
                points.setdefault(key, []).append(Point(row.recorded_at, value))
                if limit is not None or key not in capacity:
                    capacity[key] = limit
    seen: set[str] = set()
    for backup in ledger.backups(env=env_name, limit=None):
        if backup.backup_id in seen or backup.created_at < since:
            continue
        seen.add(backup.backup_id)
        key = ("backup", f"{backup.database} ({backup.kind})", "bytes")
        points.setdefault(key, []).append(Point(backup.created_at, float(backup.bytes)))
        capacity.setdefault(key, None)
    return [
        Series(name=n, target=t, unit=u, points=sorted(p), capacity=capacity.get((n, t, u)))
        for (n, t, u), p in sorted(points.items())
    ]


def build_capacity_report(
    env_name: str, ledger: Ledger, *, days: int, now: datetime | None = None
) -> tuple[MaintenanceStep, list[dict[str, Any]], list[Series]]:
    """The capacity step, its table rows and the series (``capacity_report`` without the
    chart): degraded when a series is full within ``FULL_WITHIN_DAYS`` days."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise InputError(
            "days", f"is {days!r}, must be a whole number of days from 1 to {MAX_DAYS}", "use 30"
        )
    now = naive_utc(now or utcnow())
    series = read_series(env_name, ledger, now - timedelta(days=days))
    rows = capacity_rows(series, now)
    soon = full_soon(series, now)
    growing = sum(1 for s in series if (growth_per_week(s.points) or 0) > 0)
    after: dict[str, float | int | str | None] = {
        "series": len(series),
        "growing": growing,
        "full_within_days": len(soon),
        "soonest_full_days": round(soon[0][1], 1) if soon else None,
    }
    step = MaintenanceStep(
        step="capacity_report",
        target=f"last {days} days",
        after=after,
        details={"days": days, "full_soon": [s.label for s, _ in soon]},
    )
    if not series:
        step.summary = f"no capacity figures in the ledger for the last {days} days"
    elif soon:
        step.status = "degraded"
        step.summary = f"full within {FULL_WITHIN_DAYS:g} days: " + ", ".join(
            f"{s.label} in {d:.1f} days" for s, d in soon
        )
    else:
        step.summary = (
            f"{len(series)} series over the last {days} days, {growing} growing; "
            f"none full within {FULL_WITHIN_DAYS:g} days"
        )
    return step, rows, series


@probe_task("capacity_report", timeout_seconds=120)
def capacity_report(
    env_name: str, ledger: Ledger, *, days: int, now: datetime | None = None
) -> tuple[MaintenanceStep, list[dict[str, Any]], str]:
    """The capacity step (degraded when something is full within 30 days), the table rows
    (``opsflow.reports.publish_table``) and the SVG chart (``publish_chart``)."""
    step, rows, series = build_capacity_report(env_name, ledger, days=days, now=now)
    return step, rows, render_chart(series)


def chart_id(index: int) -> str:
    """The SVG ``id`` of the points of the ``index``-th series drawn (tests count its marks)."""
    return f"series-{index}"


def render_chart(series: list[Series]) -> str:
    """An SVG chart: one small panel per series (its points, the trend, the capacity as a
    dashed line), at most ``CHART_SERIES`` of them, soonest full first (matplotlib, Agg,
    imported here: it is slow to import). Text stays text (``svg.fonttype: none``)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    drawn = _chart_order([s for s in series if s.points])[:CHART_SERIES]
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "opsflow", "font.size": 8}):
        rows = max(1, (len(drawn) + 1) // 2)
        cols = 1 if len(drawn) <= 1 else 2
        figure, axes = plt.subplots(rows, cols, figsize=(5 * cols, 2.4 * rows), squeeze=False)
        try:
            for ax in axes.flat[len(drawn) :]:
                ax.set_axis_off()
            if not drawn:
                axes[0][0].text(0.5, 0.5, "no capacity figures", ha="center", va="center")
            for index, (ax, s) in enumerate(zip(axes.flat, drawn, strict=False)):
                _panel(ax, s, index)
            figure.tight_layout()
            out = io.StringIO()
            figure.savefig(out, format="svg", metadata={"Date": None})
        finally:
            plt.close(figure)
    return out.getvalue()


def _chart_order(series: list[Series]) -> list[Series]:
    now = max(p.at for s in series for p in s.points) if series else datetime(1970, 1, 1)
    soon = {s.label: d for s, d in full_soon(series, now, within=float("inf"))}
    return sorted(series, key=lambda s: (soon.get(s.label, float("inf")), s.label))


def _axis_unit(s: Series) -> tuple[float, str]:
    if s.unit == "pct":
        return 1.0, "%"
    top = max([p.value for p in s.points] + [s.capacity or 0.0])
    for power, unit in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if top >= 1024**power:
            return float(1024**power), unit
    return 1.0, "B"


MIN_CHART_SPAN = timedelta(hours=2)
"""Narrower time axes are widened to this (the date locator has no ticks for seconds)."""


def _panel(ax: Any, s: Series, index: int) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    scale, unit = _axis_unit(s)
    ordered = s.ordered()
    xs = [p.at for p in ordered]
    ys = [p.value / scale for p in ordered]
    (line,) = ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.0, label=s.label)
    line.set_gid(chart_id(index))
    weekly = growth_per_week(ordered)
    if weekly is not None:
        per_day = weekly / 7.0 / scale
        mean_x = sum((x - xs[0]).total_seconds() for x in xs) / len(xs) / 86400
        mean_y = sum(ys) / len(ys)
        ends = [xs[0], xs[-1]]
        trend = [mean_y + per_day * ((x - xs[0]).total_seconds() / 86400 - mean_x) for x in ends]
        ax.plot(ends, trend, linestyle=":", linewidth=1.0, color="grey")
    if s.capacity is not None:
        ax.axhline(s.capacity / scale, linestyle="--", linewidth=1.0, color="red")
    if xs[-1] - xs[0] < MIN_CHART_SPAN:  # a first run: points seconds apart
        ax.set_xlim(xs[0] - MIN_CHART_SPAN / 2, xs[-1] + MIN_CHART_SPAN / 2)
    locator = AutoDateLocator(maxticks=6)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_title(s.label, fontsize=8)
    ax.set_ylabel(unit)
    ax.grid(True, linewidth=0.3)


# ----- the monthly performance comparison --------------------------------------------------

PERFORMANCE_STEP = "compare_performance"
FIGURES = ("p50_ms", "p95_ms")
BENCHMARK_DEADLINE_S = 600.0
"""The requests stop after this long; the figures are judged on what was measured."""
ERRORS_DEGRADED_PCT = 5.0
ERRORS_FAILED_PCT = 50.0
BASELINE_MONTHS = 6
"""Error share of the requests that degrades / fails the step (then latency means little)."""


class Benchmark(NamedTuple):
    latencies_ms: list[float]
    """Of the requests that succeeded."""
    errors: int
    sent: int
    problems: dict[str, int]
    """What went wrong, e.g. ``HTTP 503`` or ``connection``, and how often."""
    stopped: str = ""


def run_benchmark(probe: BenchmarkProbe, *, deadline_s: float = BENCHMARK_DEADLINE_S) -> Benchmark:
    """Request ``probe.url`` ``probe.requests`` times, one after the other, each on a new
    connection (``tasks.http.client.http_request``), timing each; 4xx/5xx answers and
    network errors count as errors. Stops early once half of the requests failed, or at the
    deadline: no request waits past it (its timeout is cut to the time left), so a call takes
    at most ``deadline_s`` whatever ``probe.timeout`` is."""
    url, headers = resolved(probe)
    verify = tls_verify(probe.verify_tls, probe.ca_file)
    latencies: list[float] = []
    problems: dict[str, int] = {}
    errors = sent = 0
    started = time.monotonic()
    stopped = ""
    for _ in range(probe.requests):
        left = deadline_s - (time.monotonic() - started)
        if left <= 0:
            stopped = f"stopped after {sent} of {probe.requests} requests ({deadline_s:g}s)"
            break
        if errors * 100 >= ERRORS_FAILED_PCT * probe.requests:
            stopped = f"stopped after {sent} of {probe.requests} requests (too many errors)"
            break
        sent += 1
        begin = time.perf_counter()
        try:
            timeout = min(probe.timeout, timedelta(seconds=left))
            response = http_request(probe.method, url, timeout, verify, headers)
        except TLSVerificationError:
            raise
        except TransientError as exc:
            errors += 1
            kind = "timeout" if "did not answer" in str(exc) else "connection"
            problems[kind] = problems.get(kind, 0) + 1
            continue
        elapsed_ms = (time.perf_counter() - begin) * 1000
        if response.status_code >= 400:
            errors += 1
            kind = f"HTTP {response.status_code}"
            problems[kind] = problems.get(kind, 0) + 1
            continue
        latencies.append(elapsed_ms)
    return Benchmark(latencies, errors, sent, problems, stopped)


def _performance_history(
    env_name: str, ledger: Ledger, now: datetime
) -> Iterator[tuple[datetime, dict[str, Any]]]:
    since = now - timedelta(days=BASELINE_MONTHS * 31 + 31)
    for row in ledger.step_history(env_name, PERFORMANCE_STEP, runbook=RUNBOOK, since=since):
        after = row.details.get("after")
        if row.status in ("complete", "degraded") and isinstance(after, dict):
            yield row.recorded_at, after


def judge_benchmark(
    probe: BenchmarkProbe,
    bench: Benchmark,
    history: Iterable[tuple[datetime, dict[str, Any]]],
    now: datetime,
) -> MaintenanceStep:
    """The step of one benchmark against the earlier months' median (pure)."""
    step = MaintenanceStep(step=PERFORMANCE_STEP, target=probe.name)
    error_pct = 100.0 * bench.errors / bench.sent if bench.sent else 100.0
    problems = ", ".join(f"{n} x {kind}" for kind, n in sorted(bench.problems.items()))
    step.details = {"requests": bench.sent, "url": redact(probe.url)}
    if bench.problems:
        step.details["problems"] = dict(bench.problems)
    step.after = {"p50_ms": None, "p95_ms": None, "errors": bench.errors, "requests": bench.sent}
    if not bench.latencies_ms or error_pct >= ERRORS_FAILED_PCT:
        step.status = "failed"
        step.summary = (
            f"{bench.errors} of {bench.sent} requests to {probe.name} failed ({problems}): "
            "no latency figures (fix: check that the benchmark URL answers 2xx)"
        )
        if bench.stopped:
            step.summary += f"; {bench.stopped}"
        return step
    measured = {
        "p50_ms": round(percentile(bench.latencies_ms, 50), 1),
        "p95_ms": round(percentile(bench.latencies_ms, 95), 1),
    }
    step.after.update(measured)
    baseline, months = monthly_baseline(history, now, FIGURES, BASELINE_MONTHS)
    step.before = {f"baseline_{k}": round(v, 1) for k, v in baseline.items()}
    step.details["baseline_months"] = [m.month for m in months]
    figures = f"p50 {measured['p50_ms']:.1f} ms, p95 {measured['p95_ms']:.1f} ms"
    notes: list[str] = []
    if not baseline:
        notes.append("no earlier figures to compare with")
    else:
        slower = regressions(measured, baseline, probe.regression_pct)
        notes += slower or [
            f"within {probe.regression_pct:g}% of the median of {len(months)} earlier month(s) "
            f"(p50 {baseline['p50_ms']:.1f} ms, p95 {baseline['p95_ms']:.1f} ms)"
        ]
        if slower:
            step.status = "degraded"
    if bench.errors:
        notes.append(f"{bench.errors} of {bench.sent} requests failed ({problems})")
        if error_pct > ERRORS_DEGRADED_PCT:
            step.status = "degraded"
    if bench.stopped:
        notes.append(bench.stopped)
        step.status = "degraded"
    step.summary = f"{probe.name}: {figures} over {len(bench.latencies_ms)} requests; " + "; ".join(
        notes
    )
    return step


@api_task("compare_performance", timeout_seconds=BENCHMARK_DEADLINE_S + 120)
def compare_performance(
    env_name: str, probe: BenchmarkProbe, ledger: Ledger, *, now: datetime | None = None
) -> MaintenanceStep:
    """Run the benchmark probe and compare its p50/p95 with the median of the earlier months'
    figures (this environment's ``compare_performance`` rows of the maintenance runbook):
    slower by more than ``probe.regression_pct`` → degraded, naming the figure. Its ``after``
    (p50_ms, p95_ms, errors) is what the next months compare with."""
    started = time.monotonic()
    now = naive_utc(now or utcnow())
    bench = run_benchmark(probe)
    step = judge_benchmark(probe, bench, _performance_history(env_name, ledger, now), now)
    step.seconds = round(time.monotonic() - started, 2)
    return step
