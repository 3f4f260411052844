"""Schema migrations of the ledger on SQLite and PostgreSQL: a ledger written by the opsflow
before migrations (tests/support/legacy_ledger.py, that code frozen) is upgraded on open, its
old rows verify afterwards and keep their values, and its schema is then the same as a new
ledger's; a broken old chain, a failing upgrade and a newer schema change nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError

from opsflow.ledger import (
    Base,
    Ledger,
    LedgerIntegrityError,
    LedgerSchemaError,
    PublishedHeads,
    utcnow,
)
from opsflow.ledger import chain as chain_module
from opsflow.ledger.keys import load_key
from opsflow.ledger.schema import HEAD, alembic_config
from opsflow.settings import get_settings
from tests.support import legacy_ledger

pytestmark = pytest.mark.integration
Tamper = Callable[..., None]
Open = Callable[..., Ledger]
INT4_MAX = 2**31 - 1
TABLES = ("runs", "steps", "approvals", "backups", "drills")  # the old code's tables


def old_ledger(url: str) -> legacy_ledger.Ledger:
    """A ledger as the old code wrote it: every table, a verified backup, a drill."""
    old = legacy_ledger.Ledger(url)
    for i in range(3):
        old.record_step(
            flow_run_id="run-1",
            runbook="backup",
            env="prod",
            step="dump_postgres",
            target=f"db{i}",
            status="complete",
            summary=f"dumped {i}",
            duration_ms=1000 + i,
            details={"codec": "zstd", "ratio": 3.5},
        )
    done = old.record_backup(
        env="prod",
        database="main",
        kind="postgres",
        store_url="file:///b",
        key="prod/main/2026/01/20260105T020000Z.sql.zst",
        bytes=INT4_MAX,  # the most the old INT4 column held
        sha256="b" * 64,
        status="complete",
        created_at=utcnow(),
    )
    old.mark_verified(done, verified_at=utcnow(), flow_run_id="drill-1", how="dr-drill")
    old.record_drill(
        flow_run_id="drill-1",
        env="prod",
        database="main",
        backup_id=done.backup_id,
        rto_seconds=12.5,
        rpo_seconds=3600.0,
        targets={"rto_s": 900},
        outcome="met",
    )
    common = {"flow_run_id": "r2", "action": "restore", "env": "prod", "requested_by": "alice"}
    old.record_approval(event="requested", plan="restore main", **common)
    old.record_approval(event="approved", actor="bob", reason="INC-1", **common)
    old.record_run(
        flow_run_id="run-1",
        runbook="backup",
        env="prod",
        status="complete",
        started_at=utcnow(),
        finished_at=utcnow(),
        summary="1 backup",
    )
    assert old.verify().ok
    return old


def rows_of(url: str) -> dict[str, list[dict[str, Any]]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table: [
                    dict(r._mapping)
                    for r in conn.execute(text(f"select * from {table} order by id"))
                ]
                for table in TABLES
            }
    finally:
        engine.dispose()


def schema_of(url: str) -> dict[str, list[str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            found = inspect(conn)
            return {
                t: sorted(c["name"] for c in found.get_columns(t)) for t in found.get_table_names()
            }
    finally:
        engine.dispose()


def test_an_old_ledger_is_upgraded_on_open_and_its_rows_verify(
    open_ledger: Open, ledger_url: str, ledger_home: Path
) -> None:
    old_ledger(ledger_url).close()
    before = rows_of(ledger_url)
    assert "alembic_version" not in schema_of(ledger_url)

    ledger = open_ledger()
    with ledger.engine.connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar() == HEAD
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    assert (ledger_home / "ledger.key").stat().st_mode & 0o777 == 0o600
    local = ledger.local_heads()
    assert local is not None  # the re-signed heads, published right away
    report = ledger.verify([local])
    assert report.ok, report.problems
    assert report.rows == sum(len(rows) for rows in before.values()) == 9

    after = rows_of(ledger_url)
    for table, old_rows in before.items():
        new_rows = after[table]
        assert [r["seq"] for r in new_rows] == list(range(1, len(old_rows) + 1))
        for old, new in zip(old_rows, new_rows, strict=True):
            kept = {k: v for k, v in new.items() if k in old and k not in ("prev_hash", "row_hash")}
            assert kept == {k: v for k, v in old.items() if k not in ("prev_hash", "row_hash")}
            body = json.loads(new["payload"])
            assert body["migrated"] == {"from": "sha256-chain", "row_hash": old["row_hash"]}
    # what the old code could not store on PostgreSQL, the new schema can
    ledger.record_backup(
        env="prod",
        database="main",
        kind="postgres",
        store_url="file:///b",
        key="big",
        bytes=3 * 2**30,
        sha256="c" * 64,
        status="complete",
        created_at=utcnow(),
    )
    assert max(r.bytes for r in ledger.backups()) == 3 * 2**30
    assert ledger.verify([PublishedHeads("now", ledger.heads())]).ok


def test_the_old_code_could_not_store_a_backup_over_2_gib_on_postgresql(
    ledger_url: str,
) -> None:
    old = legacy_ledger.Ledger(ledger_url)
    try:
        kwargs: dict[str, Any] = {
            "env": "prod",
            "database": "main",
            "kind": "postgres",
            "store_url": "file:///b",
            "key": "k",
            "sha256": "a" * 64,
            "status": "complete",
            "created_at": utcnow(),
        }
        if ledger_url.startswith("postgresql"):
            with pytest.raises(DBAPIError, match="out of range"):
                old.record_backup(bytes=3 * 2**30, **kwargs)
        else:  # SQLite's INTEGER is 64-bit: the bug showed only on PostgreSQL
            old.record_backup(bytes=3 * 2**30, **kwargs)
    finally:
        old.close()


def test_opening_a_current_ledger_does_no_schema_work(
    open_ledger: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_ledger().close()

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("upgrade ran on a current ledger")

    monkeypatch.setattr(command, "upgrade", refuse)
    ledger = open_ledger()
    ledger.record_step(flow_run_id="r", runbook="x", env="e", step="s", target="t", status="ok")
    assert ledger.verify().ok


def test_an_old_ledger_with_a_broken_chain_is_not_upgraded(ledger_url: str, tamper: Tamper) -> None:
    old_ledger(ledger_url).close()
    tamper(ledger_url, "update steps set status = 'failed' where id = 2")
    before = (schema_of(ledger_url), rows_of(ledger_url))
    with pytest.raises(LedgerIntegrityError, match="steps row 2: its content was changed") as e:
        Ledger(ledger_url)
    assert "was not upgraded" in str(e.value) and "fix:" in str(e.value)
    assert (schema_of(ledger_url), rows_of(ledger_url)) == before


def test_an_upgrade_that_fails_half_way_changes_nothing(
    open_ledger: Open, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_ledger(ledger_url).close()
    before = (schema_of(ledger_url), rows_of(ledger_url))
    real, calls = chain_module.row_mac, []

    def fails_on_the_fifth(*args: Any) -> str:
        calls.append(args)
        if len(calls) == 5:
            raise RuntimeError("power cut")
        return real(*args)

    monkeypatch.setattr(chain_module, "row_mac", fails_on_the_fifth)
    with pytest.raises(RuntimeError, match="power cut"):
        Ledger(ledger_url)
    assert (schema_of(ledger_url), rows_of(ledger_url)) == before
    monkeypatch.setattr(chain_module, "row_mac", real)
    assert open_ledger().verify().ok


def test_concurrent_openers_upgrade_once(open_ledger: Open, ledger_url: str) -> None:
    old_ledger(ledger_url).close()
    errors: list[BaseException] = []

    def open_and_write(n: int) -> None:
        try:
            ledger = Ledger(ledger_url)
            ledger.record_step(
                flow_run_id="c", runbook="x", env="e", step="s", target=str(n), status="ok"
            )
            ledger.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_and_write, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    report = open_ledger().verify()
    assert report.ok and report.rows == 12


def test_a_ledger_newer_than_this_opsflow_is_refused(
    open_ledger: Open, ledger_url: str, tamper: Tamper
) -> None:
    open_ledger().close()
    tamper(ledger_url, "update alembic_version set version_num = '0099'")
    with pytest.raises(LedgerSchemaError, match=r"revision '0099', newer than this opsflow"):
        Ledger(ledger_url)


def test_a_ledger_at_0002_gains_used_codes_and_keeps_its_rows(
    open_ledger: Open, ledger_url: str
) -> None:
    """Revision 0003 adds the register of spent one-time codes to a ledger at 0002 (made here
    the way a real one was: old rows, then the 0002 migration) and changes nothing else."""
    old_ledger(ledger_url).close()
    key = load_key(get_settings(), create=True).secret
    engine = create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            command.upgrade(alembic_config(conn, lambda: key), "0002")
            conn.commit()
            assert conn.execute(text("select version_num from alembic_version")).scalar() == "0002"
    finally:
        engine.dispose()
    before = rows_of(ledger_url)
    assert "used_codes" not in schema_of(ledger_url)

    ledger = open_ledger()
    with ledger.engine.connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar() == HEAD
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    assert HEAD == "0004"
    assert schema_of(ledger_url)["used_codes"] == ["approver", "flow_run_id", "step", "used_at"]
    assert rows_of(ledger_url) == before
    assert ledger.verify().ok

    # each (approver, step) is spent once, whichever ledger object (process) tries
    assert ledger.use_code("bob", 63_333_333, "run-a") is True
    assert ledger.use_code("bob", 63_333_333, "run-b") is False
    assert open_ledger().use_code("bob", 63_333_333, "run-c") is False
    assert ledger.use_code("bob", 63_333_334, "run-b") is True
    assert ledger.use_code("alice", 63_333_333, "run-b") is True
    assert ledger.verify().ok  # not a chained table: verify is unaffected


def test_a_ledger_at_0003_gains_the_alerts_chain_and_keeps_its_rows(
    open_ledger: Open, ledger_url: str, tamper: Tamper
) -> None:
    """Revision 0004 adds the chained ``alerts`` table (with its chain head) to a ledger at
    0003 and changes nothing else; its rows are signed and verified like every chain's."""
    old_ledger(ledger_url).close()
    key = load_key(get_settings(), create=True).secret
    engine = create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            command.upgrade(alembic_config(conn, lambda: key), "0003")
            conn.commit()
    finally:
        engine.dispose()
    before = rows_of(ledger_url)
    assert "alerts" not in schema_of(ledger_url)

    ledger = open_ledger()
    with ledger.engine.connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar() == "0004"
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    assert rows_of(ledger_url) == before
    assert ledger.heads()["heads"]["alerts"] == {"seq": 0, "row_hash": "0" * 64}
    common: dict[str, Any] = {
        "env": "prod",
        "alertname": "HighMemory",
        "group_key": '{}:{alertname="HighMemory"}',
        "labels": {"alertname": "HighMemory", "pod": "web-1"},
        "annotations": {"summary": "web-1 at 95%", "url": "https://u:hunter2pass@h/x"},
        "starts_at": utcnow(),
        "ends_at": utcnow(),
    }
    ledger.record_alert(
        status="firing",
        fingerprint="f1",
        runbook="health-check",
        flow_run_id="r1",
        outcome="started",
        **common,
    )
    ledger.record_alert(status="firing", fingerprint="f2", outcome="unmatched", **common)
    ledger.record_alert(
        status="resolved", fingerprint="f1", flow_run_id="r1", outcome="resolved", **common
    )
    report = ledger.verify([PublishedHeads("now", ledger.heads())])
    assert report.ok, report.problems
    assert report.rows == 9 + 3
    assert [a.outcome for a in ledger.alerts(fingerprint="f1")] == ["resolved", "started"]
    assert [a.fingerprint for a in ledger.alerts(flow_run_id="r1")] == ["f1", "f1"]
    assert [a.outcome for a in ledger.alerts(env="prod", limit=1)] == ["resolved"]
    assert ledger.alerts(env="other") == []
    assert "hunter2pass" not in json.dumps([a.annotations for a in ledger.alerts()])

    tamper(ledger_url, "update alerts set outcome = 'deduplicated' where seq = 1")
    [problem] = ledger.verify().problems
    assert (problem.table, problem.seq) == ("alerts", 1)
    assert "column outcome" in problem.problem
