"""Faults during the backup flow, end to end: the S3 API failing (HTTP 5xx) in the middle of a
multipart upload and a database that refuses connections. Each ends with a clear error, the run
Failed naming what failed, nothing partial visible or catalogued, the previous backup intact."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from connectors.stores import open_store
from flows.backup import BackupReport, backup
from opsflow.catalog import fold
from opsflow.inventory import BackupStore
from opsflow.ledger import Ledger
from tests.fixtures.s3_server import FaultProxy
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
