"""Maintenance benchmark (issue 12): opsflow's VACUUM step against ``vacuumdb --analyze``.

A pgbench database of ``scale`` (70: ~1 GB), autovacuum off on its tables, gets the same
update before every vacuum (``UPDATE_PCT`` % of ``pgbench_accounts``, a different slice each
time, so each vacuum finds the same number of dead tuples), then is vacuumed either by
``vacuum_postgres.fn`` (every user table, ``VACUUM (ANALYZE)`` each with lock_timeout and
statement_timeout, figures before and after) or by ``vacuumdb --analyze`` (the same database;
it also vacuums the system catalogs). The two alternate, their order swapped every round. The
ratio is vacuumdb's p50 time / opsflow's p50 (goal >= 0.95: opsflow costs at most ~5 % more).

``python -m benchmarks --only maintenance`` (or ``run()`` directly); the database
``opsflow_bench_maint_s<scale>`` is dropped afterwards unless ``keep_db``.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from psycopg import sql

from benchmarks.common import Row, median, verdict
from benchmarks.pgdb import BUILD_TIMEOUT_S, PgServer, postgres_server
from tests.support.postgres_cluster import postgres_bin_dir, run_checked

NAME = "maintenance"
RATIO_GOAL = 0.95
ROUNDS = 5
UPDATE_PCT = 10
DSN_VAR = "OPSFLOW_BENCH_MAINT_DSN"
TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_history", "pgbench_tellers")


@dataclass
class VacuumFigures:
    scale: int
    database_bytes: int = 0
    build_s: float = 0.0
    opsflow_s: list[float] = field(default_factory=list)
    vacuumdb_s: list[float] = field(default_factory=list)
    dead_before: list[int] = field(default_factory=list)
    dead_after: list[int] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return median(self.vacuumdb_s) / median(self.opsflow_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "database_bytes": self.database_bytes,
            "build_s": round(self.build_s, 1),
            "opsflow_s": [round(s, 2) for s in self.opsflow_s],
            "vacuumdb_s": [round(s, 2) for s in self.vacuumdb_s],
            "dead_tuples_before": self.dead_before,
            "dead_tuples_after": self.dead_after,
            "ratio": round(self.ratio, 3),
            "goal": RATIO_GOAL,
        }

    def rows(self) -> list[Row]:
        runs = len(self.opsflow_s)
        gib = self.database_bytes / 1024**3
        return [
            Row(
                NAME,
                f"vacuum step, pgbench -s {self.scale} ({gib:.2f} GiB), p50 of {runs}",
                f"{median(self.opsflow_s):.2f} s",
                baseline=f"vacuumdb --analyze {median(self.vacuumdb_s):.2f} s",
                ratio=f"{self.ratio:.2f}",
                goal=f">= {RATIO_GOAL}",
                result=verdict(self.ratio >= RATIO_GOAL),
            ),
            Row(NAME, "dead tuples per vacuum (median)", f"{int(median(self.dead_before))}"),
        ]


def _build(server: PgServer, name: str, scale: int) -> None:
    server.drop(name)
    server.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    pgbench = [str(postgres_bin_dir() / "pgbench"), "-i", "-s", str(scale), "-q"]
    run_checked([*pgbench, *server.args(), name], f"pgbench -i -s {scale}", BUILD_TIMEOUT_S)
    for table in TABLES:
        server.execute(
            sql.SQL("alter table {} set (autovacuum_enabled = false)").format(
                sql.Identifier(table)
            ),
            name,
        )


def _dead(server: PgServer, name: str) -> int:
    rows = server.execute("select coalesce(sum(n_dead_tup), 0) from pg_stat_user_tables", name)
    return int(rows[0][0])


def _bloat(server: PgServer, name: str, slice_no: int) -> int:
    """Update one slice of UPDATE_PCT % of the accounts; the dead tuples that leaves."""
    server.execute(
        sql.SQL(
            "update pgbench_accounts set abalance = abalance + 1, filler = filler "
            "where aid % {} = {}"
        ).format(sql.Literal(100 // UPDATE_PCT), sql.Literal(slice_no % (100 // UPDATE_PCT))),
        name,
    )
    deadline = time.monotonic() + 30  # the updating session's statistics arrive shortly
    while (dead := _dead(server, name)) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    return dead


def _opsflow(database: Any, settings: Any) -> float:
    from tasks.postgres.maintenance import vacuum_postgres

    started = time.perf_counter()
    step = vacuum_postgres.fn(database, "environments.bench.databases[0]", None, None, settings)
    seconds = time.perf_counter() - started
    if step.status != "complete":
        raise RuntimeError(f"opsflow vacuum did not complete: {step.summary}")
    return seconds


def _vacuumdb(server: PgServer, name: str) -> float:
    argv = [str(postgres_bin_dir() / "vacuumdb"), "--analyze", "-q", *server.args(), name]
    started = time.perf_counter()
    subprocess.run(argv, check=True, timeout=BUILD_TIMEOUT_S)
    return time.perf_counter() - started


def run(scale: int = 70, keep_db: bool = False, rounds: int = ROUNDS) -> VacuumFigures:
    from opsflow.inventory import Database
    from opsflow.inventory.maintenance import PostgresMaintenance

    figures = VacuumFigures(scale)
    settings = PostgresMaintenance(statement_timeout=timedelta(hours=1))
    with postgres_server() as server:
        name = f"opsflow_bench_maint_s{scale}"
        started = time.monotonic()
        _build(server, name, scale)
        figures.build_s = time.monotonic() - started
        os.environ[DSN_VAR] = server.dsn(name)
        database = Database(name="pgbench", kind="postgres", dsn=f"env:{DSN_VAR}")
        try:
            _vacuumdb(server, name)  # the first VACUUM sets the visibility map: not counted
            slice_no = 0
            for round_no in range(rounds):
                order = ("opsflow", "vacuumdb") if round_no % 2 == 0 else ("vacuumdb", "opsflow")
                for tool in order:
                    figures.dead_before.append(_bloat(server, name, slice_no))
                    slice_no += 1
                    if tool == "opsflow":
                        figures.opsflow_s.append(_opsflow(database, settings))
                    else:
                        figures.vacuumdb_s.append(_vacuumdb(server, name))
                    figures.dead_after.append(_dead(server, name))
            figures.database_bytes = int(
                server.execute("select pg_database_size(current_database())", name)[0][0]
            )
        finally:
            os.environ.pop(DSN_VAR, None)
            if not keep_db:
                server.drop(name)
    return figures


if __name__ == "__main__":
    import json
    import sys

    result = run(int(sys.argv[1]) if len(sys.argv) > 1 else 70)
    print(json.dumps(result.as_dict(), indent=2))
    for row in result.rows():
        print(row.as_dict())
