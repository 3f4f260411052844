"""The capacity report on a real ledger (SQLite and PostgreSQL): 60 days of health-check step
rows written at their past times (``opsflow.ledger.utcnow`` moved back; the chain stays
valid), a disk growing 2 GiB a week, then 1 GiB a week for the last 30 days, a small disk
close to full, a database and its backups. The days until full come out as computed from the
rows, each window reads only its own rows, and the chart is an SVG holding every series,
published on a real Prefect server as a markdown artifact that embeds it."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.context import get_run_context

import opsflow.ledger
from opsflow.capacity import Point, Series
from opsflow.errors import InputError
from opsflow.inventory import Thresholds
from opsflow.ledger import Ledger
from opsflow.maintenance import RUNBOOK, MaintenanceStep
from opsflow.reports import publish_chart
from opsflow.results import CheckResult
from tasks.capacity import build_capacity_report, capacity_report, chart_id, render_chart
from tasks.postgres.checks import PostgresStats
from tasks.system import check_disk

pytestmark = pytest.mark.integration
Open = Callable[..., Ledger]

GIB = 2**30
NOW = datetime(2026, 11, 30, 12, 0)
DAYS = 60
ENV = "prod"
DATA_SIZE = 200 * GIB
LOGS_SIZE = 40 * GIB
REAL_UTCNOW = opsflow.ledger.utcnow


def at(i: int) -> datetime:
    """The time of the i-th daily check, 0 (59 days ago) .. 59 (an hour ago)."""
    return NOW - timedelta(days=DAYS - 1 - i, hours=1)


def data_used(i: int) -> float:
    """2 GiB a week for days 0..29, then 1 GiB a week."""
    if i <= 29:
        return 50 * GIB + i * 2 * GIB / 7
    return data_used(29) + (i - 29) * GIB / 7


def logs_used(i: int) -> float:
    """0.5 GiB a week, 1.5 GiB left at the last check."""
    return LOGS_SIZE - 1.5 * GIB - (DAYS - 1 - i) * 0.5 * GIB / 7


class Seeder:
    def __init__(self, ledger: Ledger, monkeypatch: pytest.MonkeyPatch, shape: CheckResult):
        self.ledger = ledger
        self.monkeypatch = monkeypatch
        self.shape = shape

    def at(self, moment: datetime) -> None:
        self.monkeypatch.setattr(opsflow.ledger, "utcnow", lambda: moment)

    def check(self, result: CheckResult, env: str = ENV, runbook: str = "health-check") -> None:
        """A health check's result written as ``RunbookRun.record_check`` writes it."""
        self.ledger.record_step(
            flow_run_id=f"run-{result.check}",
            runbook=runbook,
            env=env,
            step=result.check,
            target=result.target,
            status=result.status.value,
            summary=result.summary,
            duration_ms=result.duration_ms,
            details=result.details,
        )

    def disk(self, path: str, used: float, size: int, env: str = ENV) -> None:
        """A check_disk result (its real details, the figures of this disk)."""
        details = {
            **self.shape.details,
            "path": path,
            "used_bytes": int(used),
            "free_bytes": int(size - used),
            "total_bytes": size + GIB,  # with the blocks reserved for root, as statvfs says
            "used_pct": round(100 * used / size, 2),
        }
        self.check(self.shape.model_copy(update={"target": path, "details": details}), env)


def postgres_result(size: int) -> CheckResult:
    stats = PostgresStats("16.4", 5, 100, size, 0.0, "app")
    return CheckResult(
        check="postgres", target="app", status="healthy", summary="ok", details=asdict(stats)
    )


def seed(ledger: Ledger, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shape = check_disk.fn(str(tmp_path), Thresholds())
    seeder = Seeder(ledger, monkeypatch, shape)
    for i in range(DAYS):
        seeder.at(at(i))
        seeder.disk("/data", data_used(i), DATA_SIZE)
        seeder.disk("/logs", logs_used(i), LOGS_SIZE)
        seeder.disk("/data", 1.0, DATA_SIZE, env="staging")  # another environment
        if i % 10 == 0:
            seeder.check(postgres_result(GIB + i * 10 * 2**20))
    # a failed disk check (no figures) and the maintenance runbook's own database figures
    seeder.at(at(DAYS - 1) + timedelta(minutes=5))
    seeder.check(CheckResult.failed("disk", "/data", "cannot stat /data"))
    measured = MaintenanceStep(
        step="measure_postgres",
        target="app",
        before={"database_bytes": 2 * GIB},
        after={"database_bytes": 2 * GIB - 100 * 2**20},
    )
    ledger.record_step(
        flow_run_id="maint",
        runbook=RUNBOOK,
        env=ENV,
        step=measured.step,
        target=measured.target,
        status="complete",
        details=measured.ledger_details(),
    )
    backups = []
    for day in (5, 20, 40, 50, 58):  # 55, 40, 20, 10 and 2 days ago
        created = at(day)
        seeder.at(created)
        backups.append(
            ledger.record_backup(
                env=ENV,
                database="app",
                kind="postgres",
                store_url="file:///backups",
                key=f"app-{day}.dump.zst",
                bytes=100 * 2**20 + day * 2**20,
                sha256="a" * 64,
                status="complete",
                created_at=created,
            )
        )
    seeder.at(NOW - timedelta(minutes=30))
    ledger.mark_verified(backups[-1], verified_at=NOW, flow_run_id="drill", how="restored")
    monkeypatch.setattr(opsflow.ledger, "utcnow", REAL_UTCNOW)


def expected_days(used: float, size: int, per_week: float) -> float:
    """From the last row: what is left at that rate, less the hour since it was written."""
    return (size - used) / (per_week / 7) - 1 / 24


def row_of(rows: list[dict[str, Any]], metric: str, target: str) -> dict[str, Any]:
    found = [r for r in rows if r["metric"] == metric and r["target"] == target]
    assert len(found) == 1, rows
    return found[0]


def test_days_until_full_from_seeded_history(
    open_ledger: Open, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ledger = open_ledger()
    seed(ledger, monkeypatch, tmp_path)
    assert ledger.verify().ok, ledger.verify().problems

    step, rows, series = build_capacity_report(ENV, ledger, days=30, now=NOW)
    data = row_of(rows, "disk", "/data")
    # the last 30 days: only the rows at 1 GiB a week (the days 30..59)
    assert data["points"] == 30
    assert data["growth_per_week"] == "+1.0 GiB"
    assert data["days_until_full"] == pytest.approx(
        expected_days(data_used(59), DATA_SIZE, GIB), abs=0.05
    )
    assert data["capacity"] == "200.0 GiB"  # used + free, not the total with reserved blocks
    logs = row_of(rows, "disk", "/logs")
    assert logs["days_until_full"] == pytest.approx(
        expected_days(logs_used(59), LOGS_SIZE, GIB / 2), abs=0.05
    )
    assert step.status == "degraded"
    assert "disk /logs in 21.0 days" in step.summary
    assert "/data" not in step.summary
    assert step.details["full_soon"] == ["disk /logs"]
    assert step.after["soonest_full_days"] == pytest.approx(21.0, abs=0.05)
    assert rows[0]["target"] == "/logs"  # soonest full first
    # database sizes: the health checks' and the maintenance runbook's, in one series
    database = row_of(rows, "database", "app")
    assert database["points"] == 3 + 1  # checks on days 30, 40, 50 and measure_postgres
    assert database["latest"] == "1.9 GiB"
    assert database["days_until_full"] is None
    backup = row_of(rows, "backup", "app (postgres)")
    assert backup["points"] == 3  # 20, 10 and 2 days ago; the verified copy is the same backup
    assert {r["metric"] for r in rows} == {"disk", "database", "backup"}
    assert len(series) == len(rows) == 4


def test_windows_read_only_their_rows(
    open_ledger: Open, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ledger = open_ledger()
    seed(ledger, monkeypatch, tmp_path)
    _, month, _ = build_capacity_report(ENV, ledger, days=30, now=NOW)
    _, quarter, _ = build_capacity_report(ENV, ledger, days=90, now=NOW)
    _, week, _ = build_capacity_report(ENV, ledger, days=7, now=NOW)
    data_90 = row_of(quarter, "disk", "/data")
    assert data_90["points"] == DAYS
    assert data_90["first"] == f"{at(0):%Y-%m-%d}"
    assert row_of(month, "disk", "/data")["first"] == f"{at(30):%Y-%m-%d}"
    assert row_of(week, "disk", "/data")["points"] == 7
    # over 90 days the older, faster growth counts too: between the two rates
    weekly_90 = float(data_90["growth_per_week"].removeprefix("+").removesuffix(" GiB"))
    assert 1.05 < weekly_90 < 1.95
    assert data_90["days_until_full"] < row_of(month, "disk", "/data")["days_until_full"]
    assert row_of(quarter, "database", "app")["points"] == 6 + 1
    assert row_of(quarter, "backup", "app (postgres)")["points"] == 5
    # nothing of the other environment, and an environment without rows reports nothing
    staging_step, staging_rows, _ = build_capacity_report("staging", ledger, days=30, now=NOW)
    assert [r["points"] for r in staging_rows] == [30]
    assert staging_step.status == "complete"
    assert "none full within 30 days" in staging_step.summary
    empty, rows, _ = build_capacity_report("nowhere", ledger, days=30, now=NOW)
    assert (empty.status, rows) == ("complete", [])
    assert empty.summary == "no capacity figures in the ledger for the last 30 days"


def test_the_task_returns_an_svg_chart_of_every_series(
    open_ledger: Open, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ledger = open_ledger()
    seed(ledger, monkeypatch, tmp_path)
    step, rows, svg = capacity_report.fn(ENV, ledger, days=90, now=NOW)
    assert step.step == "capacity_report"
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    texts = {t.text for t in root.iter(f"{ns}text")}
    marks: dict[str, int] = {}
    for g in root.iter(f"{ns}g"):
        if g.get("id", "").startswith("series-"):
            marks[g.get("id", "")] = len(list(g.iter(f"{ns}use")))
    # drawn soonest full first, like the rows: each series' points are its marks
    assert len(marks) == len(rows) == 4
    for index, row in enumerate(rows):
        assert f"{row['metric']} {row['target']}" in texts
        assert marks[chart_id(index)] == row["points"]
    assert "GiB" in texts


def test_chart_without_series_and_bad_days(open_ledger: Open) -> None:
    root = ET.fromstring(render_chart([]))
    assert "no capacity figures" in {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    ledger = open_ledger()
    for days in (0, -5, True, 10_000):
        with pytest.raises(InputError, match="days"):
            build_capacity_report(ENV, ledger, days=days, now=NOW)


def test_memory_series_of_containers_pods_redis_and_metrics(
    open_ledger: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each memory figure as its check records it; pods of one container under new names
    (a rollout) stay one series; the limit is the capacity."""
    ledger = open_ledger()
    seeder = Seeder(
        ledger, monkeypatch, CheckResult(check="-", target="-", status="healthy", summary="")
    )
    mib = 2**20
    for i in range(8):
        seeder.at(NOW - timedelta(days=7 - i))
        seeder.check(
            CheckResult(
                check="container",
                target="api",
                status="healthy",
                summary="ok",
                details={
                    "memory_pct": 10.0,
                    "memory_bytes": (100 + 10 * i) * mib,
                    "memory_limit_bytes": 200 * mib,
                },
            )
        )
        pod = "web-5d9f-abcde" if i < 4 else "web-7c41-fghij"
        seeder.check(
            CheckResult(
                check="pod_resources",
                target=f"shop/{pod}",
                status="healthy",
                summary="ok",
                details={
                    "containers": {
                        "app": {
                            "cpu_cores": 0.1,
                            "memory_bytes": 64 * mib,
                            "memory_pct": 25.0,
                            "memory_limit_bytes": 256 * mib,
                        }
                    }
                },
            )
        )
        seeder.check(
            CheckResult(
                check="redis",
                target="cache",
                status="healthy",
                summary="ok",
                details={"used_memory": (10 + i) * mib, "maxmemory": 0},
            )
        )
        seeder.check(
            CheckResult(
                check="metrics",
                target="app-metrics",
                status="healthy",
                summary="ok",
                details={
                    "memory": {
                        "metric": "memory_usage_percent",
                        "pct": 40.0 + i,
                        "status": "healthy",
                        "threshold": 90.0,
                    }
                },
            )
        )
    monkeypatch.setattr(opsflow.ledger, "utcnow", REAL_UTCNOW)
    step, rows, series = build_capacity_report(ENV, ledger, days=30, now=NOW)
    by = {(s.name, s.target): s for s in series}
    assert set(by) == {
        ("memory", "api"),
        ("memory", "shop/app"),
        ("redis_memory", "cache"),
        ("memory", "app-metrics"),
    }
    assert by[("memory", "api")].capacity == 200 * mib
    assert len(by[("memory", "shop/app")].points) == 8
    assert by[("memory", "shop/app")].capacity == 256 * mib
    assert by[("redis_memory", "cache")].capacity is None  # maxmemory 0: no limit
    metrics = by[("memory", "app-metrics")]
    assert (metrics.unit, metrics.capacity) == ("pct", 100.0)
    # the container: 10 MiB a day, 30 MiB left at the last check (now): 3 days
    api = row_of(rows, "memory", "api")
    assert api["days_until_full"] == pytest.approx(3.0, abs=0.01)
    # 1 % a day from 47 % at the last check: 53 days
    assert row_of(rows, "memory", "app-metrics")["days_until_full"] == pytest.approx(53.0)
    assert row_of(rows, "memory", "app-metrics")["latest"] == "47.0%"
    assert step.status == "degraded"
    assert step.details["full_soon"] == ["memory api"]


@flow(name="publish-capacity-chart")
def _publish_chart_flow(svg: str) -> str:
    publish_chart("capacity-lab-30d", svg, "Capacity of lab, last 30 days")
    context = get_run_context()
    return str(context.flow_run.id)  # type: ignore[union-attr]


def test_the_chart_is_published_as_a_markdown_artifact_embedding_it(prefect_api: str) -> None:
    svg = render_chart(
        [
            Series(
                name="disk",
                target="/data",
                points=[Point(at(i), data_used(i)) for i in range(DAYS)],
                capacity=DATA_SIZE,
            )
        ]
    )
    run_id = _publish_chart_flow(svg)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    [artifact] = [a for a in artifacts if a.key == "capacity-lab-30d"]
    assert artifact.type == "markdown"
    assert artifact.description == "Capacity of lab, last 30 days"
    match = re.search(r"\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", str(artifact.data))
    assert match is not None
    assert base64.b64decode(match.group(1)).decode() == svg
