"""check_backup_freshness against a real (temporary SQLite) ledger."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from opsflow.inventory import Environment
from opsflow.ledger import Ledger, utcnow
from opsflow.results import Status
from tasks.backups import check_backup_freshness

pytestmark = pytest.mark.integration


@pytest.fixture()
def catalog_ledger_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def _env(**extra: object) -> Environment:
    return Environment.model_validate(
        {
            "databases": [
                {"name": "fresh", "kind": "postgres", "dsn": "env:UNUSED"},
                {"name": "stale", "kind": "postgres", "dsn": "env:UNUSED"},
                {"name": "ancient", "kind": "sqlite", "path": "app.db"},
                {"name": "never", "kind": "postgres", "dsn": "env:UNUSED"},
            ],
            "redis": [{"name": "cache", "url": "redis://127.0.0.1:6379/0"}],
            "thresholds": {"backup_max_age": "26h"},
            **extra,
        }
    )


def _backup(
    ledger: Ledger, env: str, database: str, age: timedelta, status: str, kind: str = "postgres"
) -> str:
    row = ledger.record_backup(
        env=env,
        database=database,
        kind=kind,
        store_url="file:///backups",
        key=f"{env}/{database}/{kind}-{status}.zst",
        bytes=1234,
        sha256="0" * 64,
        status=status,
        created_at=utcnow() - age,
    )
    return row.backup_id


def test_each_database_graded_by_its_newest_complete_backup(catalog_ledger_url: str) -> None:
    ledger = Ledger(catalog_ledger_url)
    fresh_id = _backup(ledger, "prod", "fresh", timedelta(hours=30), "complete")
    fresh_id = _backup(ledger, "prod", "fresh", timedelta(hours=1), "verified")
    _backup(ledger, "prod", "fresh", timedelta(minutes=5), "failed")  # newer but not good
    _backup(ledger, "prod", "stale", timedelta(hours=30), "complete")
    _backup(ledger, "prod", "ancient", timedelta(hours=60), "complete", kind="sqlite")
    _backup(ledger, "prod", "never", timedelta(hours=1), "failed")
    _backup(ledger, "staging", "never", timedelta(hours=1), "complete")  # other environment
    _backup(ledger, "prod", "cache", timedelta(hours=2), "complete", kind="redis")
    ledger.close()

    results = check_backup_freshness.fn(
        "prod", _env(backup_store={"url": "file:///backups"}), catalog_ledger_url
    )
    by_target = {result.target: result for result in results}
    assert list(by_target) == ["fresh", "stale", "ancient", "never", "cache"]
    assert all(result.check == "backup_freshness" for result in results)

    assert by_target["fresh"].status is Status.HEALTHY
    assert by_target["fresh"].details["backup_id"] == fresh_id
    assert by_target["fresh"].details["status"] == "verified"
    assert 3500 <= by_target["fresh"].details["age_s"] <= 3700

    assert by_target["stale"].status is Status.DEGRADED
    assert "older than 1d 2h" in by_target["stale"].summary

    assert by_target["ancient"].status is Status.CRITICAL
    assert "older than 2d 4h" in by_target["ancient"].summary

    assert by_target["never"].status is Status.CRITICAL
    assert "no complete backup of postgres database 'never' in prod" in by_target["never"].summary

    assert by_target["cache"].status is Status.HEALTHY
    assert by_target["cache"].details["kind"] == "redis"


def test_empty_catalog_is_critical_for_every_target(catalog_ledger_url: str) -> None:
    results = check_backup_freshness.fn(
        "prod", _env(backup_store={"url": "s3://bucket/prod"}), catalog_ledger_url
    )
    assert len(results) == 5
    assert {result.status for result in results} == {Status.CRITICAL}


def test_environment_without_backup_store_is_degraded(catalog_ledger_url: str) -> None:
    results = check_backup_freshness.fn("dev", _env(), catalog_ledger_url)
    assert len(results) == 1
    assert results[0].status is Status.DEGRADED
    assert results[0].target == "dev"
    assert "backups are not configured" in results[0].summary
    assert "add backup_store" in results[0].summary


def test_each_target_is_graded_by_the_backups_of_its_own_kind(catalog_ledger_url: str) -> None:
    """The finding: the freshness check grouped backups by name, so a fresh backup of another
    kind with the same name (a Redis target, the config export) made a stale database look
    fresh."""
    env = Environment.model_validate(
        {
            "databases": [{"name": "main", "kind": "postgres", "dsn": "env:UNUSED"}],
            "redis": [{"name": "sessions", "url": "redis://127.0.0.1:6379/0"}],
            "backup_store": {"url": "file:///backups"},
        }
    )
    ledger = Ledger(catalog_ledger_url)
    old_pg = _backup(ledger, "prod", "main", timedelta(hours=60), "complete")
    _backup(ledger, "prod", "main", timedelta(minutes=5), "complete", kind="redis")
    _backup(ledger, "prod", "main", timedelta(minutes=5), "complete", kind="config")
    _backup(ledger, "prod", "sessions", timedelta(minutes=5), "verified", kind="postgres")
    ledger.close()

    results = {r.target: r for r in check_backup_freshness.fn("prod", env, catalog_ledger_url)}

    assert results["main"].status is Status.CRITICAL, results["main"].summary
    assert results["main"].details["backup_id"] == old_pg
    assert results["main"].details["kind"] == "postgres database"
    assert results["sessions"].status is Status.CRITICAL
    assert "no complete backup of redis 'sessions' in prod" in results["sessions"].summary
