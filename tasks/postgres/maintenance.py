"""PostgreSQL maintenance of the maintenance runbook: measure tables and indexes, VACUUM
(ANALYZE) the tables, REINDEX CONCURRENTLY the bloated btree indexes.

A database is reached ``direct``, ``docker_exec`` or ``kubectl_exec`` like backups are
(``postgres_for``). Every VACUUM / REINDEX runs outside a transaction block after
``SET lock_timeout`` and ``SET statement_timeout`` (``PostgresMaintenance``) in its session
(``connectors.postgres.maintenance.MaintenanceSession``): a table or index whose lock is not
obtained in time, or whose statement runs too long, is reported (the step is ``degraded``) and
the others go on. Past ``deadline`` (the end of the window) nothing new is started.

Bloat figures are estimates from the planner statistics (``connectors.postgres.maintenance_sql``):
they need ANALYZE to have run, which VACUUM (ANALYZE) does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from connectors.postgres import Postgres, postgres_for
from connectors.postgres import maintenance_sql as msql
from connectors.postgres.maintenance import MaintenanceSession, Outcome
from opsflow.errors import InputError
from opsflow.inventory import Database, DockerTarget, KubernetesTarget
from opsflow.inventory.maintenance import PostgresMaintenance
from opsflow.maintenance import MaintenanceStep
from opsflow.units import format_bytes
from tasks.policy import api_task, probe_task

MEASURE_TIMEOUT_S = 300.0
TASK_TIMEOUT_S = 6 * 3600.0  # a window's worth; each statement is bounded by statement_timeout
CCNEW_DROP_WAIT_MS = 60_000  # lock wait for dropping the invalid index a failed REINDEX left
REINDEX_MIN_VERSION = 120000


class TableFigures(BaseModel):
    table: str  # schema.table
    live_tuples: int
    dead_tuples: int
    table_bytes: int
    index_bytes: int
    bloat_bytes: int  # estimate (needs statistics)


class IndexFigures(BaseModel):
    index: str  # schema.index
    table: str  # schema.table
    bytes: int
    bloat_pct: float  # estimate (needs statistics)
    bloat_bytes: int  # estimate


class PgFigures(BaseModel):
    database_bytes: int
    tables: list[TableFigures]
    indexes: list[IndexFigures]

    def totals(self) -> dict[str, int]:
        """database_bytes, dead_tuples, table_bytes, index_bytes, bloat_bytes (tables and
        indexes)."""
        return {
            "database_bytes": self.database_bytes,
            "dead_tuples": sum(t.dead_tuples for t in self.tables),
            "table_bytes": sum(t.table_bytes for t in self.tables),
            "index_bytes": sum(t.index_bytes for t in self.tables),
            "bloat_bytes": sum(t.bloat_bytes for t in self.tables)
            + sum(i.bloat_bytes for i in self.indexes),
        }


# ----- reading ------------------------------------------------------------------------------


def tables_field(field: str) -> str:
    """``environments.E.maintenance.postgres.tables`` for a database at ``field``."""
    return field.rsplit(".databases", 1)[0] + ".maintenance.postgres.tables"


def table_scope(pg: Postgres, settings: PostgresMaintenance) -> str:
    """The SQL scope of the tables to maintain: ``settings.tables`` resolved by the server
    (an unknown name, or one that is not a table, is an InputError), else every user table."""
    if not settings.tables:
        return msql.ALL_TABLES
    where = tables_field(pg.field)
    for name in settings.tables:
        parts = name.split(".")
        if len(parts) > 2 or not all(parts):
            raise InputError(where, f"{name!r} is not a table name", "write schema.table")
    resolved = msql.parse_resolved(pg.run_sql(msql.resolve_tables_sql(settings.tables), pg.dbname))
    bad = [
        n for n in settings.tables if resolved.get(n, (None, ""))[1] not in msql.MAINTAINABLE_KINDS
    ]
    if bad:
        raise InputError(
            where,
            f"{', '.join(bad)}: no such table in {pg.label}",
            "correct or remove the name (schema.table, exact case), or leave the list empty "
            "to maintain every user table",
        )
    return msql.oid_scope([oid for oid, _ in resolved.values() if oid is not None])


def read_tables(pg: Postgres, scope: str) -> list[msql.TableRow]:
    return msql.parse_table_rows(pg.run_sql(msql.table_stats_sql(scope), pg.dbname))


def read_indexes(pg: Postgres, scope: str) -> list[IndexFigures]:
    """The valid btree indexes of the tables in ``scope`` with their bloat estimates."""
    return [_index_figures(row, bloat) for row, bloat in _indexes(pg, scope)]


def _indexes(pg: Postgres, scope: str) -> list[tuple[msql.IndexRow, tuple[int, float]]]:
    rows = msql.parse_index_rows(pg.run_sql(msql.index_sizes_sql(scope), pg.dbname))
    bloat = msql.parse_index_bloat(pg.run_sql(msql.btree_bloat_sql(scope), pg.dbname))
    return [(row, bloat.get(row.oid, (0, 0.0))) for row in rows]


def _index_figures(row: msql.IndexRow, bloat: tuple[int, float]) -> IndexFigures:
    return IndexFigures(
        index=row.name, table=row.table, bytes=row.bytes, bloat_bytes=bloat[0], bloat_pct=bloat[1]
    )


def database_bytes(pg: Postgres) -> int:
    return int(pg.run_sql(msql.DATABASE_SIZE_SQL, pg.dbname)[0][0])


def measure(pg: Postgres, settings: PostgresMaintenance) -> PgFigures:
    """Sizes, tuple counts and bloat estimates of the tables to maintain (read-only)."""
    scope = table_scope(pg, settings)
    bloat = msql.parse_table_bloat(pg.run_sql(msql.table_bloat_sql(scope), pg.dbname))
    tables = [
        TableFigures(
            table=t.name,
            live_tuples=t.live_tuples,
            dead_tuples=t.dead_tuples,
            table_bytes=t.table_bytes,
            index_bytes=t.index_bytes,
            bloat_bytes=bloat.get(t.oid, 0),
        )
        for t in read_tables(pg, scope)
    ]
    return PgFigures(
        database_bytes=database_bytes(pg), tables=tables, indexes=read_indexes(pg, scope)
    )


@probe_task("measure_postgres", timeout_seconds=MEASURE_TIMEOUT_S)
def measure_postgres(
    db: Database,
    field: str,
    docker: DockerTarget | None,
    kubernetes: KubernetesTarget | None,
    settings: PostgresMaintenance,
) -> PgFigures:
    """Per table: live/dead tuples, table and index bytes, estimated bloat; per btree index:
    bytes and estimated bloat; the database size. Read-only. Bloat is an estimate from the
    planner statistics (ioguix/pgexperts queries): it needs ANALYZE to have run."""
    with postgres_for(db, field, docker, kubernetes) as pg:
        return measure(pg.pinned(), settings)


# ----- VACUUM -------------------------------------------------------------------------------


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


def _session(pg: Postgres, settings: PostgresMaintenance) -> MaintenanceSession:
    return MaintenanceSession(
        pg,
        _ms(settings.lock_timeout.total_seconds()),
        _ms(settings.statement_timeout.total_seconds()),
    )


def _check_deadline(deadline: datetime | None) -> None:
    if deadline is not None and deadline.tzinfo is None:
        raise InputError("deadline", "has no timezone", "pass a timezone-aware UTC datetime")


def _passed(deadline: datetime | None) -> bool:
    return deadline is not None and datetime.now(UTC) >= deadline


def _failure(name: str, outcome: Outcome, settings: PostgresMaintenance) -> str:
    if outcome.result == "lock_timeout":
        return f"{name} (lock not obtained within lock_timeout {settings.lock_timeout})"
    if outcome.result == "statement_timeout":
        return f"{name} (ran past statement_timeout {settings.statement_timeout})"
    return f"{name} ({outcome.message})"


def _sums(rows: Sequence[msql.TableRow]) -> dict[str, int]:
    return {
        "tables": len(rows),
        "dead_tuples": sum(r.dead_tuples for r in rows),
        "live_tuples": sum(r.live_tuples for r in rows),
        "table_bytes": sum(r.table_bytes for r in rows),
        "index_bytes": sum(r.index_bytes for r in rows),
    }


def vacuum(
    pg: Postgres,
    settings: PostgresMaintenance,
    *,
    full: bool = False,
    deadline: datetime | None = None,
) -> MaintenanceStep:
    """VACUUM (ANALYZE) — (FULL, ANALYZE) with ``full`` — each table to maintain, in turn."""
    started = time.monotonic()
    _check_deadline(deadline)
    step = "vacuum_full" if full else "vacuum"
    scope = table_scope(pg, settings)
    tables = read_tables(pg, scope)
    size_before = database_bytes(pg)
    outcomes: dict[str, Outcome] = {}
    skipped: list[str] = []
    with _session(pg, settings) as session:
        for table in tables:
            if _passed(deadline):
                skipped.append(table.name)
                continue
            outcomes[table.name] = session.run(msql.vacuum_sql(table.quoted, full=full))
    done = [t for t in tables if t.name in outcomes and outcomes[t.name].done]
    after = read_tables(pg, msql.oid_scope([t.oid for t in done])) if done else []
    after_by_name = {r.name: r for r in after}
    failed = [_failure(n, o, settings) for n, o in outcomes.items() if not o.done]
    details: dict[str, Any] = {
        "via": pg.via,
        "full": full,
        "tables": [
            {
                "table": t.name,
                "result": outcomes[t.name].result if t.name in outcomes else "skipped",
                "seconds": round(outcomes[t.name].seconds, 2) if t.name in outcomes else 0.0,
                "message": outcomes[t.name].message if t.name in outcomes else "deadline passed",
                "dead_tuples_before": t.dead_tuples,
                "dead_tuples_after": _after(after_by_name, t.name, "dead_tuples"),
                "table_bytes_before": t.table_bytes,
                "table_bytes_after": _after(after_by_name, t.name, "table_bytes"),
            }
            for t in tables
        ],
        "not_vacuumed": failed,
        "skipped": skipped,
    }
    before_figures = {**_sums(done), "database_bytes": size_before}
    after_figures = {**_sums(after), "database_bytes": database_bytes(pg)}
    what = "VACUUM (FULL, ANALYZE)" if full else "VACUUM (ANALYZE)"
    summary = (
        f"{what} of {len(done)}/{len(tables)} table(s): dead tuples "
        f"{before_figures['dead_tuples']} → {after_figures['dead_tuples']}, tables "
        f"{format_bytes(before_figures['table_bytes'])} → "
        f"{format_bytes(after_figures['table_bytes'])}"
    )
    summary += _problems(failed, "not vacuumed", skipped)
    return MaintenanceStep(
        step=step,
        target=pg.name,
        status="degraded" if failed or skipped else "complete",
        summary=summary,
        before=dict(before_figures),
        after=dict(after_figures),
        details=details,
        seconds=round(time.monotonic() - started, 2),
    )


def _after(rows: dict[str, msql.TableRow], name: str, what: str) -> int | None:
    row = rows.get(name)
    return None if row is None else int(getattr(row, what))


def _problems(failed: list[str], label: str, skipped: list[str]) -> str:
    text = ""
    if failed:
        text += f"; {label}: " + ", ".join(failed)
    if skipped:
        text += f"; not started (the window's deadline passed): {', '.join(skipped)}"
    return text


@api_task("vacuum_postgres", timeout_seconds=TASK_TIMEOUT_S)
def vacuum_postgres(
    db: Database,
    field: str,
    docker: DockerTarget | None,
    kubernetes: KubernetesTarget | None,
    settings: PostgresMaintenance,
    *,
    full: bool = False,
    deadline: datetime | None = None,
) -> MaintenanceStep:
    """VACUUM (ANALYZE) every table to maintain (``full``: VACUUM (FULL, ANALYZE), which locks
    each table exclusively: the flow asks for approval first). A table whose lock or statement
    times out is reported, the others go on; past ``deadline`` no table is started."""
    with postgres_for(db, field, docker, kubernetes) as pg:
        return vacuum(pg.pinned(), settings, full=full, deadline=deadline)


# ----- REINDEX ------------------------------------------------------------------------------


def _invalid(pg: Postgres, table_oid: int) -> dict[int, str]:
    rows = pg.run_sql(msql.invalid_indexes_sql(table_oid), pg.dbname)
    return {int(r[0]): str(r[1]) for r in rows if len(r) == 2}


def _rebuild(
    pg: Postgres, session: MaintenanceSession, row: msql.IndexRow
) -> tuple[Outcome, list[str]]:
    """REINDEX CONCURRENTLY one index; after a failure drop the invalid copies it left
    (``<index>_ccnew``): the names of those that could not be dropped."""
    invalid_before = _invalid(pg, row.table_oid)
    outcome = session.run(msql.reindex_sql(row.quoted))
    if outcome.done:
        return outcome, []
    lock_ms = max(session.lock_timeout_ms, CCNEW_DROP_WAIT_MS)
    remaining = []
    for oid, quoted in _invalid(pg, row.table_oid).items():
        if oid in invalid_before:
            continue
        if not session.run(msql.drop_index_sql(quoted), lock_timeout_ms=lock_ms).done:
            remaining.append(quoted)
    return outcome, remaining


def reindex(
    pg: Postgres, settings: PostgresMaintenance, *, deadline: datetime | None = None
) -> MaintenanceStep:
    """REINDEX INDEX CONCURRENTLY each btree index of the tables to maintain whose estimated
    bloat is at least ``reindex_bloat_pct`` and whose size is at least ``reindex_min_size``."""
    started = time.monotonic()
    _check_deadline(deadline)
    version = int(pg.run_sql(msql.SERVER_VERSION_SQL, pg.dbname)[0][0])
    if version < REINDEX_MIN_VERSION:
        return MaintenanceStep(
            step="reindex",
            target=pg.name,
            status="skipped",
            summary=f"REINDEX CONCURRENTLY needs PostgreSQL 12 or later (server: {version})",
            seconds=round(time.monotonic() - started, 2),
        )
    scope = table_scope(pg, settings)
    indexes = _indexes(pg, scope)
    chosen = [
        (row, bloat)
        for row, bloat in indexes
        if bloat[1] >= settings.reindex_bloat_pct and row.bytes >= settings.reindex_min_size
    ]
    results: dict[str, Outcome] = {}
    failed: list[str] = []
    left: list[str] = []
    skipped: list[str] = []
    with _session(pg, settings) as session:
        for row, _ in chosen:
            if _passed(deadline):
                skipped.append(row.name)
                continue
            outcome, remaining = _rebuild(pg, session, row)
            results[row.name] = outcome
            if not outcome.done:
                failed.append(_failure(row.name, outcome, settings))
            left += remaining
    now = {r.name: r.bytes for r, _ in _indexes(pg, scope)} if chosen else {}
    before_bytes = sum(r.bytes for r, _ in chosen)
    after_bytes = sum(now.get(r.name, 0) for r, _ in chosen)
    rebuilt = [n for n, o in results.items() if o.done]
    summary = (
        f"REINDEX CONCURRENTLY of {len(rebuilt)}/{len(chosen)} index(es) chosen of "
        f"{len(indexes)} (estimated bloat >= {settings.reindex_bloat_pct:g}% and size >= "
        f"{format_bytes(settings.reindex_min_size)}): {format_bytes(before_bytes)} → "
        f"{format_bytes(after_bytes)}"
    )
    summary += _problems(failed, "not rebuilt", skipped)
    if left:
        summary += (
            f"; invalid index(es) left behind: {', '.join(left)} (fix: DROP INDEX "
            "CONCURRENTLY them once the blocking sessions have ended)"
        )
    details: dict[str, Any] = {
        "via": pg.via,
        "indexes": [
            {
                "index": row.name,
                "table": row.table,
                "bloat_pct": bloat[1],
                "bloat_bytes": bloat[0],
                "bytes_before": row.bytes,
                "bytes_after": now.get(row.name),
                "result": results[row.name].result if row.name in results else "skipped",
                "message": results[row.name].message if row.name in results else "",
            }
            for row, bloat in chosen
        ],
        "not_rebuilt": failed,
        "skipped": skipped,
        "invalid_left": left,
    }
    return MaintenanceStep(
        step="reindex",
        target=pg.name,
        status="degraded" if failed or skipped or left else "complete",
        summary=summary,
        before={"indexes": len(chosen), "index_bytes": before_bytes},
        after={"indexes": len(rebuilt), "index_bytes": after_bytes},
        details=details,
        seconds=round(time.monotonic() - started, 2),
    )


@api_task("reindex_postgres", timeout_seconds=TASK_TIMEOUT_S)
def reindex_postgres(
    db: Database,
    field: str,
    docker: DockerTarget | None,
    kubernetes: KubernetesTarget | None,
    settings: PostgresMaintenance,
    *,
    deadline: datetime | None = None,
) -> MaintenanceStep:
    """REINDEX CONCURRENTLY the btree indexes whose estimated bloat and size pass
    ``reindex_bloat_pct`` and ``reindex_min_size`` (measured now: run after VACUUM ANALYZE).
    An interrupted rebuild's invalid ``_ccnew`` index is dropped and the index reported."""
    with postgres_for(db, field, docker, kubernetes) as pg:
        return reindex(pg.pinned(), settings, deadline=deadline)


__all__ = [
    "IndexFigures",
    "PgFigures",
    "TableFigures",
    "measure",
    "measure_postgres",
    "reindex",
    "reindex_postgres",
    "vacuum",
    "vacuum_postgres",
]
