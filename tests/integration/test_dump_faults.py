"""PostgreSQL faults during a dump, end to end: pg_dump's connection killed by the server
(``pg_terminate_backend``) in the middle of the dump. The attempt fails as a transient error and
leaves nothing in the store; the retry takes the backup; exactly one backup is catalogued, it
holds every row, and the previous backup still restores."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from flows.backup import BackupReport, backup
from flows.restore import restore
from opsflow import catalog
from tests.fixtures.restores import RestoreLab

pytestmark = pytest.mark.integration
BIG_ROWS = 400_000  # ~250 MB of plain dump: pg_dump runs for a while


def store_files(lab: RestoreLab) -> set[str]:
    """Every file of the lab's store but the ledger heads each run publishes (``_ledger/``)."""
    root = lab.store_dir
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != "_ledger"
    }


def test_pg_dump_killed_by_the_server_mid_dump_leaves_nothing_and_the_retry_backs_up(
    restore_lab: RestoreLab, tmp_path: Path
) -> None:
    lab = restore_lab
    first = backup(env="lab", requested_by="tester", return_state=True)
    assert first.is_completed(), first.message
    [good] = [e for e in catalog.fold(lab.ledger().backups(env="lab")) if e.database == "main"]
    files_before = store_files(lab)
    lab.execute(
        "create table big as select g as id, repeat(md5(g::text), 10) as pad "
        f"from generate_series(1, {BIG_ROWS}) g"
    )
    killed: list[int] = []
    stop = threading.Event()

    def kill_the_first_pg_dump() -> None:
        while not stop.is_set() and not killed:
            rows = lab.execute(
                "select pid from pg_stat_activity where application_name = 'pg_dump' "
                f"and datname = '{lab.dbname}' and state = 'active'",
                "postgres",
            )
            for (pid,) in rows:
                lab.execute(f"select pg_terminate_backend({pid})", "postgres")
                killed.append(int(pid))
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_first_pg_dump, daemon=True)
    killer.start()
    try:
        state = backup(env="lab", requested_by="tester", return_state=True)
    finally:
        stop.set()
        killer.join(timeout=10)

    assert killed, "pg_dump was never seen running: the dump was too quick to interrupt"
    report = state.result(raise_on_failure=False)
    assert isinstance(report, BackupReport)
    assert state.is_completed(), state.message  # the retry took the backup
    entries = [e for e in catalog.fold(lab.ledger().backups(env="lab")) if e.database == "main"]
    assert len(entries) == 2  # the good one and exactly one new one: the killed try left none
    new = next(e for e in entries if e.backup_id != good.backup_id)
    added = store_files(lab) - files_before
    sqlite_added = {f for f in added if "/appdb/" in f}
    # the new main backup's object and manifest with their checksums, and nothing else of main
    assert added - sqlite_added == {
        new.key,
        f"{new.key}.sha256",
        new.manifest_key,
        f"{new.manifest_key}.sha256",
    }
    assert new.row_counts["public.big"] == BIG_ROWS
    # the previous backup still restores (into a copy: the live database is left alone)
    restored = restore(
        env="lab",
        database="main",
        backup_id=good.backup_id,
        target_db=f"{lab.dbname}_copy",
        requested_by="tester",
        return_state=True,
    )
    assert restored.is_completed(), restored.message
    assert lab.execute("select count(*) from pgbench_accounts", f"{lab.dbname}_copy") == [
        (good.row_counts["public.pgbench_accounts"],)
    ]
