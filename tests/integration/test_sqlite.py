"""check_sqlite against real SQLite files: healthy, corrupted pages, garbage, missing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from opsflow.errors import PermanentError
from opsflow.inventory import Database, Thresholds
from opsflow.results import Status
from tasks.sqlite import check_sqlite

pytestmark = pytest.mark.integration
FIELD = "environments.local.databases[0]"


def _make_db(path: Path, rows: int = 2000, wal: bool = True) -> None:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=wal")
    conn.execute("create table items (id integer primary key, name text, pad text)")
    conn.execute("create index items_name on items (name)")
    conn.executemany(
        "insert into items (name, pad) values (?, ?)",
        ((f"item-{i:05d}", "x" * 100) for i in range(rows)),
    )
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _database(path: Path) -> Database:
    return Database(name="ledger", kind="sqlite", path=str(path))


def test_healthy_file_reports_quick_check_size_and_journal_mode(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _make_db(path)
    before = path.read_bytes()
    result = check_sqlite.fn(_database(path), Thresholds(), FIELD)
    assert result.status is Status.HEALTHY, result.summary
    assert result.details["quick_check"] == ["ok"]
    assert result.details["journal_mode"] == "wal"
    assert result.details["busy_timeout_ms"] == 5000
    assert result.details["size_bytes"] == path.stat().st_size > 200_000
    assert result.details["page_count"] * result.details["page_size"] == path.stat().st_size
    assert path.read_bytes() == before  # opened read-only: nothing written


def test_corrupted_index_pages_are_critical(tmp_path: Path) -> None:
    path = tmp_path / "broken.db"
    _make_db(path, wal=False)
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("select rootpage from sqlite_master where name = 'items_name'").fetchone()
    conn.close()
    with path.open("r+b") as handle:  # scribble over the index's root page body
        handle.seek((root[0] - 1) * page_size + 16)
        handle.write(b"\xff" * (page_size - 32))
    result = check_sqlite.fn(_database(path), Thresholds(), FIELD)
    assert result.status is Status.CRITICAL
    assert "restore it from the newest verified backup" in result.summary
    problems = result.details["quick_check"]
    assert problems[0].startswith("On tree page") and len(problems) > 1
    assert f"failed quick_check with {len(problems)} problem(s), first: On tree page" in (
        result.summary
    )


def test_file_that_is_not_a_database_is_critical(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite at all " * 400)
    result = check_sqlite.fn(_database(path), Thresholds(), FIELD)
    assert result.status is Status.CRITICAL
    assert "not a database" in result.summary


def test_missing_file_is_permanent_and_names_path_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "missing.db"
    with pytest.raises(PermanentError) as caught:
        check_sqlite.fn(_database(path), Thresholds(), FIELD)
    message = str(caught.value)
    assert str(path) in message
    assert f"{FIELD}.path" in message
    assert "fix:" in message
    assert not path.exists()  # read-only open must not create it
