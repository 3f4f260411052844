"""Pure parts of the freshness check: picking the newest good backup (opsflow.catalog) and
grading its age (tasks.backups)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from opsflow.catalog import fold, newest
from opsflow.ledger import BackupRow
from opsflow.results import Status
from tasks.backups import grade_age


@pytest.mark.parametrize(
    ("hours", "expected"),
    [
        (1, Status.HEALTHY),
        (26, Status.HEALTHY),
        (27, Status.DEGRADED),
        (52, Status.DEGRADED),
        (53, Status.CRITICAL),
    ],
)
def test_age_graded_against_max_age_and_twice_it(hours: int, expected: Status) -> None:
    assert grade_age(timedelta(hours=hours), timedelta(hours=26)) is expected


def test_newest_good_ignores_failed_and_running_backups() -> None:
    def row(day: int, status: str) -> BackupRow:
        return BackupRow(
            backup_id=f"{day}-{status}",
            env="prod",
            database="main",
            kind="postgres",
            store_url="file:///b",
            key=f"prod/main/{day}.sql.zst",
            bytes=1,
            sha256="0" * 64,
            status=status,
            created_at=datetime(2026, 1, day),
        )

    rows = [row(5, "failed"), row(4, "running"), row(3, "complete"), row(2, "verified")]
    chosen = newest(fold(rows))
    assert chosen is not None and chosen.backup_id == "3-complete"
    assert newest(fold([row(5, "failed")])) is None
