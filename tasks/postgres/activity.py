"""What a PostgreSQL server is busy with, for the alert runbooks (read only).

* ``slow_queries``: ``pg_stat_statements`` (the statements with the highest mean time) when the
  extension is installed in the database and readable, else ``pg_stat_activity`` (the
  longest-running statements now, the walsender and this session left out);
* ``connection_breakdown``: the client connections of ``pg_stat_activity`` by state,
  application, user and client address, against ``max_connections``.

Over the database's transport (``postgres_for``: direct, docker_exec or kubectl_exec), as the
other PostgreSQL tasks. Query texts are redacted (they can carry literals) and cut to 200
characters.
"""

from __future__ import annotations

from typing import Any

from connectors.postgres import Postgres, postgres_for
from opsflow.alert_runbooks import Finding
from opsflow.errors import OpsflowError
from opsflow.inventory import Database, DockerTarget, KubernetesTarget, Thresholds
from opsflow.redaction import redact
from tasks.policy import probe_task

TOP = 10
QUERY_CHARS = 200
HAS_STATEMENTS_SQL = "select count(*) from pg_extension where extname = 'pg_stat_statements'"
STATEMENTS_SQL = f"""\
select calls, round(mean_exec_time::numeric, 1), round(total_exec_time::numeric, 1),
       left(regexp_replace(query, '\\s+', ' ', 'g'), {QUERY_CHARS})
from pg_stat_statements
where dbid = (select oid from pg_database where datname = current_database())
order by mean_exec_time desc
limit {TOP}"""
ACTIVITY_SQL = f"""\
select pid, coalesce(usename, ''), coalesce(application_name, ''), coalesce(state, ''),
       round(extract(epoch from clock_timestamp() - query_start)::numeric, 1),
       coalesce(wait_event_type, ''),
       left(regexp_replace(query, '\\s+', ' ', 'g'), {QUERY_CHARS})
from pg_stat_activity
where backend_type = 'client backend' and pid <> pg_backend_pid()
  and state is distinct from 'idle' and query_start is not null
order by query_start
limit {TOP}"""
CONNECTIONS_SQL = """\
select coalesce(state, 'unknown'), coalesce(nullif(application_name, ''), '-'),
       coalesce(usename, '-'), coalesce(host(client_addr), 'local'), count(*)
from pg_stat_activity
where backend_type = 'client backend'
group by 1, 2, 3, 4
order by 5 desc, 1, 2"""
MAX_CONNECTIONS_SQL = "select current_setting('max_connections')::int"


def _query(text: str) -> str:
    return redact(text)[:QUERY_CHARS]


def slow_query_view(pg: Postgres) -> Finding:
    """The slow-query view of ``pg`` (see the module docstring)."""
    db = pg.dbname
    source = "pg_stat_activity"
    note = ""
    rows: list[dict[str, Any]] = []
    if int(pg.run_sql(HAS_STATEMENTS_SQL, dbname=db)[0][0]):
        try:
            found = pg.run_sql(STATEMENTS_SQL, dbname=db)
            source = "pg_stat_statements"
            rows = [
                {"calls": int(c), "mean_ms": float(m), "total_ms": float(t), "query": _query(q)}
                for c, m, t, q in found
            ]
        except OpsflowError as exc:  # installed but not in shared_preload_libraries
            note = f"; pg_stat_statements unreadable ({redact(str(exc))[:200]})"
    if source == "pg_stat_activity":
        rows = [
            {
                "pid": int(pid),
                "user": user,
                "application": app,
                "state": state,
                "running_s": float(secs or 0),
                "wait": wait,
                "query": _query(q),
            }
            for pid, user, app, state, secs, wait, q in pg.run_sql(ACTIVITY_SQL, dbname=db)
        ]
    if not rows:
        summary = f"{source}: nothing running or recorded{note}"
    elif source == "pg_stat_statements":
        summary = f"{source}: slowest mean {rows[0]['mean_ms']:.1f} ms: {rows[0]['query']}{note}"
    else:
        summary = f"{source}: longest running {rows[0]['running_s']:.1f} s: {rows[0]['query']}"
        summary += note
    return Finding(
        step="slow_queries",
        target=pg.label,
        summary=summary,
        details={"source": source, "table": rows},
    )


def connection_view(pg: Postgres, thresholds: Thresholds) -> Finding:
    """Client connections by state / application / user / client vs ``max_connections``."""
    db = pg.dbname
    maximum = int(pg.run_sql(MAX_CONNECTIONS_SQL, dbname=db)[0][0])
    rows: list[dict[str, Any]] = [
        {"state": s, "application": a, "user": u, "client": c, "connections": int(n)}
        for s, a, u, c, n in pg.run_sql(CONNECTIONS_SQL, dbname=db)
    ]
    total = sum(r["connections"] for r in rows)
    pct = 100.0 * total / maximum if maximum else 0.0
    by_state: dict[str, int] = {}
    by_app: dict[str, int] = {}
    for r in rows:
        by_state[r["state"]] = by_state.get(r["state"], 0) + r["connections"]
        by_app[r["application"]] = by_app.get(r["application"], 0) + r["connections"]
    states = ", ".join(f"{k} {v}" for k, v in sorted(by_state.items(), key=lambda kv: -kv[1]))
    top_app = max(by_app.items(), key=lambda kv: kv[1]) if by_app else ("-", 0)
    summary = (
        f"{total}/{maximum} connections ({pct:.0f}%): {states or 'none'}; most from "
        f"application {top_app[0]!r} ({top_app[1]})"
    )
    over = pct >= thresholds.connections_pct
    if over:
        summary += (
            f" - at or above {thresholds.connections_pct:g}% (fix: end idle clients, add a "
            "pooler such as PgBouncer, or raise max_connections)"
        )
    return Finding(
        step="connection_breakdown",
        target=pg.label,
        status="degraded" if over else "complete",
        summary=redact(summary),
        details={
            "connections": total,
            "max_connections": maximum,
            "connections_pct": round(pct, 1),
            "by_state": by_state,
            "by_application": by_app,
            "table": rows,
        },
    )


@probe_task("slow_queries", timeout_seconds=120)
def slow_queries(
    db: Database,
    field: str,
    docker: DockerTarget | None = None,
    kubernetes: KubernetesTarget | None = None,
) -> Finding:
    """The slowest statements of ``db`` (pg_stat_statements, else pg_stat_activity)."""
    with postgres_for(db, field, docker, kubernetes) as pg:
        return slow_query_view(pg.pinned())


@probe_task("connection_breakdown", timeout_seconds=120)
def connection_breakdown(
    db: Database,
    field: str,
    thresholds: Thresholds,
    docker: DockerTarget | None = None,
    kubernetes: KubernetesTarget | None = None,
) -> Finding:
    """``db``'s server connections by state, application, user and client."""
    with postgres_for(db, field, docker, kubernetes) as pg:
        return connection_view(pg.pinned(), thresholds)
