"""maintain_sqlite against real SQLite files: VACUUM above and below the free-page threshold, a
WAL file checkpointed, a missing file, a database locked by another writer, the deadline."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from opsflow.errors import InputError, PermanentError
from opsflow.inventory import Database, SqliteMaintenance
from tasks.sqlite import maintain_sqlite, maintain_sqlite_file

pytestmark = pytest.mark.integration
FIELD = "environments.local.databases[0]"


def _make_db(path: Path, rows: int = 4000, delete_pct: int = 0, wal: bool = False) -> None:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=wal")
    conn.execute("create table items (id integer primary key, name text, pad text)")
    conn.executemany(
        "insert into items (name, pad) values (?, ?)",
        ((f"item-{i:05d}", "x" * 300) for i in range(rows)),
    )
    conn.commit()
    if delete_pct:
        conn.execute("delete from items where id <= ?", (rows * delete_pct // 100,))
        conn.commit()
    conn.close()


def _count(path: Path) -> int:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return int(conn.execute("select count(*) from items").fetchone()[0])
    finally:
        conn.close()


def _database(path: Path) -> Database:
    return Database(name="app", kind="sqlite", path=str(path))


def test_many_deleted_rows_are_vacuumed_and_the_file_shrinks(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _make_db(path, delete_pct=80)
    rows = _count(path)
    step = maintain_sqlite.fn(_database(path), FIELD, SqliteMaintenance(vacuum_free_pct=20))
    assert step.status == "complete", step.summary
    assert step.step == "maintain_sqlite" and step.target == "app"
    assert isinstance(step.before["free_pages"], int)
    assert isinstance(step.before["page_count"], int)
    assert step.before["free_pages"] * 100 >= 20 * step.before["page_count"]
    assert step.after["free_pages"] == 0
    assert step.after["file_bytes"] == path.stat().st_size
    assert isinstance(step.before["file_bytes"], int) and isinstance(step.after["file_bytes"], int)
    assert step.after["file_bytes"] < step.before["file_bytes"] // 2
    assert "VACUUM" in step.details["done"]
    assert step.details["vacuum"].startswith("VACUUM: ")
    assert "at or above vacuum_free_pct 20%" in step.summary
    assert "not in WAL mode" in step.details["checkpoint"]
    assert _count(path) == rows  # the data survived


def test_below_the_threshold_there_is_no_vacuum_and_the_step_says_why(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _make_db(path, delete_pct=10)
    size = path.stat().st_size
    step = maintain_sqlite_file(_database(path), FIELD, SqliteMaintenance(vacuum_free_pct=50))
    assert step.status == "complete", step.summary
    assert "VACUUM" not in step.details["done"]
    assert "PRAGMA optimize" in step.details["done"]
    free, pages = step.before["free_pages"], step.before["page_count"]
    assert isinstance(free, int) and isinstance(pages, int) and free > 0
    assert f"no VACUUM: {free} of {pages} page(s) free" in step.summary
    assert "below vacuum_free_pct 50%" in step.summary
    assert step.after["free_pages"] == free
    assert path.stat().st_size == size == step.after["file_bytes"]


def test_a_wal_database_is_vacuumed_checkpointed_and_its_wal_truncated(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    _make_db(path, wal=True)
    # the application keeps its connection open; its writes stay in the WAL
    app = sqlite3.connect(path, isolation_level=None)
    try:
        app.execute("PRAGMA wal_autocheckpoint=0")
        app.execute("delete from items where id % 100 < 70")
        wal = Path(f"{path}-wal")
        wal_bytes = wal.stat().st_size
        assert wal_bytes > 100_000
        step = maintain_sqlite_file(_database(path), FIELD, SqliteMaintenance(vacuum_free_pct=30))
        assert step.status == "complete", step.summary
        assert step.before["wal_bytes"] == wal_bytes
        assert step.after["wal_bytes"] == 0 == wal.stat().st_size
        assert "VACUUM" in step.details["done"]
        assert step.details["checkpoint"].startswith("WAL checkpointed and truncated")
        assert step.after["free_pages"] == 0
        assert isinstance(step.after["file_bytes"], int)
        assert isinstance(step.before["file_bytes"], int)
        assert step.after["file_bytes"] < step.before["file_bytes"]
        assert app.execute("select count(*) from items").fetchone()[0] == 4000 * 30 // 100
    finally:
        app.close()


def test_a_missing_file_is_permanent_names_the_field_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "gone.db"
    with pytest.raises(PermanentError) as caught:
        maintain_sqlite.fn(_database(path), FIELD, SqliteMaintenance())
    assert f"{FIELD}.path" in str(caught.value)
    assert "does not exist" in str(caught.value)
    assert sorted(tmp_path.iterdir()) == []  # no empty database, no -wal/-journal


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
def test_a_locked_database_is_reported_within_the_busy_timeout(tmp_path: Path, wal: bool) -> None:
    path = tmp_path / "busy.db"
    _make_db(path, delete_pct=60, wal=wal)
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("insert into items (name, pad) values ('held', 'x')")
        started = time.monotonic()
        step = maintain_sqlite_file(
            _database(path), FIELD, SqliteMaintenance(vacuum_free_pct=20), busy_timeout_s=1.0
        )
        elapsed = time.monotonic() - started
        assert step.status == "degraded"
        assert "locked by another connection holding a write transaction" in step.summary
        assert "1s busy timeout" in step.summary
        assert "fix: run it while the application is stopped" in step.summary
        assert "VACUUM" not in step.details["done"]
        assert step.after["free_pages"] == step.before["free_pages"]
        assert 1.0 <= elapsed < 3.5  # waited the busy timeout once, not once per statement
        writer.execute("COMMIT")  # the writer's transaction was not disturbed
    finally:
        writer.close()
    assert _count(path) == 4000 * 40 // 100 + 1


def test_a_passed_deadline_starts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _make_db(path, delete_pct=80)
    before = path.read_bytes()
    deadline = datetime.now(UTC) - timedelta(minutes=1)
    step = maintain_sqlite.fn(_database(path), FIELD, SqliteMaintenance(), deadline=deadline)
    assert step.status == "skipped"
    assert step.summary.startswith("not started: the deadline")
    assert "fix: run it in the next maintenance window" in step.summary
    assert step.before == {} and step.after == {}
    assert path.read_bytes() == before


def test_a_deadline_in_the_future_lets_it_run(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _make_db(path, delete_pct=80)
    deadline = datetime.now(UTC) + timedelta(minutes=5)
    step = maintain_sqlite.fn(_database(path), FIELD, SqliteMaintenance(), deadline=deadline)
    assert step.status == "complete", step.summary
    assert step.after["free_pages"] == 0


def test_a_naive_deadline_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _make_db(path, rows=10)
    with pytest.raises(InputError, match=r"deadline: .* has no time zone"):
        maintain_sqlite_file(
            _database(path), FIELD, SqliteMaintenance(), deadline=datetime(2030, 1, 1, 2, 0)
        )


def test_a_file_that_is_not_a_database_is_permanent_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"not a database, just text " * 200)
    before = path.read_bytes()
    with pytest.raises(PermanentError) as caught:
        maintain_sqlite.fn(_database(path), FIELD, SqliteMaintenance())
    assert str(caught.value).startswith(f"{FIELD}: {path} is corrupted: file is not a database")
    assert "restore it from the newest verified backup" in str(caught.value)
    assert path.read_bytes() == before


def test_the_deadline_reached_during_vacuum_rolls_it_back_and_degrades(tmp_path: Path) -> None:
    path = tmp_path / "big.db"
    _make_db(path, rows=60_000, delete_pct=50)  # ~20 MiB: its VACUUM takes far more than 1 ms
    rows = _count(path)
    deadline = datetime.now(UTC) + timedelta(hours=1)
    step = maintain_sqlite_file(
        _database(path),
        FIELD,
        SqliteMaintenance(vacuum_free_pct=20),
        deadline=deadline,
        now=lambda: deadline - timedelta(milliseconds=1),  # 1 ms left when it starts
    )
    assert step.status == "degraded"
    assert "stopped at the deadline: interrupted" in step.summary
    assert "VACUUM" not in step.details["done"]
    assert step.after["free_pages"] == step.before["free_pages"]
    assert step.after["file_bytes"] == step.before["file_bytes"] == path.stat().st_size
    assert _count(path) == rows
