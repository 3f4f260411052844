"""The backup plan is a pure function of the inventory: one dump per database, then retention."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.postgres import PgDsn, pg_dump_argv
from connectors.stores.objects import dump_extension
from deployments.runbooks import get_runbook
from flows.backup import (
    BackupReport,
    DatabaseBackup,
    DeletedBackup,
    plan_backup,
    render_backup_report,
)
from opsflow.errors import InputError
from opsflow.inventory import load_inventory, parse_inventory

INVENTORY = parse_inventory("""
environments:
  prod:
    databases:
      - {name: main, kind: postgres, dsn: "env:DSN"}
      - {name: svg, kind: postgres, dsn: "env:DSN2", via: {docker_exec: svg-ai-db}}
      - {name: k8s, kind: postgres, dsn: "env:DSN3", via: {kubectl_exec: postgres}}
      - {name: app, kind: sqlite, path: app.db}
    backup_store: {url: "s3://bucket/prod", retention_days: 14}
  nostore:
    databases: [{name: app, kind: sqlite, path: app.db}]
  nodbs:
    backup_store: {url: "file:///var/backups"}
""")


def test_one_dump_step_per_database_then_retention() -> None:
    plan = plan_backup("prod", INVENTORY.environment("prod"))
    assert [(s.action, s.target) for s in plan.steps] == [
        ("dump_postgres", "main"),
        ("dump_postgres", "svg"),
        ("dump_postgres", "k8s"),
        ("dump_sqlite", "app"),
        ("apply_retention", "s3://bucket/prod"),
    ]
    assert all(s.changes for s in plan.steps)
    assert "via direct, zstd" in plan.steps[0].why
    assert "docker_exec svg-ai-db" in plan.steps[1].why
    assert "14 days" in plan.steps[-1].why
    assert "never the newest verified" in plan.steps[-1].why
    assert any("k8s" in note and "kubectl_exec" in note for note in plan.notes)
    assert plan.parameters == {"codec": "zstd"}


def test_gzip_is_selectable_and_shown() -> None:
    plan = plan_backup("prod", INVENTORY.environment("prod"), codec="gzip")
    assert "gzip" in plan.steps[0].why
    assert dump_extension("postgres", "gzip") == "sql.gz"
    assert dump_extension("sqlite", "zstd") == "sqlite.zst"


@pytest.mark.parametrize("codec", ["lz4", "none", ""])
def test_unknown_codec_fails_before_anything_runs(codec: str) -> None:
    with pytest.raises(InputError, match="codec"):
        plan_backup("prod", INVENTORY.environment("prod"), codec=codec)


def test_missing_backup_store_is_an_input_error_naming_the_field() -> None:
    with pytest.raises(InputError) as caught:
        plan_backup("nostore", INVENTORY.environment("nostore"))
    assert caught.value.field == "environments.nostore.backup_store"
    assert "s3://" in caught.value.fix


def test_no_databases_plans_only_retention_and_says_so() -> None:
    plan = plan_backup("nodbs", INVENTORY.environment("nodbs"))
    assert [s.action for s in plan.steps] == ["apply_retention"]
    assert any("no databases" in note for note in plan.notes)


def test_registered_as_nightly_and_shipped_local_env_backs_up_its_ledger() -> None:
    book = get_runbook("backup")
    assert book.deployment_name == "backup/nightly"
    local = load_inventory(Path(__file__).parents[2] / "inventory.yaml").environment("local")
    plan = book.plan("local", local)
    assert ("dump_sqlite", "ledger") in [(s.action, s.target) for s in plan.steps]
    assert plan.steps[-1].target.startswith("file://")


def test_password_goes_to_the_environment_never_the_command_line() -> None:
    dsn = PgDsn.parse("postgresql://backup:s3cr3t-pw@db.example.test:5433/app", "db")
    conninfo, password = dsn.conninfo(), dsn.password
    assert password == "s3cr3t-pw"
    assert dsn.env()["PGPASSWORD"] == "s3cr3t-pw"
    assert "s3cr3t-pw" not in conninfo
    argv = pg_dump_argv(conninfo, snapshot="00000003-1")
    assert "s3cr3t-pw" not in " ".join(argv)
    assert "--no-owner" in argv and "--format=plain" in argv and "--no-password" in argv
    assert "--snapshot=00000003-1" in argv
    assert "host=db.example.test" in conninfo and "port=5433" in conninfo


def test_report_shows_sizes_rates_and_failures() -> None:
    report = BackupReport(
        env="prod",
        store_url="file:///b",
        backups=[
            DatabaseBackup(
                database="main",
                kind="postgres",
                via="direct",
                status="complete",
                key="prod/main/2026/01/20260101T020000Z.sql.zst",
                bytes=2_000_000,
                raw_bytes=10_000_000,
                seconds=2.0,
                rate_mib_s=5.0,
            ),
            DatabaseBackup(
                database="ghost",
                kind="postgres",
                via="direct",
                status="failed",
                error="database does not exist",
            ),
        ],
        deleted=[
            "prod/main/2025/11/20251101T020000Z.sql.zst",
            "prod/main/2025/11/20251101T020000Z.manifest.json",
        ],
        deleted_backups=[
            DeletedBackup(
                backup_id="b0",
                kind="postgres",
                name="main",
                key="prod/main/2025/11/20251101T020000Z.sql.zst",
                created_at=datetime(2025, 11, 1, 2, tzinfo=UTC),
            )
        ],
        uncatalogued=["prod/main/2025/10/20251001T020000Z.sql.zst"],
        seconds=3.5,
    )
    text = render_backup_report(report, datetime(2026, 1, 1, 2, tzinfo=UTC))
    assert report.failed == ["ghost"]
    assert "**FAILED**" in text
    assert (
        "| main | postgres | direct | complete | 1.9 MiB | 9.5 MiB | 5.0x | 2.00 | 4.8 MiB/s |"
        in text
    )
    assert "- **ghost**: database does not exist" in text
    assert (
        "- deleted backup b0 (postgres main, taken 2025-11-01 02:00 UTC) "
        "`prod/main/2025/11/20251101T020000Z.sql.zst` and its manifest"
    ) in text
    assert "in no catalog entry of this ledger and were left in place: " in text
    assert "`prod/main/2025/10/20251001T020000Z.sql.zst`" in text
