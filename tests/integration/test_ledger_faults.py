"""The ledger database locked or unavailable: opening or writing it fails within
OPSFLOW_LEDGER_TIMEOUT with one line naming the ledger URL (never its password) and the fix;
a runbook run against it (`opsflow run`, as an operator types it) exits 1 with that line before
any side effect — no backup stored, no row written — and the ledger verifies afterwards."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from opsflow.ledger import Ledger, LedgerUnavailable
from tests.fixtures.databases import PostgresDatabase
from tests.fixtures.ledgers import postgres_ledger_url
from tests.support.cli import OPSFLOW
from tests.support.net import free_port

pytestmark = pytest.mark.integration
Open = Callable[..., Ledger]
PASSWORD = "ledger-pw-never-shown"
REPO = Path(__file__).resolve().parents[2]


def count_rows(ledger: Ledger) -> int:
    return ledger.verify().rows


def test_a_locked_sqlite_ledger_fails_clearly_and_writes_nothing(
    tmp_path: Path, ledger_home: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url, timeout=1)
    ledger.record_step(flow_run_id="r", runbook="x", env="e", step="s", target="t", status="ok")
    holder = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable) as raised:
            Ledger(url, timeout=1).check_writable()
        assert time.monotonic() - started < 10
        with pytest.raises(LedgerUnavailable):
            ledger.record_step(
                flow_run_id="r", runbook="x", env="e", step="s", target="u", status="ok"
            )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(
        f"ledger sqlite:///{tmp_path / 'ledger.db'} is locked: still locked after 1s"
    )
    assert f"(fix: find what holds it (e.g. `fuser {tmp_path / 'ledger.db'}`)" in message
    assert "OPSFLOW_LEDGER_TIMEOUT" in message
    report = ledger.verify([ledger.local_heads()] if ledger.local_heads() else [])
    assert report.ok and report.rows == 1


def test_a_locked_postgresql_ledger_fails_clearly(
    postgres_database_factory: Callable[..., PostgresDatabase], ledger_home: Path
) -> None:
    database = postgres_database_factory(prefix="opsflow_ledger")
    url = postgres_ledger_url(database)
    ledger = Ledger(url, timeout=1)
    ledger.record_step(flow_run_id="r", runbook="x", env="e", step="s", target="t", status="ok")
    with psycopg.connect(database.dsn) as holder:
        holder.execute("lock table chain_heads in access exclusive mode")
        with pytest.raises(LedgerUnavailable) as raised:
            Ledger(url, timeout=1).check_writable()
        holder.rollback()
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"ledger {url} is locked")
    assert "find the blocking session in pg_stat_activity" in message
    assert ledger.verify().rows == 1
    ledger.close()


def test_an_unreachable_postgresql_ledger_fails_clearly_without_its_password(
    ledger_home: Path,
) -> None:
    port = free_port()  # nothing listens: a stopped server, from the client's side
    url = f"postgresql+psycopg://opsflow:{PASSWORD}@127.0.0.1:{port}/ledger"
    started = time.monotonic()
    with pytest.raises(LedgerUnavailable) as raised:
        Ledger(url, timeout=2)
    assert time.monotonic() - started < 15
    message = str(raised.value)
    assert PASSWORD not in message and "\n" not in message
    assert message.startswith(f"ledger postgresql+psycopg://opsflow:***@127.0.0.1:{port}/ledger")
    assert f"(fix: start the database server at 127.0.0.1:{port}" in message


# ----- a runbook run, as an operator types it ---------------------------------------------


def workspace(tmp_path: Path, ledger_url: str, api: str) -> dict[str, str]:
    app_db = tmp_path / "app.db"
    with sqlite3.connect(app_db) as conn:
        conn.execute("create table t (x integer)")
        conn.execute("insert into t values (1)")
    conn.close()
    (tmp_path / "backups").mkdir()
    (tmp_path / "inventory.yaml").write_text(f"""
environments:
  lab:
    databases: [{{name: appdb, kind: sqlite, path: "{app_db}"}}]
    backup_store: {{url: "file://{tmp_path / "backups"}"}}
    disks: ["{tmp_path}"]
""")
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PREFECT_API_URL": api,
        "OPSFLOW_INVENTORY": str(tmp_path / "inventory.yaml"),
        "OPSFLOW_HOME": str(tmp_path / "home"),
        "OPSFLOW_LEDGER_URL": ledger_url,
        "OPSFLOW_LEDGER_TIMEOUT": "2",
    }


def opsflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OPSFLOW, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_backup_against_a_locked_ledger_exits_1_and_stores_nothing(
    tmp_path: Path, prefect_api: str, ledger_home: Path
) -> None:
    ledger_path = tmp_path / "ledger.db"
    env = workspace(tmp_path, f"sqlite:///{ledger_path}", prefect_api)
    ready = opsflow(env, "run", "backup", "--env", "lab")  # a good run first: a real ledger
    assert ready.returncode == 0, ready.stderr
    stored = sorted(p.name for p in (tmp_path / "backups").rglob("*") if p.is_file())
    holder = sqlite3.connect(ledger_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = opsflow(env, "run", "backup", "--env", "lab")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 1, result.stderr
    line = error_line(result.stderr)
    assert (
        f"ledger sqlite:///{ledger_path} is locked" in line and "(fix: find what holds it" in line
    )
    # no partial state: nothing new in the store, no row in the ledger, and it verifies
    assert sorted(p.name for p in (tmp_path / "backups").rglob("*") if p.is_file()) == stored
    check = opsflow(env, "ledger", "verify")
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("ledger OK: 4 rows")  # the first run's 2 steps, backup, run


def test_a_run_against_a_stopped_postgresql_ledger_exits_1_without_the_password(
    tmp_path: Path, prefect_api: str, ledger_home: Path
) -> None:
    url = f"postgresql+psycopg://opsflow:{PASSWORD}@127.0.0.1:{free_port()}/ledger"
    env = workspace(tmp_path, url, prefect_api)
    result = opsflow(env, "run", "health-check", "--env", "lab")
    assert result.returncode == 1, result.stderr
    line = error_line(result.stderr)
    assert PASSWORD not in result.stderr + result.stdout
    assert "ledger postgresql+psycopg://opsflow:***@127.0.0.1:" in line
    assert "is unavailable" in line and "(fix: start the database server at" in line
    verify = opsflow(env, "ledger", "verify")
    assert verify.returncode == 1 and PASSWORD not in verify.stderr
    assert "is unavailable" in error_line(verify.stderr)


def test_a_deployment_run_against_a_locked_ledger_fails_before_any_side_effect(
    tmp_path: Path, prefect_api: str, ledger_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the CLI's check in front (a scheduled or UI run), the flow itself stops at
    RunbookRun.start: failed, the same line as its message, nothing dumped or stored."""
    from flows.backup import backup

    ledger_path = tmp_path / "ledger.db"
    env = workspace(tmp_path, f"sqlite:///{ledger_path}", prefect_api)
    for name in (
        "OPSFLOW_INVENTORY",
        "OPSFLOW_HOME",
        "OPSFLOW_LEDGER_URL",
        "OPSFLOW_LEDGER_TIMEOUT",
    ):
        monkeypatch.setenv(name, env[name])
    Ledger().record_step(flow_run_id="r", runbook="x", env="e", step="s", target="t", status="ok")
    holder = sqlite3.connect(ledger_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        state = backup(env="lab", requested_by="tester", return_state=True)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert state.is_failed()
    assert f"ledger sqlite:///{ledger_path} is locked" in str(state.message)
    assert [p for p in (tmp_path / "backups").rglob("*") if p.is_file()] == []
    assert Ledger().verify().rows == 1
