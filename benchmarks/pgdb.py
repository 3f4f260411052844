"""The PostgreSQL server and the pgbench databases of the backup benchmarks (issue 4).

``postgres_server`` uses the machine's PostgreSQL at 127.0.0.1:5432 (trust auth for
``postgres``) when it answers, else starts a throwaway cluster (initdb + pg_ctl as the
``postgres`` user on a free port, ``fsync=off``), stopped and deleted on exit.

``pgbench_database(server, scale)`` returns ``opsflow_bench_pgbench_s<scale>`` filled by
``pgbench -i -s <scale>``. A finished build is tagged with a database comment; a database that
has the tag is reused (``--keep-db`` keeps them between runs), one without it (a build that was
interrupted) is dropped and built again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from tests.support.postgres_cluster import (
    postgres_answers,
    postgres_bin_dir,
    run_checked,
    throwaway_cluster,
)

MACHINE = ("127.0.0.1", 5432)
PREFIX = "opsflow_bench_pgbench"
BUILD_TIMEOUT_S = 1800


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    own: bool
    user: str = "postgres"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def args(self) -> list[str]:
        """Connection options for the PostgreSQL command-line tools."""
        return ["-h", self.host, "-p", str(self.port), "-U", self.user]

    def execute(
        self, statement: str | sql.SQL | sql.Composed, dbname: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
            cursor = conn.execute(statement)
            return list(cursor.fetchall()) if cursor.description else []

    def drop(self, dbname: str) -> None:
        self.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname))
        )

    def databases(self, like: str) -> list[str]:
        rows = self.execute(
            sql.SQL("select datname from pg_database where datname like {} order by 1").format(
                sql.Literal(like)
            )
        )
        return [str(r[0]) for r in rows]


@contextmanager
def postgres_server() -> Iterator[PgServer]:
    """The machine's PostgreSQL when it answers, else a throwaway cluster (stopped on exit)."""
    if postgres_answers(*MACHINE):
        yield PgServer(*MACHINE, own=False)
        return
    with throwaway_cluster(prefix="opsflow-bench-pg-") as port:
        yield PgServer("127.0.0.1", port, own=True)


def tag(scale: int) -> str:
    return f"opsflow-benchmark pgbench scale={scale} ready"


@dataclass(frozen=True)
class PgbenchDb:
    server: PgServer
    name: str
    scale: int
    size_bytes: int
    reused: bool
    build_s: float

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.name)


def pgbench_database(server: PgServer, scale: int) -> PgbenchDb:
    """``opsflow_bench_pgbench_s<scale>``: reused when tagged as complete, else (re)built."""
    import time

    name = f"{PREFIX}_s{scale}"
    rows = server.execute(
        sql.SQL(
            "select shobj_description(oid, 'pg_database') from pg_database where datname = {}"
        ).format(sql.Literal(name))
    )
    reused = bool(rows) and rows[0][0] == tag(scale)
    started = time.monotonic()
    if not reused:
        server.drop(name)
        server.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        pgbench = [
            str(postgres_bin_dir() / "pgbench"),
            "-i",
            "-s",
            str(scale),
            "-q",
            *server.args(),
            name,
        ]
        run_checked(pgbench, f"pgbench -i -s {scale}", timeout=BUILD_TIMEOUT_S)
        server.execute(
            sql.SQL("comment on database {} is {}").format(
                sql.Identifier(name), sql.Literal(tag(scale))
            )
        )
    size = int(
        server.execute(sql.SQL("select pg_database_size({})").format(sql.Literal(name)))[0][0]
    )
    return PgbenchDb(server, name, scale, size, reused, time.monotonic() - started)
