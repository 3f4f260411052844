"""PostgreSQL health check: liveness, version, connections vs max_connections, size and the
longest running query.

The SQL and the parsing of its answer do not depend on how the SQL is run: ``collect_stats``
takes an ``execute(sql) -> rows`` callable.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from connectors.postgres import Execute, PgDsn, session
from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import (
    Database,
    DirectAccess,
    DockerExecAccess,
    Thresholds,
)
from opsflow.results import CheckResult, Status, grade
from opsflow.units import format_bytes
from tasks.policy import probe_task

CONNECTIONS_CRITICAL_PCT = 95.0


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
        f"({pct:.0f}%), size {format_bytes(stats.size_bytes)}, "
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


@probe_task("check_postgres", timeout_seconds=60)
def check_postgres(db: Database, thresholds: Thresholds, field: str) -> CheckResult:
    """Liveness, version, connections vs max_connections, size and longest query of one db."""
    started = time.monotonic()
    if not isinstance(db.via, DirectAccess):
        how = "docker_exec" if isinstance(db.via, DockerExecAccess) else "kubectl_exec"
        raise PermanentError(
            f"{field}.via: checking PostgreSQL through {how} is not yet supported "
            "(fix: use via: direct with a DSN reachable from the worker for now)"
        )
    dsn = PgDsn.of(db, field)
    with session(dsn, f"database {db.name!r} ({dsn.where})", field) as execute:
        stats = collect_stats(execute)
    status, summary = grade_stats(stats, thresholds)
    details: dict[str, Any] = asdict(stats)
    details["connections_pct"] = round(stats.connections_pct, 1)
    details["via"] = "direct"
    return CheckResult.timed(started, "postgres", db.name, status, summary, details)
