"""``Postgres``: one inventory PostgreSQL database over a transport — SQL and SQL input.

``via: direct``: SQL goes through psycopg, client tools (psql, pg_dump, pg_amcheck) run on this
worker with ``--dbname=<conninfo without password>`` and the password in PGPASSWORD.
``docker_exec`` / ``kubectl_exec``: the tools run beside the server, logged in with
``-U user -d db`` over its local socket (the DSN's password is not used there).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from glob import glob
from pathlib import Path
from typing import Any

import psycopg

from connectors.postgres.dsn import PgDsn
from connectors.postgres.errors import classify
from connectors.postgres.restrict import restricted
from connectors.postgres.sql import STATEMENT_TIMEOUT_MS, Execute, Row, parse_psql_rows
from connectors.transports import CommandTimedOut, Transport, transport_for, via_name
from opsflow.errors import PermanentError
from opsflow.inventory import Database, DockerTarget, KubernetesTarget

ADMIN_TIMEOUT_S = 120.0
VERIFY_TIMEOUT_S = 3600.0
MAINTENANCE_DB = "postgres"
_ABORT = b"\n\\.\n\\opsflow_restore_aborted\n"  # ends any COPY, then an invalid command: rollback


@dataclass(frozen=True)
class Postgres:
    """An inventory PostgreSQL database: its DSN, how it is reached and the transport its
    client tools run through. Use as a context manager (closes the transport's client)."""

    name: str
    field: str
    dsn: PgDsn
    via: str  # direct | docker_exec | kubectl_exec
    transport: Transport

    def __enter__(self) -> Postgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.transport.close()

    @property
    def direct(self) -> bool:
        return self.via == "direct"

    @property
    def dbname(self) -> str:
        return self.dsn.dbname

    @property
    def user(self) -> str:
        return self.dsn.user

    @property
    def where(self) -> str:
        """``host:port/db``, or ``db in container C`` / ``db in pod NS/POD`` (``NS/DEPLOY``)."""
        return self.dsn.where if self.direct else f"{self.dbname} in {self.transport.where}"

    @property
    def label(self) -> str:
        return f"database {self.name!r} ({self.where})"

    def pinned(self) -> Postgres:
        """The same database with every later command in the same place (one Ready pod)."""
        return replace(self, transport=self.transport.pinned())

    def tool(self, name: str) -> str:
        """The client tool to run: the installed binary here, the plain name beside the DB."""
        if not self.direct:
            return name
        binary = local_binary(name)
        if binary is None:
            raise PermanentError(
                f"{name} is not installed on this worker (fix: install the PostgreSQL client, "
                "e.g. `apt-get install postgresql-client`)"
            )
        return binary

    def psql(self, dbname: str, *args: str) -> list[str]:
        """``psql -X -v ON_ERROR_STOP=1 ARGS`` logged in to ``dbname``."""
        argv = [self.tool("psql"), "-X", "-v", "ON_ERROR_STOP=1", *args]
        if self.direct:
            return [*argv, f"--dbname={self.dsn.conninfo(dbname)}"]
        return [*argv, "-U", self.user, "-d", dbname]

    def connect(self, dbname: str | None = None, **options: Any) -> psycopg.Connection[Any]:
        """A psycopg connection (``via: direct``) with the DSN's password; errors classified."""
        try:
            return psycopg.connect(self.dsn.conninfo(dbname), password=self.dsn.password, **options)
        except psycopg.Error as exc:
            raise classify(exc, self.label, self.field) from None

    def run_sql(
        self, sql: str, dbname: str = MAINTENANCE_DB, timeout: float = ADMIN_TIMEOUT_S
    ) -> list[tuple[str, ...]]:
        """Run one statement (or a ``;``-separated block, as one transaction); rows as text."""
        if self.direct:
            with self.connect(dbname, autocommit=True) as conn:
                try:
                    conn.execute(f"set statement_timeout = {int(timeout * 1000)}")
                    cursor = conn.execute(sql)
                    rows = cursor.fetchall() if cursor.description else []
                except psycopg.Error as exc:
                    raise classify(exc, self.label, self.field) from None
            return [tuple("" if v is None else str(v) for v in row) for row in rows]
        done = self.transport.capture(self.psql(dbname, "-tA", "-c", sql), timeout)
        if done.code != 0:
            raise PermanentError(
                f"{self.label}: psql failed (exit {done.code}): {done.stderr_tail()}"
            )
        return parse_psql_rows(done.stdout.decode("utf-8", errors="replace"))

    def feed(self, dbname: str, chunks: Iterable[bytes], timeout: float) -> None:
        """Stream SQL into ``psql --single-transaction`` on ``dbname``; any failure rolls back."""
        argv = self.psql(dbname, "-q", "--single-transaction", "-f", "-")
        what = f"psql restore into {dbname} ({self.where})"
        try:
            done = self.transport.feed_in(argv, _aborting(restricted(chunks)), timeout)
        except CommandTimedOut:
            if not self.direct:
                raise
            raise PermanentError(
                f"{what} did not finish within {timeout:.0f}s; rolled back"
            ) from None
        if done.code != 0:
            tail = done.stderr_tail()
            hint = (
                " (fix: this psql predates restricted mode; install a PostgreSQL client of "
                "15.14, 16.10, 17.6 or later where the restore runs)"
                if "invalid command \\restrict" in tail
                else ""
            )
            raise PermanentError(f"{what} failed (exit {done.code}), rolled back: {tail}{hint}")


def postgres_for(
    db: Database,
    field: str,
    docker: DockerTarget | None = None,
    kubernetes: KubernetesTarget | None = None,
) -> Postgres:
    """The connector for an inventory PostgreSQL database (``field``: its inventory path;
    ``docker``/``kubernetes``: the environment's engine and cluster, for exec access)."""
    if db.kind != "postgres" or db.dsn is None:
        raise PermanentError(f"{field}: {db.name} is not a PostgreSQL database")
    dsn = PgDsn.of(db, field)
    transport = transport_for(db.name, db.via, field, docker, kubernetes, env=dsn.env())
    return Postgres(db.name, field, dsn, via_name(db.via), transport)


@contextmanager
def session(dsn: PgDsn, where: str, field: str) -> Iterator[Execute]:
    """A psycopg connection (autocommit, statement_timeout) as an ``execute(sql) -> rows``."""
    conninfo = dsn.conninfo(
        options=f"{dsn.params.get('options') or ''} -c statement_timeout={STATEMENT_TIMEOUT_MS}"
    )
    try:
        conn = psycopg.connect(conninfo, autocommit=True, password=dsn.password)
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


def local_binary(name: str) -> str | None:
    """A PostgreSQL client binary on PATH, else the newest under /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3])
    )
    return candidates[-1] if candidates else None


def _aborting(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """``chunks``; when they fail, first an input that makes psql fail and roll back, then the
    failure (on which the transport kills psql): whichever lands first, nothing is committed,
    even where a kill cannot reach the process (pod exec)."""
    try:
        yield from chunks
    except GeneratorExit:
        raise
    except BaseException:
        yield _ABORT
        raise
