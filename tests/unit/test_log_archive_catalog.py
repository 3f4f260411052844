"""Archived log files in the backup catalog (pure): catalogued as kind ``log`` so retention
applies to them, never offered to a restore or a DR drill (even when newer than every database
backup, or named like a database), and ``logs`` reserved as a backup name."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from connectors.stores.base import manifest_key
from flows.dr_drill import plan_dr_drill
from opsflow import catalog
from opsflow.catalog import LOG_KIND, choose, fold, newest_by_series, restorable, retention
from opsflow.errors import InputError
from opsflow.inventory import Environment, InventoryError, parse_inventory
from opsflow.ledger import BackupRow
from tasks.log_archive import archive_extension

T0 = datetime(2026, 11, 1, 2, 0, 0)
_ids = iter(range(1, 10_000))
ENV = Environment.model_validate(
    {
        "databases": [
            {"name": "main", "kind": "postgres", "dsn": "env:UNUSED"},
            {"name": "app", "kind": "sqlite", "path": "app.db"},
        ]
    }
)


def row(backup_id: str, database: str, kind: str, hours: float, key: str = "") -> BackupRow:
    return BackupRow(
        id=next(_ids),
        backup_id=backup_id,
        env="prod",
        database=database,
        kind=kind,
        store_url="file:///b",
        key=key or f"prod/{database}/2026/11/{backup_id}.sql.zst",
        bytes=100,
        sha256="a" * 64,
        status="complete",
        created_at=T0 + timedelta(hours=hours),
        details={"path": "/var/log/app/app.log"} if kind == LOG_KIND else {},
    )


def log_row(backup_id: str, hours: float, database: str = "logs") -> BackupRow:
    key = f"prod/logs/2026/11/20261101T0{int(hours) % 10}0000Z-{backup_id}.app.log.zst"
    return row(backup_id, database, LOG_KIND, hours, key)


ROWS = [
    row("pg-old", "main", "postgres", 1),
    row("lite", "app", "sqlite", 2),
    log_row("log1", 5),
    log_row("log2", 9),  # newer than every database backup
    log_row("rogue", 10, database="main"),  # a log row named like a database: still a log
]


def test_restore_chooses_database_backups_never_log_archives() -> None:
    series = restorable(fold(ROWS, manifest_of=manifest_key))
    assert all(key.kind != LOG_KIND for key in series)
    chosen = choose(series, "prod", ENV)
    assert [(db.name, source.backup_id) for _i, db, source in chosen] == [
        ("main", "pg-old"),
        ("app", "lite"),
    ]
    with pytest.raises(InputError) as refused:
        choose(series, "prod", ENV, "main", backup_id="log2")
    assert refused.value.field == "backup_id"


def test_a_catalog_of_only_log_archives_has_nothing_to_restore() -> None:
    only_logs = restorable(fold([log_row("l1", 1), log_row("l2", 2, database="main")]))
    assert only_logs == {}
    with pytest.raises(InputError, match="main in prod has no complete backup"):
        choose(only_logs, "prod", ENV)


def test_the_dr_drill_drills_databases_never_log_archives() -> None:
    newest = newest_by_series(fold(ROWS, manifest_of=manifest_key))
    assert {key.kind for key in newest} == {"postgres", "sqlite"}
    plan = plan_dr_drill("prod", ENV, newest, "S")
    text = " ".join(step.why for step in plan.steps)
    assert "pg-old" in text and "lite" in text
    assert ".log" not in text and "log1" not in text and "log2" not in text
    logs_only = newest_by_series(fold([log_row("l1", 1, database="main")]))
    assert logs_only == {}


def test_retention_applies_to_log_archives_like_backups() -> None:
    entries = fold(ROWS, manifest_of=manifest_key)
    decided = retention(entries, "file:///b", 30, datetime(2027, 1, 1).astimezone())
    kept = {e.backup_id for e in decided.kept}
    expired = {e.backup_id for e in decided.expired}
    assert "log2" in kept and "rogue" in kept  # the newest of each log series
    assert "log1" in expired  # an older archive past retention_days goes
    assert {"pg-old", "lite"} <= kept


def test_logs_is_a_reserved_backup_name() -> None:
    text = "environments:\n  p:\n    databases: [{name: logs, kind: sqlite, path: a.db}]\n"
    with pytest.raises(InventoryError) as info:
        parse_inventory(text)
    (problem,) = info.value.problems
    assert "is named 'logs', which is reserved for the archived log files" in problem[1]
    assert "`config` or `logs`" in problem[2]
    assert sorted(catalog.ARCHIVE_KINDS) == ["log"]


@pytest.mark.parametrize(
    ("path", "extension"),
    [
        ("/var/log/app/app.log", "app.log.zst"),
        ("/var/log/app/app-error_2026-01-01.log", "app.error.2026.01.01.log.zst"),
        ("/var/log/app/...", "log.zst"),
        ("/var/log/app/" + "a" * 100 + ".log", "a" * 64 + ".zst"),
    ],
)
def test_archive_extension_is_a_store_key_extension(path: str, extension: str) -> None:
    assert archive_extension(path) == extension
