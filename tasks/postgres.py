"""PostgreSQL health check.

The SQL and the parsing of its answer do not depend on how the SQL is run: ``collect_stats``
takes an ``execute(sql) -> rows`` callable. ``via: direct`` runs it over psycopg 3;
``docker_exec`` / ``kubectl_exec`` will run the same SQL through ``psql -tA`` in the
container or pod (``psql_argv`` builds the command, ``parse_psql_rows`` reads its output).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE

from opsflow.errors import PermanentError, TransientError, retry_on_transient
from opsflow.inventory import Database, DirectAccess, DockerExecAccess, Thresholds
from opsflow.redaction import redact, register_secret
from opsflow.results import CheckResult, Status, grade
from opsflow.secrets import resolve

CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_MS = 15_000
CONNECTIONS_CRITICAL_PCT = 95.0

Row = Sequence[Any]
Execute = Callable[[str], Sequence[Row]]

PING_SQL = "select 1"
STATS_SQL = """\
select current_setting('server_version'),
       (select count(*) from pg_stat_activity where backend_type = 'client backend'),
       current_setting('max_connections')::int,
       pg_database_size(current_database()),
       coalesce((select extract(epoch from max(clock_timestamp() - query_start))
                 from pg_stat_activity
                 where state = 'active' and backend_type = 'client backend'
                   and pid <> pg_backend_pid()), 0)::float8,
       current_database()"""


@dataclass(frozen=True)
class PostgresStats:
    version: str
    connections: int
    max_connections: int
    size_bytes: int
    longest_query_s: float
    database: str

    @property
    def connections_pct(self) -> float:
        return 100.0 * self.connections / self.max_connections if self.max_connections else 0.0


def collect_stats(execute: Execute) -> PostgresStats:
    """Run the health SQL through ``execute`` and parse the answer (native or text values)."""
    ping = execute(PING_SQL)
    if not ping or str(ping[0][0]).strip() != "1":
        raise TransientError(f"`select 1` returned {ping!r} instead of 1")
    rows = execute(STATS_SQL)
    if len(rows) != 1 or len(rows[0]) != 6:
        raise PermanentError(f"unexpected answer to the health query: {len(rows)} row(s)")
    version, connections, max_connections, size, longest, database = rows[0]
    return PostgresStats(
        version=str(version).strip(),
        connections=int(connections),
        max_connections=int(max_connections),
        size_bytes=int(size),
        longest_query_s=round(float(longest), 1),
        database=str(database).strip(),
    )


def grade_stats(stats: PostgresStats, thresholds: Thresholds) -> tuple[Status, str]:
    """Status and one-line summary: connections in use graded against max_connections."""
    pct = stats.connections_pct
    status = grade(pct, thresholds.connections_pct, CONNECTIONS_CRITICAL_PCT)
    summary = (
        f"PostgreSQL {stats.version}: {stats.connections}/{stats.max_connections} connections "
        f"({pct:.0f}%), size {_human_bytes(stats.size_bytes)}, "
        f"longest running query {stats.longest_query_s:.0f}s"
    )
    if status is not Status.HEALTHY:
        limit = (
            CONNECTIONS_CRITICAL_PCT if status is Status.CRITICAL else thresholds.connections_pct
        )
        summary += (
            f" - connections at or above {limit:.0f}% of max_connections "
            "(fix: find idle or leaking clients in pg_stat_activity, add a pooler such as "
            "PgBouncer, or raise max_connections)"
        )
    return status, summary


def psql_argv(sql: str, dbname: str | None = None, user: str | None = None) -> list[str]:
    """``psql`` command for exec paths: unaligned tuples-only output, stop on error."""
    argv = ["psql", "-X", "-tA", "-v", "ON_ERROR_STOP=1"]
    if user:
        argv += ["-U", user]
    if dbname:
        argv += ["-d", dbname]
    argv += ["-c", f"set statement_timeout = {STATEMENT_TIMEOUT_MS}; {sql}"]
    return argv


def parse_psql_rows(output: str, separator: str = "|") -> list[tuple[str, ...]]:
    """Rows of ``psql -tA`` output (the ``SET`` line of ``psql_argv`` is dropped)."""
    return [
        tuple(line.split(separator))
        for line in output.splitlines()
        if line.strip() and line.strip() != "SET"
    ]


def _human_bytes(size: float) -> str:
    units = ("B", "kB", "MB", "GB", "TB")
    step = 0
    while size >= 1024 and step < len(units) - 1:
        size /= 1024
        step += 1
    return f"{size:.0f} B" if step == 0 else f"{size:.1f} {units[step]}"


_PERMANENT_MARKERS = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "invalid sslmode",
    "certificate",
)


def classify(exc: psycopg.Error, where: str, field: str) -> Exception:
    """Turn a psycopg error into an operator-facing, password-free opsflow error."""
    text = redact(str(exc).strip())
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return TransientError(
            f"{where}: the health query exceeded statement_timeout "
            f"({STATEMENT_TIMEOUT_MS} ms); the server is overloaded or locked: {text}"
        )
    if not isinstance(exc, psycopg.OperationalError):
        return PermanentError(f"{where}: {text} (fix: check the database and role in {field}.dsn)")
    lowered = text.lower()
    if any(marker in lowered for marker in _PERMANENT_MARKERS):
        return PermanentError(
            f"{where}: cannot log in: {text} (fix: check the user, password and database name "
            f"in the secret referenced by {field}.dsn, and the server's pg_hba.conf)"
        )
    return TransientError(
        f"{where}: cannot reach PostgreSQL: {text} (fix: check that the server is running and "
        "reachable from this worker)"
    )


@contextmanager
def _direct(dsn: str, where: str, field: str) -> Iterator[Execute]:
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise PermanentError(
            f"{field}.dsn: the DSN cannot be parsed (fix: use postgresql://user@host:port/db "
            "or key=value form)"
        ) from None
    if params.get("password"):
        register_secret(str(params["password"]))
    conninfo = psycopg.conninfo.make_conninfo(
        dsn,
        connect_timeout=params.get("connect_timeout") or CONNECT_TIMEOUT_S,
        options=f"{params.get('options') or ''} -c statement_timeout={STATEMENT_TIMEOUT_MS}",
    )
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise classify(exc, where, field) from None

    def execute(sql: str) -> list[Row]:
        try:
            return list(conn.execute(sql).fetchall())
        except psycopg.Error as exc:
            raise classify(exc, where, field) from None

    try:
        yield execute
    finally:
        conn.close()


def _where(dsn: str) -> str:
    """``host:port/db`` of a DSN, without credentials."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "PostgreSQL"
    host = params.get("host") or "localhost"
    port = params.get("port") or 5432
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


@task(
    name="check_postgres",
    timeout_seconds=60,
    retries=2,
    retry_delay_seconds=[1, 4],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_on_transient,
    cache_policy=NO_CACHE,  # a health check must look at the present, never reuse a result
)
def check_postgres(db: Database, thresholds: Thresholds, field: str) -> CheckResult:
    """Liveness, version, connections vs max_connections, size and longest query of one db."""
    started = time.monotonic()
    if not isinstance(db.via, DirectAccess):
        how = "docker_exec" if isinstance(db.via, DockerExecAccess) else "kubectl_exec"
        raise PermanentError(
            f"{field}.via: checking PostgreSQL through {how} is not yet supported "
            "(fix: use via: direct with a DSN reachable from the worker for now)"
        )
    assert db.dsn is not None  # the inventory model requires it for postgres
    dsn = resolve(db.dsn, field=f"{field}.dsn")
    where = f"database {db.name!r} ({_where(dsn)})"
    with _direct(dsn, where, field) as execute:
        stats = collect_stats(execute)
    status, summary = grade_stats(stats, thresholds)
    details: dict[str, Any] = asdict(stats)
    details["connections_pct"] = round(stats.connections_pct, 1)
    details["via"] = "direct"
    return CheckResult(
        check="postgres",
        target=db.name,
        status=status,
        summary=summary,
        details=details,
        duration_ms=int((time.monotonic() - started) * 1000),
    )
