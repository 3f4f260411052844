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

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.common import free_port

MACHINE = ("127.0.0.1", 5432)
PREFIX = "opsflow_bench_pgbench"
BUILD_TIMEOUT_S = 1800


def bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries (pg_dump, psql, pgbench, initdb, pg_ctl)."""
    dirs = sorted(glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    if not dirs:
        raise RuntimeError("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")
    return Path(dirs[-1])


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


def _answers(host: str, port: int) -> bool:
    try:
        with psycopg.connect(
            host=host, port=port, user="postgres", dbname="postgres", connect_timeout=3
        ) as conn:
            conn.execute("select 1")
        return True
    except psycopg.Error:
        return False


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str], what: str, timeout: float = 120) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr or proc.stdout}")


@contextmanager
def postgres_server() -> Iterator[PgServer]:
    """The machine's PostgreSQL when it answers, else a throwaway cluster (stopped on exit)."""
    if _answers(*MACHINE):
        yield PgServer(*MACHINE, own=False)
        return
    bins = bin_dir()
    base = Path(tempfile.mkdtemp(prefix="opsflow-bench-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, user="postgres", group="postgres")
    data, port = base / "data", free_port()
    pg_ctl = str(bins / "pg_ctl")
    try:
        _run(
            _as_postgres([str(bins / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]),
            "initdb",
        )
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run(
            _as_postgres(
                [pg_ctl, "-D", str(data), "-l", str(base / "log"), "-o", options, "-w", "start"]
            ),
            "pg_ctl start",
        )
        yield PgServer("127.0.0.1", port, own=True)
    finally:
        if (data / "postmaster.pid").exists():
            _run(_as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]), "pg_ctl stop")
        shutil.rmtree(base, ignore_errors=True)


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
        pgbench = [str(bin_dir() / "pgbench"), "-i", "-s", str(scale), "-q", *server.args(), name]
        _run(pgbench, f"pgbench -i -s {scale}", timeout=BUILD_TIMEOUT_S)
        server.execute(
            sql.SQL("comment on database {} is {}").format(
                sql.Identifier(name), sql.Literal(tag(scale))
            )
        )
    size = int(
        server.execute(sql.SQL("select pg_database_size({})").format(sql.Literal(name)))[0][0]
    )
    return PgbenchDb(server, name, scale, size, reused, time.monotonic() - started)
