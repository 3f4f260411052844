"""Dump tasks called directly (``.fn``) against real PostgreSQL and SQLite: faults mid-stream.

A pg_dump killed while it streams must raise and leave nothing in the store: no object, no
manifest, no checksum file, no temp file.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from connectors.stores import open_store
from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import BackupStore, Database
from tasks.postgres.backup import dump_postgres
from tasks.sqlite import dump_sqlite

if TYPE_CHECKING:
    from tests.fixtures.backups import PgbenchDatabase

pytestmark = pytest.mark.integration

KILL_AFTER_BYTES = 2 << 20  # pg_dump has written 2 MiB of its (~45 MB) dump


@dataclass
class DumpKiller:
    """Finds the pg_dump of ``dbname`` and SIGKILLs it once it wrote ``after`` bytes."""

    dbname: str
    after: int
    written_at_kill: int | None = None
    errors: list[str] = field(default_factory=list)

    def _find(self) -> int | None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"pg_dump") and self.dbname.encode() in b" ".join(argv):
                return int(entry)
        return None

    def run(self) -> None:
        deadline = time.monotonic() + 60
        pid = None
        while pid is None and time.monotonic() < deadline:
            pid = self._find()
        if pid is None:
            self.errors.append("pg_dump never started")
            return
        while time.monotonic() < deadline:
            try:
                io = Path(f"/proc/{pid}/io").read_text()
            except OSError:
                self.errors.append("pg_dump exited before it could be killed mid-stream")
                return
            written = int(next(line for line in io.splitlines() if line.startswith("wchar:"))[6:])
            if written >= self.after:
                os.kill(pid, signal.SIGKILL)
                self.written_at_kill = written
                return
        self.errors.append("pg_dump did not write enough in 60 s")


def test_pg_dump_killed_mid_stream_leaves_nothing_visible(
    tmp_path: Path,
    backup_pgbench_factory: Callable[[int], PgbenchDatabase],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pg = backup_pgbench_factory(5)
    monkeypatch.setenv("OPSFLOW_TEST_KILL_DSN", pg.dsn)
    db = Database(name="pgmain", kind="postgres", dsn="env:OPSFLOW_TEST_KILL_DSN")
    store = BackupStore(url=f"file://{tmp_path / 'backups'}")
    killer = DumpKiller(pg.name, KILL_AFTER_BYTES)
    thread = threading.Thread(target=killer.run, daemon=True)
    thread.start()

    with pytest.raises(TransientError, match="killed by signal 9") as caught:
        dump_postgres.fn(db, store, "kt", datetime.now(UTC), "zstd", "environments.kt.db")
    thread.join(timeout=10)

    assert not killer.errors, killer.errors
    assert killer.written_at_kill is not None and killer.written_at_kill >= KILL_AFTER_BYTES
    assert "nothing was stored" in str(caught.value)
    assert pg.role.password not in str(caught.value)
    assert open_store(store).list() == []
    leftovers = [p for p in (tmp_path / "backups").rglob("*") if p.is_file()]
    assert leftovers == []  # no object, manifest, checksum or temp file


def test_unreadable_sqlite_path_is_a_permanent_error_and_stores_nothing(tmp_path: Path) -> None:
    db = Database(name="app", kind="sqlite", path=str(tmp_path / "missing.db"))
    store = BackupStore(url=f"file://{tmp_path / 'backups'}")
    with pytest.raises(PermanentError, match=r"environments\.x\.databases\[0\]\.path"):
        dump_sqlite.fn(db, store, "x", datetime.now(UTC), "zstd", "environments.x.databases[0]")
    assert open_store(store).list() == []
