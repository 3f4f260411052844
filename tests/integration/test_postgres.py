"""check_postgres against real PostgreSQL servers (the machine's or a throwaway cluster)."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack

import psycopg
import pytest

from connectors.postgres import admin, parse_psql_rows, postgres_for, psql_argv
from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import Database, Thresholds
from opsflow.results import Status
from tasks.postgres.checks import check_postgres, collect_stats
from tasks.postgres.restore import drop_postgres_database
from tests.fixtures.databases import (
    PostgresDatabase,
    PostgresRole,
    PostgresServer,
    free_port,
)

pytestmark = pytest.mark.integration
FIELD = "environments.test.databases[0]"


def _db(monkeypatch: pytest.MonkeyPatch, dsn: str, var: str = "OPSFLOW_TEST_PG_DSN") -> Database:
    monkeypatch.setenv(var, dsn)
    return Database(name="main", kind="postgres", dsn=f"env:{var}")


@pytest.fixture()
def extra_connections() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def test_healthy_database_reports_version_connections_and_size(
    monkeypatch: pytest.MonkeyPatch, postgres_database: PostgresDatabase
) -> None:
    with postgres_database.server.connect(postgres_database.name) as conn:
        conn.execute(
            "create table t as select g, repeat('x', 200) as pad from generate_series(1, 5000) g"
        )
        max_connections = int(conn.execute("show max_connections").fetchone()[0])  # type: ignore[index]
    result = check_postgres.fn(_db(monkeypatch, postgres_database.dsn), Thresholds(), FIELD)
    assert result.status is Status.HEALTHY, result.summary
    assert result.check == "postgres" and result.target == "main"
    assert result.details["database"] == postgres_database.name
    assert result.details["version"].split(".")[0].isdigit()
    assert result.details["max_connections"] == max_connections
    assert 1 <= result.details["connections"] < max_connections
    assert result.details["size_bytes"] > 1_000_000  # 5000 rows of 200 bytes
    assert f"/{max_connections} connections" in result.summary


def test_low_threshold_degrades_and_extra_connections_are_counted(
    monkeypatch: pytest.MonkeyPatch,
    postgres_database: PostgresDatabase,
    extra_connections: ExitStack,
) -> None:
    db = _db(monkeypatch, postgres_database.dsn)
    before = check_postgres.fn(db, Thresholds(), FIELD).details["connections"]
    for _ in range(5):
        extra_connections.enter_context(postgres_database.server.connect(postgres_database.name))
    result = check_postgres.fn(db, Thresholds(connections_pct=1), FIELD)
    assert result.details["connections"] >= before + 5
    assert result.status is Status.DEGRADED
    assert "at or above 1% of max_connections" in result.summary


def test_connections_at_95_percent_are_critical(
    monkeypatch: pytest.MonkeyPatch,
    postgres_own_cluster: PostgresServer,
    extra_connections: ExitStack,
) -> None:
    server = postgres_own_cluster
    db = _db(monkeypatch, server.dsn())
    first = check_postgres.fn(db, Thresholds(), FIELD)
    assert first.status is Status.HEALTHY
    max_connections = first.details["max_connections"]
    # the check's own connection counts too
    needed = math.ceil(0.95 * max_connections) - first.details["connections"]
    for _ in range(needed):
        extra_connections.enter_context(server.connect())
    result = check_postgres.fn(db, Thresholds(), FIELD)
    assert result.details["connections_pct"] >= 95
    assert result.status is Status.CRITICAL, result.summary


def test_bad_password_is_permanent_and_never_shows_the_password(
    monkeypatch: pytest.MonkeyPatch, postgres_password_role: PostgresRole
) -> None:
    good = check_postgres.fn(_db(monkeypatch, postgres_password_role.dsn), Thresholds(), FIELD)
    assert good.status is Status.HEALTHY
    wrong_password = "wrong-" + postgres_password_role.password[::-1]
    bad_dsn = postgres_password_role.server.dsn(
        user=postgres_password_role.user, password=wrong_password
    )
    with pytest.raises(PermanentError) as caught:
        check_postgres.fn(_db(monkeypatch, bad_dsn), Thresholds(), FIELD)
    message = str(caught.value)
    assert "password authentication failed" in message
    assert wrong_password not in message
    assert postgres_password_role.password not in message
    assert f"{FIELD}.dsn" in message


def test_unknown_database_is_permanent(
    monkeypatch: pytest.MonkeyPatch, postgres_server: PostgresServer
) -> None:
    db = _db(monkeypatch, postgres_server.dsn("opsflow_no_such_db"))
    with pytest.raises(PermanentError, match="opsflow_no_such_db"):
        check_postgres.fn(db, Thresholds(), FIELD)


def test_refused_port_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    db = _db(monkeypatch, f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    with pytest.raises(TransientError, match=r"(?i)connection refused"):
        check_postgres.fn(db, Thresholds(), FIELD)


def test_exec_paths_are_refused_until_wired() -> None:
    db = Database(name="main", kind="postgres", dsn="env:UNUSED_DSN", via={"docker_exec": "app-db"})
    with pytest.raises(PermanentError, match="docker_exec is not yet supported"):
        check_postgres.fn(db, Thresholds(), FIELD)


def test_health_sql_runs_through_psql_tA(postgres_database: PostgresDatabase) -> None:
    """The exec paths run the same SQL through `psql -tA`: check that it parses the same."""
    server = postgres_database.server

    def execute(sql: str) -> list[tuple[str, ...]]:
        argv = psql_argv(sql, dbname=postgres_database.name, user=server.superuser)
        argv[0] = server.bin("psql")
        argv += ["-h", server.host, "-p", str(server.port)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
        return parse_psql_rows(proc.stdout)

    stats = collect_stats(execute)
    with psycopg.connect(postgres_database.dsn) as conn:
        direct = collect_stats(lambda sql: conn.execute(sql).fetchall())
    assert stats.database == direct.database == postgres_database.name
    assert stats.version == direct.version
    assert stats.max_connections == direct.max_connections
    assert stats.size_bytes == direct.size_bytes


def test_restore_side_sql_logs_in_with_the_dsn_password(
    monkeypatch: pytest.MonkeyPatch, postgres_password_role: PostgresRole
) -> None:
    """restore/verify/swap/drop (via: direct) send the DSN's password like the check does."""
    db = _db(monkeypatch, postgres_password_role.dsn)
    drop_postgres_database.fn(db, "opsflow_no_such_db", FIELD)  # drop if exists: logs in
    with postgres_for(db, FIELD) as pg:
        assert pg.run_sql("select current_user") == [(postgres_password_role.user,)]
        assert admin.exists(pg, "postgres") and not admin.exists(pg, "opsflow_no_such_db")
