"""The `backup` flow, in-process against the session Prefect server, with real components:
PostgreSQL filled by pgbench (dumped `direct` with a password role), a SQLite database being
written while it is backed up, the local store and moto S3 over HTTP.

Each test writes its own inventory and ledger (OPSFLOW_INVENTORY / OPSFLOW_LEDGER_URL) and
checks what an operator relies on: the object is in the store, its sha256 equals the catalog
row and the manifest, it decompresses to a usable dump, a failed database leaves nothing
visible or catalogued and never touches the previous backup, and the password shows up
nowhere (logs, ledger, manifest, report).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler
from sqlalchemy import select
from typer.testing import CliRunner

from cli.main import app
from connectors.stores import open_store
from connectors.stores.base import backup_key, manifest_key
from connectors.streams import decompress
from flows.backup import BackupReport, backup
from opsflow.inventory import BackupStore
from opsflow.ledger import BackupRow, Ledger, RunRow, StepRow, utcnow

if TYPE_CHECKING:
    from tests.fixtures.backups import PgbenchDatabase

pytestmark = pytest.mark.integration

DSN_VAR = "OPSFLOW_TEST_BACKUP_DSN"


@dataclass
class Workspace:
    root: Path
    ledger_url: str
    monkeypatch: pytest.MonkeyPatch

    @property
    def store_dir(self) -> Path:
        return self.root / "backups"

    @property
    def local_store(self) -> BackupStore:
        return BackupStore(url=f"file://{self.store_dir}")

    def write_inventory(self, text: str) -> None:
        path = self.root / "inventory.yaml"
        path.write_text(text)
        self.monkeypatch.setenv("OPSFLOW_INVENTORY", str(path))

    def ledger(self) -> Ledger:
        return Ledger(self.ledger_url)


@pytest.fixture
def backup_workspace(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> Workspace:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", ledger_url)
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / ".opsflow"))
    return Workspace(tmp_path, ledger_url, monkeypatch)


@dataclass
class SqliteWriter:
    """A thread inserting rows into a WAL SQLite database until stopped."""

    path: Path
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    written: int = 0

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            while not self.stop.is_set():
                with conn:
                    conn.executemany(
                        "insert into events (payload) values (?)",
                        [(f"event-{self.written + i}",) for i in range(50)],
                    )
                self.written += 50
                time.sleep(0.001)
            conn.close()
        except BaseException as exc:  # reported by the test, not swallowed
            self.errors.append(exc)


@pytest.fixture
def sqlite_being_written(tmp_path: Path) -> Iterator[SqliteWriter]:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("create table events (id integer primary key, payload text not null)")
    writer = SqliteWriter(path)
    thread = threading.Thread(target=writer.run, name="sqlite-writer", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while writer.written < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.written >= 500, f"the SQLite writer did not start: {writer.errors}"
    yield writer
    writer.stop.set()
    thread.join(timeout=10)


def run_backup(**params: Any) -> tuple[Any, BackupReport, str]:
    state = backup(requested_by="tester", return_state=True, **params)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, BackupReport), f"flow ended {state.name}: {report!r}"
    return state, report, str(state.state_details.flow_run_id)


def flow_logs(flow_run_id: str) -> str:
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )
    return "\n".join(log.message for log in logs)


def artifact_text(key: str) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert found, f"no artifact {key}"
    return "\n".join(str(a.data) for a in found)


def ledger_text(ledger: Ledger) -> str:
    with ledger.engine.connect() as conn:
        rows = [
            *conn.execute(select(RunRow.__table__)),
            *conn.execute(select(StepRow.__table__)),
            *conn.execute(select(BackupRow.__table__)),
        ]
    return "\n".join(repr(tuple(row)) for row in rows)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_section(dump: str, table: str) -> list[str]:
    """The data lines of ``COPY <table>`` in a plain dump."""
    start = dump.index(f"COPY {table} ")
    body = dump[dump.index("\n", start) + 1 :]
    return body[: body.index("\n\\.\n")].splitlines()


def assert_no_secret(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text


def local_inventory(ws: Workspace, sqlite_path: Path | None = None) -> str:
    sqlite = (
        f'      - {{name: appdb, kind: sqlite, path: "{sqlite_path}"}}\n' if sqlite_path else ""
    )
    return f"""
environments:
  bk:
    databases:
      - {{name: pgmain, kind: postgres, dsn: "env:{DSN_VAR}"}}
{sqlite}    backup_store: {{url: "file://{ws.store_dir}", retention_days: 30}}
"""


def test_backs_up_postgres_and_a_sqlite_being_written_to_the_local_store(
    backup_workspace: Workspace,
    backup_pgbench_factory: Callable[[int], PgbenchDatabase],
    sqlite_being_written: SqliteWriter,
) -> None:
    ws = backup_workspace
    pg = backup_pgbench_factory(1)
    ws.monkeypatch.setenv(DSN_VAR, pg.dsn)
    ws.write_inventory(local_inventory(ws, sqlite_being_written.path))
    store = open_store(ws.local_store)
    old = backup_key("bk", "pgmain", datetime.now(UTC) - timedelta(days=40), "sql.zst")
    store.put_stream(old, [b"an expired backup"])
    store.put_json(manifest_key(old), {"key": old})

    state, report, run_id = run_backup(env="bk")

    assert state.is_completed(), state.message
    assert [b.status for b in report.backups] == ["complete", "complete"]
    assert sqlite_being_written.written > 0 and not sqlite_being_written.errors
    rows = {r.database: r for r in ws.ledger().backups(env="bk")}
    assert set(rows) == {"pgmain", "appdb"}

    # PostgreSQL: object, sha256 = catalog = manifest, a usable dump of the pgbench tables
    row = rows["pgmain"]
    assert row.status == "complete" and row.key.endswith(".sql.zst")
    path = ws.store_dir / row.key
    manifest = json.loads((ws.store_dir / manifest_key(row.key)).read_text())
    assert sha256_file(path) == row.sha256 == manifest["sha256"]
    assert path.stat().st_size == row.bytes == manifest["bytes"]
    assert manifest["codec"] == "zstd" and manifest["kind"] == "postgres"
    dump = b"".join(decompress(store.get_stream(row.key), "zstd")).decode()
    for table in ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"):
        assert f"CREATE TABLE public.{table}" in dump
    assert manifest["row_counts"]["public.pgbench_accounts"] == pg.accounts
    assert len(copy_section(dump, "public.pgbench_accounts")) == pg.accounts
    assert "OWNER TO" not in dump  # --no-owner
    assert manifest["raw_bytes"] == len(dump.encode())

    # SQLite: a consistent copy taken while written; counts in the manifest match the copy
    row = rows["appdb"]
    path = ws.store_dir / row.key
    manifest = json.loads((ws.store_dir / manifest_key(row.key)).read_text())
    assert sha256_file(path) == row.sha256 == manifest["sha256"]
    copy = ws.root / "restored.db"
    copy.write_bytes(b"".join(decompress(store.get_stream(row.key), "zstd")))
    with sqlite3.connect(copy) as conn:
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        counted = conn.execute("select count(*) from events").fetchone()[0]
        max_id = conn.execute("select max(id) from events").fetchone()[0]
    assert counted == manifest["row_counts"]["events"] >= 500
    assert max_id == counted  # no gaps: a transaction-consistent snapshot

    # retention deletes only what the catalog expired: an old object that no catalog entry
    # names (another ledger's, or one that was never confirmed) is reported and left in place
    assert report.deleted == [] and report.uncatalogued == [old]
    assert store.head(old) is not None and store.head(manifest_key(old)) is not None
    assert store.head(rows["pgmain"].key) is not None

    # report artifact with sizes, rates and durations; the ledger run
    text = artifact_text("backup-bk")
    assert "pgmain" in text and "appdb" in text and "MiB/s" in text
    assert ws.ledger().runs(env="bk", runbook="backup")[0].status == "complete"

    # the catalog through the CLI
    result = CliRunner().invoke(app, ["backups", "list", "--env", "bk", "--json"])
    assert result.exit_code == 0, result.output
    listed = {item["database"]: item for item in json.loads(result.output)}
    assert listed["pgmain"]["sha256"] == rows["pgmain"].sha256
    assert listed["appdb"]["key"] == rows["appdb"].key

    # the password is nowhere
    manifests = "\n".join(p.read_text() for p in ws.store_dir.rglob("*.manifest.json"))
    assert_no_secret(pg.role.password, flow_logs(run_id), ledger_text(ws.ledger()), manifests, text)


def test_backs_up_postgres_to_s3_with_gzip(
    backup_workspace: Workspace,
    backup_pgbench_factory: Callable[[int], PgbenchDatabase],
    moto_s3_endpoint: str,
    moto_s3_bucket: str,
    moto_s3_client: Any,
) -> None:
    ws = backup_workspace
    pg = backup_pgbench_factory(1)
    ws.monkeypatch.setenv(DSN_VAR, pg.dsn)
    ws.write_inventory(f"""
environments:
  bks3:
    databases: [{{name: pgmain, kind: postgres, dsn: "env:{DSN_VAR}"}}]
    backup_store: {{url: "s3://{moto_s3_bucket}/nightly", endpoint_url: "{moto_s3_endpoint}"}}
""")

    state, report, run_id = run_backup(env="bks3", codec="gzip")

    assert state.is_completed(), state.message
    [row] = ws.ledger().backups(env="bks3")
    assert row.key.startswith("bks3/pgmain/") and row.key.endswith(".sql.gz")
    assert row.store_url == f"s3://{moto_s3_bucket}/nightly"
    body = moto_s3_client.get_object(Bucket=moto_s3_bucket, Key=f"nightly/{row.key}")["Body"]
    data = body.read()
    manifest_obj = moto_s3_client.get_object(
        Bucket=moto_s3_bucket, Key=f"nightly/{manifest_key(row.key)}"
    )
    manifest = json.loads(manifest_obj["Body"].read())
    assert hashlib.sha256(data).hexdigest() == row.sha256 == manifest["sha256"]
    assert len(data) == row.bytes == manifest["bytes"] == report.backups[0].bytes
    assert manifest["codec"] == "gzip"
    dump = gzip.decompress(data).decode()
    assert "CREATE TABLE public.pgbench_accounts" in dump
    assert len(copy_section(dump, "public.pgbench_accounts")) == pg.accounts
    assert_no_secret(pg.role.password, flow_logs(run_id), ledger_text(ws.ledger()), str(manifest))


def test_a_failing_database_leaves_nothing_and_keeps_the_previous_backup(
    backup_workspace: Workspace,
    backup_pgbench_factory: Callable[[int], PgbenchDatabase],
    sqlite_being_written: SqliteWriter,
) -> None:
    ws = backup_workspace
    pg = backup_pgbench_factory(1)
    ws.monkeypatch.setenv(DSN_VAR, pg.dsn)
    ws.write_inventory(local_inventory(ws, sqlite_being_written.path))
    first, _, _ = run_backup(env="bk")
    assert first.is_completed(), first.message
    [previous] = ws.ledger().backups(env="bk", database="pgmain")
    previous_sha = sha256_file(ws.store_dir / previous.key)
    before = sorted(p.relative_to(ws.store_dir) for p in (ws.store_dir / "bk/pgmain").rglob("*"))

    # the same inventory entry now points at a database that does not exist
    ws.monkeypatch.setenv(DSN_VAR, pg.dsn.rsplit("/", 1)[0] + "/opsflow_no_such_db")
    state, report, run_id = run_backup(env="bk")

    assert state.is_failed()
    assert "pgmain" in (state.message or "")
    outcome = {b.database: b for b in report.backups}
    assert outcome["pgmain"].status == "failed"
    assert "does not exist" in (outcome["pgmain"].error or "")
    assert outcome["appdb"].status == "complete"  # one failure does not stop the others
    # nothing visible, nothing catalogued, the previous backup intact
    after = sorted(p.relative_to(ws.store_dir) for p in (ws.store_dir / "bk/pgmain").rglob("*"))
    assert after == before
    assert not [p for p in ws.store_dir.rglob(".*")]  # no temp files left behind
    assert [r.key for r in ws.ledger().backups(env="bk", database="pgmain")] == [previous.key]
    assert sha256_file(ws.store_dir / previous.key) == previous_sha == previous.sha256
    assert len(ws.ledger().backups(env="bk", database="appdb")) == 2
    run_row = ws.ledger().runs(env="bk", runbook="backup")[0]
    assert run_row.status == "failed" and "pgmain" in run_row.summary
    assert "pgmain" in artifact_text("backup-bk")
    assert_no_secret(pg.role.password, flow_logs(run_id), ledger_text(ws.ledger()))


def test_dry_run_publishes_the_plan_and_touches_nothing(
    backup_workspace: Workspace, tmp_path: Path
) -> None:
    ws = backup_workspace
    ws.monkeypatch.setenv(DSN_VAR, "postgresql://nobody@127.0.0.1:9/none")
    ws.write_inventory(local_inventory(ws))
    state, report, _ = run_backup(env="bk", dry_run=True)
    assert state.is_completed() and report.dry_run
    assert not ws.store_dir.exists()
    assert ws.ledger().backups(env="bk") == []
    assert "dump_postgres" in artifact_text("backup-bk-plan")


def _wait_healthy(container: Any, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        container.reload()
        health = container.attrs["State"].get("Health", {}).get("Status")
        if health == "healthy":
            return
        if container.status == "exited":
            break
        time.sleep(0.5)
    logs = container.logs(tail=50).decode(errors="replace")
    raise AssertionError(f"PostgreSQL container did not become healthy: {logs}")


def test_backs_up_postgres_in_a_container_through_docker_exec(
    backup_workspace: Workspace,
    docker_engine: str,
    docker_engine_client: Any,
    docker_test_containers: Callable[..., Any],
) -> None:
    from tests.support.images import ensure_postgres_image

    ws = backup_workspace
    image = ensure_postgres_image(docker_engine_client)
    container = docker_test_containers(image)
    _wait_healthy(container)
    deadline = time.monotonic() + 60
    while True:  # healthy can be seen before the server's final start: retry until it answers
        code, output = container.exec_run(["createdb", "-U", "postgres", "app"])
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == 0, output.decode(errors="replace")
    code, output = container.exec_run(["pgbench", "-i", "-s", "1", "-q", "-U", "postgres", "app"])
    assert code == 0, output.decode(errors="replace")
    ws.monkeypatch.setenv(DSN_VAR, "postgresql://postgres@localhost/app")
    ws.write_inventory(f"""
environments:
  bkdocker:
    docker: {{host: "{docker_engine}"}}
    databases:
      - {{name: main, kind: postgres, dsn: "env:{DSN_VAR}", via: {{docker_exec: {container.name}}}}}
    backup_store: {{url: "file://{ws.store_dir}"}}
""")

    state, report, _ = run_backup(env="bkdocker")

    assert state.is_completed(), state.message
    assert report.backups[0].via == f"docker_exec {container.name}"
    [row] = ws.ledger().backups(env="bkdocker")
    manifest = json.loads((ws.store_dir / manifest_key(row.key)).read_text())
    assert sha256_file(ws.store_dir / row.key) == row.sha256 == manifest["sha256"]
    assert manifest["via"] == "docker_exec"
    assert manifest["row_counts"]["public.pgbench_accounts"] == 100_000
    store = open_store(ws.local_store)
    dump = b"".join(decompress(store.get_stream(row.key), "zstd")).decode()
    assert "CREATE TABLE public.pgbench_accounts" in dump
    assert len(copy_section(dump, "public.pgbench_accounts")) == 100_000


def catalogue_old_backup(
    ws: Workspace, name: str, days: float, *, kind: str = "sqlite", ext: str = "sqlite.zst"
) -> BackupRow:
    """A backup taken ``days`` ago: its object and manifest in the store, its ledger row as the
    backup flow writes it."""
    store = open_store(ws.local_store)
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days)
    key = backup_key("bk", name, when, ext)
    stored = store.put_stream(key, [f"{kind} {name} taken {days} days ago".encode()])
    store.put_json(manifest_key(key), {"key": key})
    assert stored.sha256 is not None
    return ws.ledger().record_backup(
        env="bk",
        database=name,
        kind=kind,
        store_url=ws.local_store.url,
        key=key,
        bytes=stored.size,
        sha256=stored.sha256,
        status="complete",
        created_at=when.replace(tzinfo=None),
        details={"via": "file", "codec": "zstd", "manifest_key": manifest_key(key)},
    )


def states(ws: Workspace, backup_id: str) -> list[str]:
    """Every state a backup went through, in ledger order."""
    rows = [r for r in ws.ledger().backups(env="bk", limit=None) if r.backup_id == backup_id]
    return [r.status for r in sorted(rows, key=lambda r: r.id)]


def test_retention_keeps_the_newest_verified_and_records_every_deletion(
    backup_workspace: Workspace, tmp_path: Path
) -> None:
    """The finding: retention was handed complete *and* verified keys as "verified", so a
    drill-verified backup was deleted once a newer unverified one existed; deletions never
    reached the ledger, so `backups list`, restore by id and the drill offered objects that
    were gone."""
    from flows.restore import plan_restore
    from opsflow.errors import InputError
    from opsflow.inventory import load_inventory

    ws = backup_workspace
    app_db = tmp_path / "app.db"
    with sqlite3.connect(app_db) as conn:
        conn.execute("create table t (id integer primary key)")
        conn.executemany("insert into t values (?)", [(i,) for i in range(10)])
    conn.close()
    ws.write_inventory(f"""
environments:
  bk:
    databases: [{{name: appdb, kind: sqlite, path: "{app_db}"}}]
    backup_store: {{url: "file://{ws.store_dir}", retention_days: 30}}
""")
    oldest = catalogue_old_backup(ws, "appdb", 45)
    drilled = catalogue_old_backup(ws, "appdb", 40)
    ws.ledger().mark_verified(drilled, verified_at=utcnow(), flow_run_id="drill", how="dr-drill")
    newer_unverified = catalogue_old_backup(ws, "appdb", 35)
    # a Redis backup of the same name (from before names had to be unique): its own series,
    # whose only and newest backup it is
    rdb = catalogue_old_backup(ws, "appdb", 50, kind="redis", ext="rdb.zst")
    store = open_store(ws.local_store)

    state, report, run_id = run_backup(env="bk")

    assert state.is_completed(), state.message
    [today] = [b for b in report.backups if b.status == "complete"]
    for kept in (drilled, rdb):  # the newest verified; the newest of its own series
        assert store.head(kept.key) is not None and store.head(manifest_key(kept.key)) is not None
    assert store.head(today.key or "") is not None
    expired = [oldest, newer_unverified]
    for gone in expired:
        assert store.head(gone.key) is None and store.head(manifest_key(gone.key)) is None
    assert report.deleted == [k for r in expired for k in (r.key, manifest_key(r.key))]

    # every deletion is in the ledger: `deleting` before the object went, `deleted` after
    for gone in expired:
        assert states(ws, gone.backup_id) == ["complete", "deleting", "deleted"]
        [deleted] = [
            r
            for r in ws.ledger().backups(env="bk", limit=None)
            if r.backup_id == gone.backup_id and r.status == "deleted"
        ]
        assert deleted.key == gone.key and deleted.sha256 == gone.sha256
        assert deleted.details["deleted"]["by"] == {"flow_run_id": run_id, "how": "retention"}
    assert states(ws, drilled.backup_id) == ["complete", "verified"]
    assert ws.ledger().verify().ok
    assert [d.backup_id for d in report.deleted_backups] == [r.backup_id for r in expired]
    retention_step = [s for s in ws.ledger().steps(run_id) if s.step == "apply_retention"]
    assert retention_step[0].details["deleted_backups"] == [r.backup_id for r in expired]
    assert "deleted backup " + oldest.backup_id in artifact_text("backup-bk")

    # nothing deleted is offered: not listed, not restorable by id
    result = CliRunner().invoke(app, ["backups", "list", "--env", "bk", "--json"])
    assert result.exit_code == 0, result.output
    listed = {(item["kind"], item["backup_id"]) for item in json.loads(result.output)}
    assert listed == {
        ("sqlite", today.backup_id),
        ("sqlite", drilled.backup_id),
        ("redis", rdb.backup_id),
    }
    env = load_inventory().environment("bk")
    for gone in expired:
        with pytest.raises(InputError, match=f"no complete backup '{gone.backup_id}'"):
            plan_restore("bk", env, database="appdb", backup_id=gone.backup_id)
    chosen = plan_restore("bk", env, database="appdb", backup_id=drilled.backup_id)
    assert drilled.key in chosen.to_markdown()


def test_a_deletion_interrupted_after_its_intent_is_finished_by_the_next_run(
    backup_workspace: Workspace, tmp_path: Path
) -> None:
    ws = backup_workspace
    app_db = tmp_path / "app.db"
    sqlite3.connect(app_db).close()
    ws.write_inventory(f"""
environments:
  bk:
    databases: [{{name: appdb, kind: sqlite, path: "{app_db}"}}]
    backup_store: {{url: "file://{ws.store_dir}", retention_days: 30}}
""")
    interrupted = catalogue_old_backup(ws, "appdb", 40)
    catalogue_old_backup(ws, "appdb", 39)  # newer: the newest of the series until today
    # a crash right after retention recorded its intent: the object is still there
    values = {
        c.key: getattr(interrupted, c.key)
        for c in BackupRow.__table__.columns
        if c.key not in ("id", "status", "recorded_at", "prev_hash", "row_hash")
    }
    ws.ledger().record_backup(**values, status="deleting")
    store = open_store(ws.local_store)
    assert store.head(interrupted.key) is not None
    result = CliRunner().invoke(app, ["backups", "list", "--env", "bk", "--json"])
    assert interrupted.backup_id not in {i["backup_id"] for i in json.loads(result.output)}

    state, report, _ = run_backup(env="bk")

    assert state.is_completed(), state.message
    assert store.head(interrupted.key) is None
    assert interrupted.backup_id in [d.backup_id for d in report.deleted_backups]
    assert states(ws, interrupted.backup_id) == ["complete", "deleting", "deleted"]
