"""Faults during the backup flow, end to end: the S3 API failing (HTTP 5xx) in the middle of a
multipart upload, a database that refuses connections, the store full (a small tmpfs), S3
failing or timing out on CompleteMultipartUpload, and the opsflow process killed (SIGKILL)
mid-backup. Each ends with a clear error (or, when S3 did complete, one good backup), the run
Failed naming what failed, nothing partial visible or catalogued, the previous backup intact
and restorable, and the next run fine."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from connectors.stores import open_store
from connectors.stores import s3 as s3_store
from connectors.stores.base import Store, complete_backups, manifest_key
from flows.backup import BackupReport, backup
from flows.restore import restore
from opsflow.catalog import CatalogEntry, fold
from opsflow.inventory import BackupStore
from opsflow.ledger import Ledger
from tests.fixtures.s3_server import FaultProxy
from tests.support.cli import OPSFLOW
from tests.support.net import free_port

pytestmark = pytest.mark.integration
PASSWORD = "refused-db-pass-123"


def make_sqlite(path: Path, megabytes: int) -> None:
    """Incompressible rows, so the zstd stream is large enough for a multipart upload."""
    with sqlite3.connect(path) as conn:
        conn.execute("create table blobs (id integer primary key, data blob)")
        conn.executemany(
            "insert into blobs (data) values (?)",
            [(os.urandom(1024 * 1024),) for _ in range(megabytes)],
        )


def test_s3_5xx_mid_upload_and_refused_database(
    tmp_path: Path,
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
    moto_s3_bucket: str,
    moto_s3_fault_proxy: FaultProxy,
    moto_s3_client: Any,
) -> None:
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("FAULT_TEST_DSN", f"postgresql://app:{PASSWORD}@127.0.0.1:{free_port()}/a")
    make_sqlite(tmp_path / "app.db", 24)
    store_cfg = BackupStore(
        url=f"s3://{moto_s3_bucket}/prod-backups", endpoint_url=moto_s3_fault_proxy.endpoint_url
    )
    inventory = tmp_path / "inventory.yaml"

    def write_inventory(with_refused_db: bool) -> None:
        refused = (
            '\n      - {name: main, kind: postgres, dsn: "env:FAULT_TEST_DSN"}'
            if with_refused_db
            else ""
        )
        inventory.write_text(f"""
environments:
  faults:
    databases:
      - {{name: app, kind: sqlite, path: "{tmp_path / "app.db"}"}}{refused}
    backup_store: {{url: "{store_cfg.url}", endpoint_url: "{store_cfg.endpoint_url}"}}
""")
        monkeypatch.setenv("OPSFLOW_INVENTORY", str(inventory))

    # a good backup first
    write_inventory(with_refused_db=False)
    first = backup(env="faults", requested_by="tester", return_state=True)
    assert first.is_completed(), first.message
    good = fold(Ledger().backups(env="faults", limit=None))
    assert len(good) == 1
    store = open_store(store_cfg)
    before = {o.key for o in store.list("faults/")}

    # then S3 answers 500 to every upload of part 2, and the database refuses connections
    write_inventory(with_refused_db=True)
    moto_s3_fault_proxy.fail_part(2, times=None)
    state = backup(env="faults", requested_by="tester", return_state=True)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, BackupReport)
    assert state.is_failed()
    assert sorted(report.failed) == ["app", "main"]
    errors = {b.database: b.error or "" for b in report.backups}
    assert "upload part 2" in errors["app"], errors
    assert "refused" in errors["main"].lower() or "connect" in errors["main"].lower(), errors
    assert PASSWORD not in str(report.model_dump()) and PASSWORD not in (state.message or "")
    assert moto_s3_fault_proxy.injected  # the fault really happened mid-upload

    # nothing partial is visible or catalogued, and the earlier backup is intact
    assert {o.key for o in store.list("faults/")} == before
    assert moto_s3_client.list_multipart_uploads(Bucket=moto_s3_bucket).get("Uploads", []) == []
    assert [r.backup_id for r in fold(Ledger().backups(env="faults", limit=None))] == [
        good[0].backup_id
    ]
    data = b"".join(store.get_stream(good[0].key, expected_sha256=good[0].sha256))
    assert hashlib.sha256(data).hexdigest() == good[0].sha256


# --- helpers for the tests below ---------------------------------------------------------------


def one_sqlite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: BackupStore) -> Path:
    """Inventory with environment ``faults``: SQLite ``app`` (50 rows) backed up to ``store``."""
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table items (id integer primary key, data blob)")
        conn.executemany("insert into items (data) values (?)", [(b"row",) for _ in range(50)])
    conn.close()
    endpoint = f', endpoint_url: "{store.endpoint_url}"' if store.endpoint_url else ""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(f"""
environments:
  faults:
    databases:
      - {{name: app, kind: sqlite, path: "{db}"}}
    backup_store: {{url: "{store.url}"{endpoint}}}
""")
    monkeypatch.setenv("OPSFLOW_INVENTORY", str(inventory))
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / ".opsflow"))
    return db


def grow(db: Path, megabytes: int) -> None:
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "insert into items (data) values (?)",
            [(os.urandom(1024 * 1024),) for _ in range(megabytes)],
        )
    conn.close()


def catalog() -> list[CatalogEntry]:
    return fold(Ledger().backups(env="faults", limit=None))


def backup_files(root: Path) -> list[str]:
    """Every file under a local store but the ledger heads each run publishes in ``_ledger/``
    (they have their own test: test_ledger_heads.py)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != "_ledger"
    )


def complete_keys(store: Store) -> set[str]:
    """Backups a reader may use: objects whose manifest is stored (and the manifests)."""
    return {o.key for o in complete_backups(store.list("faults/"))}


def restores(entry: CatalogEntry, tmp_path: Path, rows: int = 50) -> None:
    """The restore runbook puts ``entry`` back (into a new file) with its ``rows`` rows."""
    target = tmp_path / f"restored-{entry.backup_id}.db"
    state = restore(
        env="faults",
        database="app",
        backup_id=entry.backup_id,
        target_db=str(target),
        requested_by="tester",
        return_state=True,
    )
    assert state.is_completed(), state.message
    with sqlite3.connect(target) as conn:
        assert conn.execute("select count(*) from items").fetchone()[0] == rows
    conn.close()


# --- the store full ---------------------------------------------------------------------------


def test_store_full_leaves_nothing_and_the_previous_backup_restores(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch, small_tmpfs: Any
) -> None:
    mount = small_tmpfs("2m")
    store_cfg = BackupStore(url=f"file://{mount}")
    db = one_sqlite_env(tmp_path, monkeypatch, store_cfg)
    first = backup(env="faults", requested_by="tester", return_state=True)
    assert first.is_completed(), first.message
    [good] = catalog()
    store = open_store(store_cfg)
    before = backup_files(mount)

    grow(db, 3)  # incompressible: the dump no longer fits in what is left of 2 MiB
    state = backup(env="faults", requested_by="tester", return_state=True)

    report = state.result(raise_on_failure=False)
    assert isinstance(report, BackupReport) and state.is_failed()
    assert report.failed == ["app"]
    error = report.backups[0].error or ""
    assert "No space left" in error and "fix: free space" in error, error
    after = backup_files(mount)
    assert after == before  # no temp file, no object, no checksum, no manifest
    assert [e.backup_id for e in catalog()] == [good.backup_id]
    assert complete_keys(store) == {good.key, good.manifest_key}
    restores(good, tmp_path)
    # once the database fits again, the next run is fine
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("delete from items where id > 50")
    conn.execute("vacuum")
    conn.close()
    again = backup(env="faults", requested_by="tester", return_state=True)
    assert again.is_completed(), again.message
    assert len(catalog()) == 2


# --- S3 failing or timing out on CompleteMultipartUpload ---------------------------------------


def test_s3_5xx_and_timeouts_on_complete(
    tmp_path: Path,
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
    moto_s3_bucket: str,
    moto_s3_fault_proxy: FaultProxy,
    moto_s3_client: Any,
) -> None:
    proxy = moto_s3_fault_proxy
    store_cfg = BackupStore(url=f"s3://{moto_s3_bucket}/faults", endpoint_url=proxy.endpoint_url)
    db = one_sqlite_env(tmp_path, monkeypatch, store_cfg)
    grow(db, 12)  # a multipart upload (default part size 8 MiB)
    monkeypatch.setattr(s3_store, "READ_TIMEOUT_S", 3.0)  # so that a stalled answer times out
    first = backup(env="faults", requested_by="tester", return_state=True)
    assert first.is_completed(), first.message
    [good] = catalog()
    store = open_store(store_cfg)
    before = {o.key for o in store.list("faults/")}

    # S3 answers 500 to every CompleteMultipartUpload: nothing becomes visible
    proxy.fail_complete(times=None)
    state = backup(env="faults", requested_by="tester", return_state=True)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, BackupReport) and state.is_failed()
    assert "complete the upload" in (report.backups[0].error or ""), report.backups[0].error
    assert proxy.complete_requests >= 2
    assert {o.key for o in store.list("faults/")} == before
    raw = [
        o["Key"]
        for o in moto_s3_client.list_objects_v2(Bucket=moto_s3_bucket)["Contents"]
        if "/_ledger/" not in o["Key"]  # each run's published ledger heads (test_ledger_heads)
    ]
    assert len(raw) == 2 * len(before)  # each object and its checksum, nothing else
    assert moto_s3_client.list_multipart_uploads(Bucket=moto_s3_bucket).get("Uploads", []) == []
    assert [e.backup_id for e in catalog()] == [good.backup_id]

    # S3 completes, but its answer comes after the client's read timeout (then once more, the
    # answer is a 500): the run recognises its object, one backup, catalogued once
    for fault in ("stall", "fail-after"):
        proxy.reset()
        if fault == "stall":
            proxy.stall_complete(seconds=7, times=1)
        else:
            proxy.fail_complete(times=1, forwarded=True)
        state = backup(env="faults", requested_by="tester", return_state=True)
        assert state.is_completed(), state.message
        assert proxy.complete_injected == [fault] and proxy.complete_requests >= 2
    entries = catalog()
    assert len(entries) == 3 and len({e.key for e in entries}) == 3
    assert complete_keys(store) == {k for e in entries for k in (e.key, e.manifest_key)}
    for entry in entries:
        data = b"".join(store.get_stream(entry.key, expected_sha256=entry.sha256))
        assert hashlib.sha256(data).hexdigest() == entry.sha256
    assert moto_s3_client.list_multipart_uploads(Bucket=moto_s3_bucket).get("Uploads", []) == []
    restores(good, tmp_path, rows=62)


# --- the opsflow process killed mid-backup -----------------------------------------------------


def test_sigkill_mid_backup_leaves_nothing_usable_and_the_next_run_is_fine(
    tmp_path: Path,
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
    moto_s3_bucket: str,
    moto_s3_fault_proxy: FaultProxy,
    moto_s3_client: Any,
) -> None:
    """Killed in the worst place: its object and checksum are stored, the manifest write is in
    flight. That object is not a backup (no manifest, not catalogued); the environment lock of
    the dead run expires with its lease; the next run waits for it and succeeds."""
    proxy = moto_s3_fault_proxy
    store_cfg = BackupStore(url=f"s3://{moto_s3_bucket}/faults", endpoint_url=proxy.endpoint_url)
    one_sqlite_env(tmp_path, monkeypatch, store_cfg)
    first = backup(env="faults", requested_by="tester", return_state=True)
    assert first.is_completed(), first.message
    [good] = catalog()
    store = open_store(store_cfg)

    proxy.hold(".manifest.json")
    env = {**os.environ, "OPSFLOW_LOCK_LEASE_SECONDS": "60", "PREFECT_API_URL": prefect_api}
    proc = subprocess.Popen(
        [*OPSFLOW, "run", "backup", "--env", "faults", "--as", "cron"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not proxy.held and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        output = proc.stdout.read() if proc.poll() is not None and proc.stdout else b""
        assert proxy.held, f"the manifest write never started: {output!r}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        proxy.release()  # the held manifest write is dropped: it never reaches S3
    assert proc.returncode == -signal.SIGKILL
    orphans = {o.key for o in store.list("faults/")} - {good.key, good.manifest_key}
    assert len(orphans) == 1  # the killed run's object, without its manifest
    [orphan] = orphans
    assert store.head(orphan) is not None and store.head(manifest_key(orphan)) is None
    assert complete_keys(store) == {good.key, good.manifest_key}  # not usable
    assert [e.backup_id for e in catalog()] == [good.backup_id]  # not catalogued

    proxy.reset()
    busy = backup(env="faults", wait_for_lock=0, requested_by="tester", return_state=True)
    message = str(busy.result(raise_on_failure=False))
    assert busy.is_failed() and "faults is busy" in message, message
    assert re.search(r"backup run '[^']+' \([0-9a-f-]{36}\)", message), message  # the dead one
    started = time.monotonic()
    after = backup(env="faults", requested_by="tester", return_state=True)  # waits for the lease
    waited = time.monotonic() - started

    assert after.is_completed(), after.message
    entries = catalog()
    assert len(entries) == 2 and entries[1].backup_id == good.backup_id
    assert orphan not in {e.key for e in entries}
    assert complete_keys(store) == {k for e in entries for k in (e.key, e.manifest_key)}
    assert waited > 5, waited  # the dead run's lease had to expire first
    restores(good, tmp_path)
    restores(entries[0], tmp_path)
