"""The maintenance plan (pure): steps per variant, in order, and the requests it refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flows.maintenance import plan_maintenance
from opsflow.catalog import CatalogEntry
from opsflow.errors import InputError
from opsflow.inventory import Environment
from opsflow.maintenance import (
    MaintenanceReport,
    MaintenanceStep,
    render_maintenance_report,
    rollback_possible,
)

APPROVALS = {"approvers": {"alice": {"totp": "env:ALICE_TOTP"}}}


def env_of(**extra: Any) -> Environment:
    return Environment.model_validate(
        {
            "databases": [
                {"name": "app", "kind": "postgres", "dsn": "env:APP_DSN"},
                {"name": "lite", "kind": "sqlite", "path": "/data/lite.db"},
            ],
            "redis": [{"name": "cache", "url": "redis://127.0.0.1:6379/0"}],
            "backup_store": {"url": "file:///backups"},
            "docker": {"services": [{"name": "web", "container": "web-1"}]},
            "maintenance_mode": {"url": "https://app.example/admin/maintenance"},
            "maintenance": {
                "redis_cleanup": [
                    {"redis": "cache", "pattern": "cache:*", "idle_over": "7d"},
                    {"redis": "cache", "pattern": "tmp:*", "flush": True},
                ],
                "log_archive": [{"path": "/var/log/app/*.log", "max_size": "100MiB"}],
                "benchmark": {"url": "https://app.example/api/ping"},
            },
            **extra,
        }
    )


def actions(variant: str = "weekly", **options: Any) -> list[str]:
    env = options.pop("env", None) or env_of()
    plan = plan_maintenance("prod", env, variant, **options)
    return [f"{s.action} {s.target}" for s in plan.steps]


def test_weekly_runs_every_step_between_mode_on_and_off_in_order() -> None:
    assert actions() == [
        "check_window prod",
        "backup prod",
        "check_rollback prod",
        "maintenance_mode_on https://app.example/admin/maintenance",
        "measure_postgres app",
        "vacuum_postgres app",
        "reindex_postgres app",
        "measure_postgres app",
        "maintain_sqlite lite",
        "clean_redis cache",
        "archive_logs /var/log/app/*.log",
        "summarize_app_logs containers/pods",
        "capacity_report 30d",
        "maintenance_mode_off https://app.example/admin/maintenance",
        "health_check prod",
    ]


def test_monthly_adds_the_performance_comparison_and_the_drill() -> None:
    weekly, monthly = actions("weekly"), actions("monthly")
    added = [a for a in monthly if a not in weekly]
    assert added == ["compare_performance benchmark", "dr_drill subflow"]
    assert monthly.index("dr_drill subflow") < monthly.index(
        "maintenance_mode_off https://app.example/admin/maintenance"
    )


def test_quarterly_adds_the_security_review_and_ninety_days_of_capacity() -> None:
    quarterly = actions("quarterly")
    assert "security_review subflow" in quarterly
    assert "capacity_report 90d" in quarterly and "capacity_report 30d" not in quarterly
    assert "dr_drill subflow" in quarterly


def test_an_environment_without_a_mode_or_store_says_so() -> None:
    env = Environment.model_validate({"databases": [{"name": "l", "kind": "sqlite", "path": "/l"}]})
    plan = plan_maintenance("dev", env)
    names = [s.action for s in plan.steps]
    assert "maintenance_mode_on" not in names and "backup" not in names
    assert any("no maintenance_mode" in n for n in plan.notes)
    assert any("no pre-maintenance backup" in n for n in plan.notes)


def test_approval_is_planned_for_protected_emergency_override_and_vacuum_full() -> None:
    def asks(env: Environment, variant: str = "weekly", **options: Any) -> bool:
        return "request_approval prod" in actions(variant, env=env, **options)

    open_env, approvers = env_of(), env_of(approvals=APPROVALS)
    assert not asks(open_env)
    assert not asks(approvers)
    assert asks(env_of(approvals=APPROVALS, protected=True))
    assert asks(approvers, "emergency", reason="disk full")
    assert asks(approvers, override_window_reason="the window was missed")
    assert asks(approvers, vacuum_full=True)
    full = plan_maintenance("prod", approvers, vacuum_full=True)
    vacuum = next(s for s in full.steps if s.action == "vacuum_postgres")
    assert "VACUUM (FULL, ANALYZE)" in vacuum.why


@pytest.mark.parametrize(
    ("variant", "options", "field", "words"),
    [
        ("daily", {}, "variant", "weekly, monthly, quarterly, emergency"),
        ("emergency", {}, "reason", "needs a reason"),
        ("emergency", {"reason": "  "}, "reason", "is empty"),
        ("emergency", {"reason": "disk full"}, "variant", "no approvers"),
        ("weekly", {"override_window_reason": "now"}, "override_window_reason", "no approvers"),
        ("weekly", {"vacuum_full": True}, "vacuum_full", "VACUUM FULL locks"),
    ],
)
def test_requests_that_cannot_be_approved_or_make_no_sense_are_refused(
    variant: str, options: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(InputError) as caught:
        plan_maintenance("prod", env_of(), variant, **options)
    assert caught.value.field == field
    assert words in str(caught.value)


def test_vacuum_full_needs_a_postgres_database() -> None:
    env = Environment.model_validate(
        {"databases": [{"name": "l", "kind": "sqlite", "path": "/l"}], "approvals": APPROVALS}
    )
    with pytest.raises(InputError) as caught:
        plan_maintenance("dev", env, vacuum_full=True)
    assert caught.value.field == "vacuum_full"


def _entry(
    backup_id: str, database: str, kind: str, hours_ago: float, **extra: Any
) -> CatalogEntry:
    return CatalogEntry(
        backup_id=backup_id,
        env="prod",
        database=database,
        kind=kind,
        store_url="file:///backups",
        key=f"prod/{kind}/{database}/{backup_id}.zst",
        sha256="0" * 64,
        bytes=10,
        codec="zstd",
        created_at=datetime.now(UTC) - timedelta(hours=hours_ago),
        **extra,
    )


def test_rollback_is_possible_only_from_a_verified_newest_backup() -> None:
    env = env_of()
    entries = [
        _entry("old", "app", "postgres", 30, verified=True),
        _entry("new", "app", "postgres", 1),
        _entry("l1", "lite", "sqlite", 1),
    ]
    said = rollback_possible("prod", env, entries, passed={"l1"})
    assert "app: backup new exists but was never drill-verified" in said
    assert "lite: yes (backup l1 verified)" in said
    none = rollback_possible("prod", env, [], passed=set())
    assert "app: NO backup" in none and "lite: NO backup" in none


def test_the_report_shows_every_step_before_and_after_and_what_was_skipped() -> None:
    report = MaintenanceReport(env="prod", variant="weekly", requested_by="ops")
    report.steps = [
        MaintenanceStep(
            step="vacuum_postgres",
            target="app",
            summary="3 tables",
            before={"dead_tuples": 5000},
            after={"dead_tuples": 0},
        ),
        MaintenanceStep(
            step="clean_redis",
            target="cache",
            status="skipped",
            summary="would end after the window",
        ),
    ]
    report.outcome = report.grade()
    text = render_maintenance_report(report, datetime.now(UTC))
    assert report.outcome == "degraded"
    assert "dead_tuples: 5000 → 0" in text
    assert "## Skipped" in text and "**clean_redis cache**: would end after the window" in text
    report.steps[0].status = "failed"
    assert report.grade() == "failed"
