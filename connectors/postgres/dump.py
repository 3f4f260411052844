"""``open_dump``: what a PostgreSQL backup reads — row counts and table checksums, then the
``pg_dump`` stream (plain SQL, ``--no-owner``).

``via: direct`` measures inside a repeatable-read transaction whose snapshot pg_dump then dumps
(``--snapshot``), so the counts and checksums describe exactly the data in the dump.
``docker_exec``/``kubectl_exec`` measure with psql just before pg_dump, in the same container
or pod.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from connectors.postgres.client import Postgres, local_binary
from connectors.postgres.errors import classify, dump_error, missing_tables_error
from connectors.postgres.sql import (
    ROW_COUNTS_SQL,
    checksum_sql,
    missing_tables_sql,
    parse_checksums,
    parse_psql_rows,
    parse_row_counts,
    psql_argv,
)
from connectors.transports import CommandFailed, CommandTimedOut
from opsflow.errors import PermanentError

DUMP_TIMEOUT_S = 6 * 3600
EXEC_IDLE_TIMEOUT_S = 300.0  # exec dumps: longest silence of pg_dump before it is stopped
EXEC_MEASURE_TIMEOUT_S = 900.0
COUNT_TIMEOUT = "10min"


@dataclass(frozen=True)
class Dump:
    """Measured before the stream: row counts per table, md5 per checksum table."""

    row_counts: dict[str, int]
    table_checksums: dict[str, str]
    chunks: Generator[bytes, None, None]


def pg_dump_binary() -> str:
    """``pg_dump`` on PATH, else the newest one under /usr/lib/postgresql/*/bin."""
    found = local_binary("pg_dump")
    if found is None:
        raise PermanentError(
            "pg_dump is not installed on this worker (fix: install the PostgreSQL client, "
            "e.g. `apt-get install postgresql-client`, matching or newer than the server)"
        )
    return found


def pg_dump_argv(conninfo: str | None = None, snapshot: str | None = None) -> list[str]:
    """Plain-format dump without ownership; never prompts for a password."""
    argv = ["pg_dump", "--format=plain", "--no-owner", "--no-password"]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    if conninfo:
        argv.append(f"--dbname={conninfo}")
    return argv


@contextmanager
def open_dump(pg: Postgres, checksum_tables: list[str]) -> Iterator[Dump]:
    """Measure, then yield the dump; the stream is closed on the way out, which kills pg_dump
    right away when the consumer failed (a store that broke off mid-upload).

    A table of ``checksum_tables`` that does not exist fails before anything is dumped.
    """
    opened = _direct(pg, checksum_tables) if pg.direct else _beside(pg.pinned(), checksum_tables)
    with opened as dump, contextlib.closing(dump.chunks):
        yield dump


@contextmanager
def _direct(pg: Postgres, tables: list[str]) -> Iterator[Dump]:
    conn = pg.connect(autocommit=False)
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        try:
            conn.execute(f"set local statement_timeout = '{COUNT_TIMEOUT}'")
            row = conn.execute("select pg_export_snapshot()").fetchone()
            counts = parse_row_counts(conn.execute(ROW_COUNTS_SQL).fetchall())
            checksums: dict[str, str] = {}
            if tables:
                missing = [str(r[0]) for r in conn.execute(missing_tables_sql(tables))]
                if missing:
                    raise missing_tables_error(pg.field, pg.label, missing)
                checksums = parse_checksums(conn.execute(checksum_sql(tables)).fetchall())
        except psycopg.Error as exc:
            raise classify(exc, pg.label, pg.field) from None
        assert row is not None
        argv = pg_dump_argv(pg.dsn.conninfo(), str(row[0]))
        argv[0] = pg_dump_binary()
        chunks = pg.transport.stream_out(argv, DUMP_TIMEOUT_S)
        yield Dump(counts, checksums, _dump_errors(chunks, f"pg_dump of {pg.label}"))
    finally:  # the transaction (and so the snapshot) stays open until the dump ended
        conn.close()


def _dump_errors(chunks: Iterator[bytes], what: str) -> Generator[bytes, None, None]:
    """A local pg_dump's failure worded and classified by ``dump_error``."""
    try:
        yield from chunks
    except CommandTimedOut:
        raise dump_error(what, -9, "", True, DUMP_TIMEOUT_S) from None
    except CommandFailed as exc:
        raise dump_error(what, exc.code or 0, exc.stderr, False, DUMP_TIMEOUT_S) from None


@contextmanager
def _beside(pg: Postgres, tables: list[str]) -> Iterator[Dump]:
    counts = parse_row_counts(_psql_rows(pg, ROW_COUNTS_SQL, "counting rows"))
    checksums: dict[str, str] = {}
    if tables:
        missing = [
            row[0] for row in _psql_rows(pg, missing_tables_sql(tables), "checksumming tables")
        ]
        if missing:
            raise missing_tables_error(pg.field, pg.label, missing)
        checksums = parse_checksums(_psql_rows(pg, checksum_sql(tables), "checksumming tables"))
    argv = [*pg_dump_argv(), "-U", pg.user, "-d", pg.dbname]
    yield Dump(
        counts,
        checksums,
        pg.transport.stream_out(argv, DUMP_TIMEOUT_S, idle_timeout=EXEC_IDLE_TIMEOUT_S),
    )


def _psql_rows(pg: Postgres, sql: str, doing: str) -> list[tuple[str, ...]]:
    done = pg.transport.capture(psql_argv(sql, pg.dbname, pg.user), EXEC_MEASURE_TIMEOUT_S)
    if done.code != 0:
        raise PermanentError(
            f"{doing} of {pg.label} failed (exit {done.code}): {done.stderr_tail()}"
        )
    return parse_psql_rows(done.stdout.decode("utf-8", errors="replace"))
